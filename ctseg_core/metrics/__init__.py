"""Segmentation metrics for all labels at once: pure numpy/scipy functions, spacing-aware.

- `compute_confusion` -> `compute_dice_iou`, `overlap_counts`: Dice, IoU, TP/FP/FN, voxel counts
  and detection flags from one bincount pass over the two label volumes;
- `compute_surface_metrics`: HD95 (mm) and normalized surface Dice at a tolerance in mm, per
  structure on its union bounding box, equal to MONAI's definitions;
- `compute_volume_stats`: volume (ml) and mean/std HU per structure (TotalSegmentator's
  ``--statistics``).

Empty-mask convention (TotalSegmentator's evaluation), per structure:

| reference | prediction | Dice, IoU | surface Dice | HD95   | flag           |
|-----------|------------|-----------|--------------|--------|----------------|
| present   | present    | value     | value        | value  | detected       |
| present   | present, not overlapping | 0 | value  | value  | mislocated     |
| present   | empty      | 0         | 0            | inf    | missed         |
| empty     | present    | NaN       | NaN          | NaN    | false_positive |
| empty     | empty      | NaN       | NaN          | NaN    | -              |
| not annotated (mask file missing) | | NaN | NaN     | NaN    | -              |

NaN values are left out of means (``np.nanmean``). Arrays are (L,) indexed by label value, L = 118
(0 = background, usually left out).
"""

from ctseg_core.metrics.overlap import (
    OverlapCounts,
    compute_confusion,
    compute_dice_iou,
    overlap_counts,
)
from ctseg_core.metrics.stats import VolumeStats, compute_volume_stats
from ctseg_core.metrics.surface import (
    SurfaceMetrics,
    compute_surface_metrics,
    surface_distances,
    surface_voxels,
)

__all__ = [
    "OverlapCounts",
    "SurfaceMetrics",
    "VolumeStats",
    "compute_confusion",
    "compute_dice_iou",
    "compute_surface_metrics",
    "compute_volume_stats",
    "overlap_counts",
    "surface_distances",
    "surface_voxels",
]
