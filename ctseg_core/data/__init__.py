"""Reading subjects, canonical orientation, the preprocessing cache and the synthetic phantom."""

from .cache import CachedSubject, default_cache_dir, open_cached
from .dataset_root import SPLITS, DatasetIndex, open_dataset
from .prepare import prepare_dataset
from .subject import SubjectData, load_subject
from .volume import Volume, from_canonical, load_ct, load_label_volume, to_canonical

__all__ = [
    "SPLITS",
    "CachedSubject",
    "DatasetIndex",
    "SubjectData",
    "Volume",
    "default_cache_dir",
    "from_canonical",
    "load_ct",
    "load_label_volume",
    "load_subject",
    "open_cached",
    "open_dataset",
    "prepare_dataset",
    "to_canonical",
]
