"""HD95 and normalized surface Dice for all labels, in mm, on cropped boxes with shared distances.

Definitions follow MONAI 1.6 (``compute_hausdorff_distance``, ``compute_surface_dice`` with
``use_subvoxels=False``), so values agree with it:

- the surface of a mask is its voxels with at least one face neighbour (6 in 3D, 4 in 2D) outside
  the mask, the outside of the volume counting as outside (``mask ^ binary_erosion(mask)``);
- distances are Euclidean between voxel centres scaled by ``spacing_mm``, from every surface voxel
  of one mask to the nearest surface voxel of the other (exact, computed once per direction and
  shared by both metrics), rounded to float32 as MONAI does;
- HD at percentile q = max(q-th percentile of pred->ref distances, q-th percentile of ref->pred)
  with linear interpolation between order statistics (``torch.quantile``'s default);
- surface Dice = (#{pred->ref <= tol} + #{ref->pred <= tol}) / (#surface(pred) + #surface(ref)).

Empty-mask convention (TotalSegmentator's), per label: reference present and prediction empty ->
HD inf, surface Dice 0 ("missed"; MONAI 1.6 gives HD95 NaN there, from a quantile of infs);
reference empty -> NaN for both, whatever the prediction (MONAI gives surface Dice 0 when only the
prediction is present); not annotated -> NaN.

Each structure is processed in the union bounding box of its reference and prediction (one
``find_objects`` pass per volume finds every box). The box holds both masks whole, and outside
voxels count as background, so the surfaces are those of the full volume; distances come from a
k-d tree over surface coordinates in mm (exact, independent of the box), not from a distance
transform of the box, which measured 10x slower for organ-sized structures.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import KDTree

from ctseg_core.errors import DataError
from ctseg_core.labels import NUM_LABELS
from ctseg_core.metrics._inputs import (
    annotated_mask,
    check_label_pair,
    check_range,
    spacing_vector,
)


@dataclass(frozen=True)
class SurfaceMetrics:
    """Per-label surface metrics, each (L,) float64 indexed by label value (index 0 NaN)."""

    hd95_mm: np.ndarray  # the `percentile`-th percentile Hausdorff distance, mm (HD95 by default)
    surface_dice: np.ndarray  # normalized surface Dice at `tolerance_mm`, 0..1
    percentile: float
    tolerance_mm: float


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Surface of a binary mask: voxels of it with a face neighbour outside it or outside the array.

    Args:
        mask: (X, Y[, Z]) bool. Returns a bool array of the same shape; an empty mask gives an
            empty surface. Equal to ``mask ^ scipy.ndimage.binary_erosion(mask)`` (MONAI's edges),
            about 4x faster.
    """
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1)
    inner = slice(1, -1)
    interior = mask.copy()
    for axis in range(mask.ndim):
        for shift in (0, 2):
            window = [inner] * mask.ndim
            window[axis] = slice(shift, shift + mask.shape[axis])
            interior &= padded[tuple(window)]
    return mask & ~interior


def _directed_mm(surf_ref: np.ndarray, surf_pred: np.ndarray, spacing: np.ndarray):
    """float32 (pred->ref, ref->pred) nearest-surface distances in mm, argwhere order."""
    coords_ref, coords_pred = np.argwhere(surf_ref), np.argwhere(surf_pred)
    # Voxels on both surfaces are at distance 0; only the others need a tree query.
    pred_on_ref = surf_ref[tuple(coords_pred.T)]
    ref_on_pred = surf_pred[tuple(coords_ref.T)]
    return (
        _nearest_mm(coords_pred, pred_on_ref, coords_ref, spacing),
        _nearest_mm(coords_ref, ref_on_pred, coords_pred, spacing),
    )


