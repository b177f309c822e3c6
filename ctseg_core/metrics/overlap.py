"""Dice, IoU and detection counts for all labels at once, from one confusion pass (bincount).

Empty-mask convention (TotalSegmentator's evaluation), per label k:

- reference present, prediction present: the usual values;
- reference present, prediction empty: Dice 0, IoU 0 ("missed");
- reference empty, prediction present: Dice NaN, IoU NaN ("false_positive"), left out of means;
- reference empty, prediction empty: Dice NaN, IoU NaN;
- not annotated (``annotated[k]`` False, the mask file is missing): NaN, and no flag set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ctseg_core.errors import DataError
from ctseg_core.labels import NUM_LABELS
from ctseg_core.metrics._inputs import (
    CHUNK_VOXELS,
    annotated_mask,
    check_label_pair,
    check_range,
    paired_chunks,
)


def compute_confusion(
    reference: np.ndarray, prediction: np.ndarray, num_labels: int = NUM_LABELS
) -> np.ndarray:
    """Count voxels for every (reference label, prediction label) pair in one bincount pass.

    Args:
        reference: integer label array, any shape ((X, Y, Z), (X, Y), or a batch (B, X, Y, Z));
            values 0..num_labels-1, 0 = background.
        prediction: integer label array of the same shape.
        num_labels: L, the number of label values including background (118 for the 117
            TotalSegmentator structures).

    Returns:
        (L, L) int64 matrix, ``confusion[r, p]`` = number of voxels with reference label r and
        predicted label p. All voxels are pooled (a batch gives one pooled matrix); empty inputs
        give a zero matrix.

    Raises:
        DataError: shapes differ, a dtype is not integer/bool, or a value is outside 0..L-1.
    """
    reference, prediction = np.asarray(reference), np.asarray(prediction)
    check_label_pair(reference, prediction, num_labels)
    check_range(reference, "reference", num_labels)
    check_range(prediction, "prediction", num_labels)
    n_pairs = num_labels * num_labels
    # uint16 pair indices (L <= 256) halve the memory traffic of the counting loop.
    index_dtype = np.uint16 if n_pairs <= 1 << 16 else np.int64
    counts = np.zeros(n_pairs, dtype=np.int64)
    buffer = np.empty(CHUNK_VOXELS, dtype=index_dtype)
    for piece_ref, piece_pred in paired_chunks(reference, prediction, CHUNK_VOXELS):
        if piece_ref.size > buffer.size:
            buffer = np.empty(piece_ref.size, dtype=index_dtype)
        pair = buffer[: piece_ref.size]
        np.multiply(piece_ref, num_labels, out=pair, dtype=index_dtype, casting="unsafe")
        np.add(pair, piece_pred, out=pair, dtype=index_dtype, casting="unsafe")
        counts += np.bincount(pair, minlength=n_pairs)
    return counts.reshape(num_labels, num_labels)


@dataclass(frozen=True)
class OverlapCounts:
    """Per-label voxel counts and detection flags; every array is (L,), indexed by label value.

    ``detected``: reference and prediction both non-empty and sharing a voxel;
    ``mislocated``: both non-empty, no voxel in common (found elsewhere: the other side's
    structure, a stray voxel); ``missed``: reference non-empty, prediction empty;
    ``false_positive``: reference empty, prediction non-empty. All four are False for labels
    that are not annotated. Index 0 is background, usually left out.
    """

    tp: np.ndarray  # int64, voxels labelled k in both
    fp: np.ndarray  # int64, predicted k, reference not k
    fn: np.ndarray  # int64, reference k, predicted not k
    reference_voxels: np.ndarray  # int64, tp + fn
    prediction_voxels: np.ndarray  # int64, tp + fp
    annotated: np.ndarray  # bool
    detected: np.ndarray  # bool
    mislocated: np.ndarray  # bool
    missed: np.ndarray  # bool
    false_positive: np.ndarray  # bool


def overlap_counts(confusion: np.ndarray, annotated: np.ndarray | None = None) -> OverlapCounts:
    """Split an (L, L) confusion matrix (rows reference, columns prediction) into per-label counts.

    Args:
        confusion: (L, L) integer counts from `compute_confusion`.
        annotated: optional (L,) bool, False where the structure was not annotated (mask file
            missing); those labels get no detection flag.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise DataError(f"confusion has shape {confusion.shape}, expected a square (L, L) matrix")
    num_labels = confusion.shape[0]
    is_annotated = annotated_mask(annotated, num_labels)
    tp = np.diagonal(confusion).copy()
    reference_voxels = confusion.sum(axis=1)
    prediction_voxels = confusion.sum(axis=0)
    has_ref, has_pred = reference_voxels > 0, prediction_voxels > 0
    return OverlapCounts(
        tp=tp,
        fp=prediction_voxels - tp,
        fn=reference_voxels - tp,
        reference_voxels=reference_voxels,
        prediction_voxels=prediction_voxels,
        annotated=is_annotated,
        detected=is_annotated & has_ref & has_pred & (tp > 0),
        mislocated=is_annotated & has_ref & has_pred & (tp == 0),
        missed=is_annotated & has_ref & ~has_pred,
        false_positive=is_annotated & ~has_ref & has_pred,
    )


def compute_dice_iou(
    confusion: np.ndarray, annotated: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Dice and IoU of every label from an (L, L) confusion matrix (rows reference).

    Args:
        confusion: (L, L) integer counts from `compute_confusion`.
        annotated: optional (L,) bool; False gives NaN (structure not annotated, excluded).

    Returns:
        ``(dice, iou)``, each (L,) float64 indexed by label value (index 0 = background, computed
        like any label; leave it out of means). Dice = 2 TP / (2 TP + FP + FN),
        IoU = TP / (TP + FP + FN). Reference empty -> NaN whatever the prediction (a predicted
        structure there is a false positive, see `overlap_counts`); reference present and
        prediction empty -> 0.0. Use ``np.nanmean`` to average.
    """
    counts = overlap_counts(confusion, annotated)
    tp = counts.tp.astype(np.float64)
    union = (counts.reference_voxels + counts.fp).astype(np.float64)  # TP + FP + FN
    scored = counts.annotated & (counts.reference_voxels > 0)
    dice = np.full(tp.shape, np.nan)
    iou = np.full(tp.shape, np.nan)
    dice[scored] = 2.0 * tp[scored] / (union[scored] + tp[scored])
    iou[scored] = tp[scored] / union[scored]
    return dice, iou
