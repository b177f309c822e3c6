"""Checks and chunked reading shared by the metric functions (label pairs, spacing, flags)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ctseg_core.errors import DataError

# ~1 M voxels per bincount: the uint16 index buffer (2 MB) stays in cache and memory stays bounded
# whatever the volume size; larger chunks measured slower on a 512 x 512 x 300 pair.
CHUNK_VOXELS = 1 << 20


def check_label_pair(reference: np.ndarray, prediction: np.ndarray, num_labels: int) -> None:
    """Raise DataError unless both label arrays have one shape and an integer (or bool) dtype."""
    if num_labels < 1:
        raise DataError(f"num_labels must be >= 1, got {num_labels}")
    if reference.shape != prediction.shape:
        raise DataError(
            f"reference shape {reference.shape} does not match prediction shape "
            f"{prediction.shape}: resample the prediction onto the reference grid first"
        )
    for name, arr in (("reference", reference), ("prediction", prediction)):
        if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
            raise DataError(
                f"{name} labels have dtype {arr.dtype}: pass integer label values "
                "(e.g. np.asarray(img.dataobj, dtype=np.uint8)), not floats"
            )


def check_range(arr: np.ndarray, name: str, num_labels: int) -> None:
    """Raise DataError if a label value is outside 0..num_labels-1 (a bincount would alias it)."""
    if arr.size == 0 or arr.dtype == bool:
        return
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= num_labels:
        raise DataError(
            f"{name} holds label values {low}..{high}, outside 0..{num_labels - 1}: "
            f"pass num_labels > {high} or remove the unknown labels"
        )


def paired_chunks(a: np.ndarray, b: np.ndarray, chunk: int) -> Iterator[tuple[np.ndarray, ...]]:
    """Yield matching flat pieces of a and b (same voxels, same order) of about `chunk` voxels."""
    for order in ("C", "F"):
        flag = "C_CONTIGUOUS" if order == "C" else "F_CONTIGUOUS"
        if a.flags[flag] and b.flags[flag]:
            flat_a, flat_b = a.ravel(order=order), b.ravel(order=order)  # views, no copy
            for start in range(0, flat_a.size, chunk):
                yield flat_a[start : start + chunk], flat_b[start : start + chunk]
            return
    # Mixed layouts or strided views: copy slabs along axis 0 so memory stays bounded.
    a, b = np.atleast_1d(a), np.atleast_1d(b)
    per_slab = max(1, a.size // max(1, a.shape[0]))
    step = max(1, chunk // per_slab)
    for start in range(0, a.shape[0], step):
        yield a[start : start + step].ravel(order="C"), b[start : start + step].ravel(order="C")


def annotated_mask(annotated: np.ndarray | None, num_labels: int) -> np.ndarray:
    """(L,) bool flags, all True when `annotated` is None; DataError on a wrong length."""
    if annotated is None:
        return np.ones(num_labels, dtype=bool)
    mask = np.asarray(annotated, dtype=bool)
    if mask.shape != (num_labels,):
        raise DataError(
            f"annotated has shape {mask.shape}, expected ({num_labels},): one flag per label value"
        )
    return mask


def spacing_vector(spacing_mm: float | Sequence[float], ndim: int) -> np.ndarray:
    """(ndim,) float64 spacing in mm from one number or one per axis; DataError if not positive."""
    spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1)
    if spacing.size == 1:
        spacing = np.repeat(spacing, ndim)
    if spacing.shape != (ndim,) or not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise DataError(f"spacing_mm {spacing_mm!r} must be {ndim} positive numbers (mm per voxel)")
    return spacing
