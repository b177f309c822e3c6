"""The synthetic phantom: CT-like subjects in the TotalSegmentator layout, built in seconds.

``dataset`` writes subject folders; ``subject`` assembles one; ``body``, ``trunk``, ``skeleton``,
``paint`` and ``shapes`` draw its anatomy.
"""

from .dataset import make_phantom_dataset

__all__ = ["make_phantom_dataset"]
