"""Evaluation: subject x structure tables, summaries, detection, reports and their folders.

``evaluate`` scores predictions against references; ``tables`` summarises; ``report`` draws the
figures and 3D pages; ``paths`` names the output folder of each source.
"""

from .evaluate import evaluate_predictions

__all__ = ["evaluate_predictions"]