def _nearest_mm(
    query_vox: np.ndarray, on_target: np.ndarray, target_vox: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    distances = np.zeros(len(query_vox), dtype=np.float32)
    off_target = ~on_target
    if off_target.any():
        # An exact k-d tree over the target surface (MONAI's CPU path): much faster than a dense
        # distance transform of the box once a structure is larger than a few cm.
        tree = KDTree(target_vox * spacing, leafsize=32)
        distances[off_target] = tree.query(query_vox[off_target] * spacing, k=1)[0]
    return distances


def surface_distances(
    reference_mask: np.ndarray, prediction_mask: np.ndarray, spacing_mm: float | Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two binary masks of the same shape.

    Args:
        reference_mask, prediction_mask: (X, Y[, Z]) bool, both non-empty.
        spacing_mm: voxel size per axis in mm (or one number for isotropic voxels).

    Returns:
        ``(pred_to_ref_mm, ref_to_pred_mm)``: float32 (#surface(pred),) and (#surface(ref),)
        distances from each surface voxel to the nearest surface voxel of the other mask, in the
        order of ``np.argwhere`` on each surface.

    Raises:
        DataError: shapes differ, or a mask is empty (its distances are undefined).
    """
    reference_mask = np.asarray(reference_mask, dtype=bool)
    prediction_mask = np.asarray(prediction_mask, dtype=bool)
    if reference_mask.shape != prediction_mask.shape:
        raise DataError(
            f"reference mask shape {reference_mask.shape} does not match prediction mask shape "
            f"{prediction_mask.shape}"
        )
    if not reference_mask.any() or not prediction_mask.any():
        raise DataError("surface_distances needs two non-empty masks: check for empty masks first")
    spacing = spacing_vector(spacing_mm, reference_mask.ndim)
    return _directed_mm(surface_voxels(reference_mask), surface_voxels(prediction_mask), spacing)


def _as_int(labels: np.ndarray) -> np.ndarray:
    return labels.view(np.uint8) if labels.dtype == bool else labels


def _union_box(*boxes: tuple[slice, ...] | None) -> tuple[slice, ...]:
    present = [box for box in boxes if box is not None]
    return tuple(
        slice(min(box[axis].start for box in present), max(box[axis].stop for box in present))
        for axis in range(len(present[0]))
    )


def compute_surface_metrics(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing_mm: float | Sequence[float],
    labels: Iterable[int] | None = None,
    tolerance_mm: float = 3.0,
    percentile: float = 95.0,
    num_labels: int = NUM_LABELS,
    annotated: np.ndarray | None = None,
) -> SurfaceMetrics:
    """HD (95th percentile by default) and normalized surface Dice of every label, in mm.

    Args:
        reference: (X, Y, Z) or (X, Y) integer label volume, 0 = background. For a batch, call
            once per item: each item has its own surfaces.
        prediction: integer label volume of the same shape.
        spacing_mm: voxel size per axis in mm (one number for isotropic voxels).
        labels: label values to compute (default all 1..L-1); the others are NaN.
        tolerance_mm: surface Dice tolerance in mm (TotalSegmentator reports 3 mm).
        percentile: Hausdorff percentile in 0..100 (95 gives HD95, 100 the maximum).
        num_labels: L, label values 0..L-1 allowed (118: 117 structures + background).
        annotated: optional (L,) bool, False where the structure was not annotated -> NaN.

    Returns:
        `SurfaceMetrics` with (L,) arrays. Per label: both present -> values; reference present,
        prediction empty -> HD inf and surface Dice 0 ("missed"); reference empty -> NaN (a
        predicted structure there is a false positive, flagged by `overlap_counts`).

    Raises:
        DataError: shapes differ, non-integer labels, values outside 0..L-1, bad spacing,
            tolerance or percentile.
    """
    reference, prediction = np.asarray(reference), np.asarray(prediction)
    check_label_pair(reference, prediction, num_labels)
    if reference.ndim not in (2, 3):
        raise DataError(f"labels have shape {reference.shape}: pass one 2D or 3D volume at a time")
    check_range(reference, "reference", num_labels)
    check_range(prediction, "prediction", num_labels)
    spacing = spacing_vector(spacing_mm, reference.ndim)
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise DataError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    if not 0 <= percentile <= 100:
        raise DataError(f"percentile must be within 0..100, got {percentile}")
    is_annotated = annotated_mask(annotated, num_labels)
    wanted = range(1, num_labels) if labels is None else [int(k) for k in labels]
    outside = [k for k in wanted if not 1 <= k < num_labels]
    if outside:
        raise DataError(f"label {outside[0]} is outside 1..{num_labels - 1}: pick structure values")

    hd_mm = np.full(num_labels, np.nan)
    surface_dice = np.full(num_labels, np.nan)
    max_label = num_labels - 1
    # One pass per volume finds the box of every label.
    ref_boxes = ndimage.find_objects(_as_int(reference), max_label=max_label)
    pred_boxes = ndimage.find_objects(_as_int(prediction), max_label=max_label)
    tolerance = np.float32(tolerance_mm)  # compared in float32, as MONAI does
    for label in wanted:
        ref_box, pred_box = ref_boxes[label - 1], pred_boxes[label - 1]
        if not is_annotated[label] or ref_box is None:
            continue  # not annotated or reference absent: NaN
        if pred_box is None:
            hd_mm[label], surface_dice[label] = np.inf, 0.0
            continue
        box = _union_box(ref_box, pred_box)
        surf_ref = surface_voxels(reference[box] == label)
        surf_pred = surface_voxels(prediction[box] == label)
        pred_to_ref, ref_to_pred = _directed_mm(surf_ref, surf_pred, spacing)
        hd_mm[label] = max(
            np.percentile(pred_to_ref, percentile), np.percentile(ref_to_pred, percentile)
        )
        within = np.count_nonzero(pred_to_ref <= tolerance) + np.count_nonzero(
            ref_to_pred <= tolerance
        )
        surface_dice[label] = within / (pred_to_ref.size + ref_to_pred.size)
    return SurfaceMetrics(
        hd95_mm=hd_mm,
        surface_dice=surface_dice,
        percentile=float(percentile),
        tolerance_mm=float(tolerance_mm),
    )
