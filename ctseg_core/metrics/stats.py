"""Volume (ml) and HU mean/std of every structure in one pass, like TotalSegmentator's --statistics.

``compute_volume_stats`` gives (L,) arrays; ``volume_statistics`` the table of present structures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctseg_core.errors import DataError
from ctseg_core.labels import NAME_OF, NUM_LABELS, group_of
from ctseg_core.metrics._inputs import (
    CHUNK_VOXELS,
    check_range,
    paired_chunks,
    spacing_vector,
)


@dataclass(frozen=True)
class VolumeStats:
    """Per-label statistics, each (L,) indexed by label value (index 0 = background)."""

    voxels: np.ndarray  # int64 voxel count
    volume_ml: np.ndarray  # float64, voxels x voxel volume; 0.0 for an absent structure
    mean_hu: np.ndarray  # float64, NaN for an absent structure
    std_hu: np.ndarray  # float64 population std (ddof=0), NaN for an absent structure


def compute_volume_stats(
    labels: np.ndarray,
    ct_hu: np.ndarray,
    spacing_mm: float | Sequence[float],
    num_labels: int = NUM_LABELS,
) -> VolumeStats:
    """Volume and intensity statistics of every label of a segmentation.

    Args:
        labels: (X, Y, Z) or (X, Y) integer label volume, values 0..num_labels-1.
        ct_hu: CT of the same shape in Hounsfield units (any numeric dtype).
        spacing_mm: voxel size per axis in mm (one number for isotropic voxels).
        num_labels: L, the number of label values including background.

    Returns:
        `VolumeStats`; volume_ml = voxels * prod(spacing_mm) / 1000. An absent (empty) structure
        has 0 voxels, 0.0 ml and NaN mean/std.

    Raises:
        DataError: shapes differ, labels are not integers or outside 0..L-1, bad spacing.
    """
    labels, ct_hu = np.asarray(labels), np.asarray(ct_hu)
    if labels.shape != ct_hu.shape:
        raise DataError(
            f"label shape {labels.shape} does not match CT shape {ct_hu.shape}: "
            "the segmentation must be on the CT's grid"
        )
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels have dtype {labels.dtype}: pass integer label values")
    if not np.issubdtype(ct_hu.dtype, np.number) and ct_hu.dtype != bool:
        raise DataError(f"ct_hu has dtype {ct_hu.dtype}: pass numeric Hounsfield units")
    check_range(labels, "labels", num_labels)
    spacing = spacing_vector(spacing_mm, labels.ndim)

    count = np.zeros(num_labels, dtype=np.int64)
    mean = np.zeros(num_labels)
    sq_dev = np.zeros(num_labels)  # sum of squared deviations from the mean
    for piece_labels, piece_hu in paired_chunks(labels, ct_hu, CHUNK_VOXELS):
        piece_labels = piece_labels.view(np.uint8) if piece_labels.dtype == bool else piece_labels
        hu = piece_hu.astype(np.float64)
        n_b = np.bincount(piece_labels, minlength=num_labels)
        mean_b = np.bincount(piece_labels, weights=hu, minlength=num_labels) / np.maximum(n_b, 1)
        # Deviations from the chunk's own means, merged below (Chan et al.): no cancellation
        # of large sums of squares, and one read of the volume.
        dev = hu - mean_b[piece_labels]
        sq_dev_b = np.bincount(piece_labels, weights=dev * dev, minlength=num_labels)
        total = count + n_b
        safe_total = np.maximum(total, 1)
        delta = mean_b - mean
        mean = mean + delta * n_b / safe_total
        sq_dev = sq_dev + sq_dev_b + delta * delta * count * n_b / safe_total
        count = total

    present = count > 0
    mean_hu = np.where(present, mean, np.nan)
    std_hu = np.where(present, np.sqrt(sq_dev / np.maximum(count, 1)), np.nan)
    volume_ml = count * float(np.prod(spacing)) / 1000.0
    return VolumeStats(voxels=count, volume_ml=volume_ml, mean_hu=mean_hu, std_hu=std_hu)


def volume_statistics(
    labels: np.ndarray,
    ct_hu: np.ndarray,
    spacing_mm: Sequence[float],
    names: Mapping[int, str] | None = None,
) -> pd.DataFrame:
    """Volume (ml) and mean/std HU of every structure present (TotalSegmentator ``--statistics``).

    labels: (X, Y, Z) integer 0..117; ct_hu: same shape, HU; spacing_mm: (x, y, z); names:
    value -> name where a value is not its structure (a merged run's, ``labels.names_of``).
    Returns one row per present structure: structure, label, group, voxels, volume_ml,
    mean_hu, std_hu.
    """
    stats = compute_volume_stats(labels, ct_hu, spacing_mm)
    names = {**NAME_OF, **(names or {})}
    rows = [
        {
            "structure": names[k],
            "label": k,
            "group": group_of(names[k]),
            "voxels": int(stats.voxels[k]),
            "volume_ml": float(stats.volume_ml[k]),
            "mean_hu": float(stats.mean_hu[k]),
            "std_hu": float(stats.std_hu[k]),
        }
        for k in range(1, NUM_LABELS)
        if stats.voxels[k] > 0
    ]
    columns = ["structure", "label", "group", "voxels", "volume_ml", "mean_hu", "std_hu"]
    return pd.DataFrame(rows, columns=columns)
