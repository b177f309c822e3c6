"""Dice/IoU from one confusion pass: hand-computed counts, the empty-mask convention, MONAI parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from ctseg_core.errors import DataError
from ctseg_core.metrics import (
    compute_confusion,
    compute_dice_iou,
    compute_volume_stats,
    overlap_counts,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def smooth_labels(rng: np.random.Generator, shape: tuple[int, ...], num_labels: int) -> np.ndarray:
    """Blobby multilabel volume 0..num_labels-1: the argmax of smoothed noise channels."""
    noise = ndimage.gaussian_filter(rng.normal(size=(num_labels, *shape)), (0, *[2] * len(shape)))
    return noise.argmax(axis=0).astype(np.uint8)


def test_confusion_counts_every_reference_prediction_pair():
    reference = np.array([[0, 0, 1, 1], [2, 2, 2, 0]], dtype=np.uint8)
    prediction = np.array([[0, 1, 1, 2], [2, 2, 0, 0]], dtype=np.uint8)
    confusion = compute_confusion(reference, prediction, num_labels=4)
    expected = np.zeros((4, 4), dtype=np.int64)
    for r, p in [(0, 0), (0, 1), (1, 1), (1, 2), (2, 2), (2, 2), (2, 0), (0, 0)]:
        expected[r, p] += 1
    assert confusion.dtype == np.int64
    np.testing.assert_array_equal(confusion, expected)


@pytest.mark.parametrize("layout", ["C", "F", "transposed", "flipped", "mixed", "int64"])
def test_confusion_equals_naive_count_for_any_memory_layout(layout):
    # More than one chunk (2**20 voxels) so chunk boundaries are crossed.
    rng = np.random.default_rng(3)
    shape = (131, 97, 90)
    reference = rng.integers(0, 118, shape, dtype=np.uint8)
    prediction = np.where(rng.random(shape) < 0.7, reference, rng.integers(0, 118, shape))
    prediction = prediction.astype(np.uint8)
    expected = np.bincount(
        reference.ravel().astype(np.int64) * 118 + prediction.ravel(), minlength=118 * 118
    ).reshape(118, 118)
    if layout == "F":
        reference, prediction = np.asfortranarray(reference), np.asfortranarray(prediction)
    elif layout == "transposed":  # a canonical-orientation view: same voxels, same pairs
        reference, prediction = reference.transpose(2, 0, 1), prediction.transpose(2, 0, 1)
    elif layout == "flipped":
        reference, prediction = reference[::-1, :, ::-1], prediction[::-1, :, ::-1]
    elif layout == "mixed":
        prediction = np.asfortranarray(prediction)
    elif layout == "int64":
        reference, prediction = reference.astype(np.int64), prediction.astype(np.int64)
    np.testing.assert_array_equal(compute_confusion(reference, prediction), expected)


def test_confusion_with_more_than_256_label_values_uses_wide_pair_indices():
    rng = np.random.default_rng(4)
    reference = rng.integers(0, 300, (20, 20, 20), dtype=np.uint16)
    prediction = rng.integers(0, 300, (20, 20, 20), dtype=np.uint16)
    confusion = compute_confusion(reference, prediction, num_labels=300)
    assert confusion[299, 299] == np.count_nonzero((reference == 299) & (prediction == 299))
    np.testing.assert_array_equal(confusion.sum(axis=1), np.bincount(reference.ravel(), None, 300))
    np.testing.assert_array_equal(confusion.sum(axis=0), np.bincount(prediction.ravel(), None, 300))


def test_dice_and_iou_of_two_offset_boxes_are_hand_computed():
    reference = np.zeros((10, 10, 10), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[2:6, 2:6, 2:6] = 3  # 64 voxels
    prediction[3:7, 2:6, 2:6] = 3  # 64 voxels, 48 shared
    dice, iou = compute_dice_iou(compute_confusion(reference, prediction, num_labels=4))
    assert dice[3] == pytest.approx(2 * 48 / 128, abs=1e-12)
    assert iou[3] == pytest.approx(48 / 80, abs=1e-12)
    counts = overlap_counts(compute_confusion(reference, prediction, num_labels=4))
    assert (counts.tp[3], counts.fp[3], counts.fn[3]) == (48, 16, 16)
    assert (counts.reference_voxels[3], counts.prediction_voxels[3]) == (64, 64)


def test_empty_masks_follow_the_totalsegmentator_convention():
    reference = np.zeros((6, 6, 4), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[0:3, 0:3, :] = 1  # 1: found
    prediction[0:3, 0:3, :] = 1
    reference[4:6, 4:6, :] = 2  # 2: missed (prediction empty)
    prediction[0:2, 4:6, :] = 3  # 3: false positive (reference empty); 4: absent in both
    reference[3, 3, :] = 5  # 5: present in both, but not annotated
    prediction[3, 3, :] = 5
    annotated = np.array([True, True, True, True, True, False])
    confusion = compute_confusion(reference, prediction, num_labels=6)
    dice, iou = compute_dice_iou(confusion, annotated=annotated)
    assert dice[1] == 1.0 and iou[1] == 1.0
    assert dice[2] == 0.0 and iou[2] == 0.0
    assert np.isnan(dice[3]) and np.isnan(iou[3])
    assert np.isnan(dice[4]) and np.isnan(iou[4])
    assert np.isnan(dice[5]) and np.isnan(iou[5])
    counts = overlap_counts(confusion, annotated=annotated)
    np.testing.assert_array_equal(counts.detected, [True, True, False, False, False, False])
    np.testing.assert_array_equal(counts.missed, [False, False, True, False, False, False])
    np.testing.assert_array_equal(counts.false_positive, [False, False, False, True, False, False])
    assert np.nanmean(dice[1:]) == 0.5  # labels 3, 4, 5 are left out of the mean


def test_dice_and_iou_equal_monai_on_random_multilabel_volumes():
    from monai.metrics import DiceMetric, compute_iou

    rng = np.random.default_rng(7)
    num_labels = 6
    reference = smooth_labels(rng, (48, 40, 24), num_labels)
    prediction = np.where(
        rng.random(reference.shape) < 0.8, reference, smooth_labels(rng, (48, 40, 24), num_labels)
    ).astype(np.uint8)
    prediction[prediction == 4] = 0  # a missed structure
    dice, iou = compute_dice_iou(compute_confusion(reference, prediction, num_labels))

    y = torch.from_numpy(reference.astype(np.int64))[None, None]
    y_pred = torch.from_numpy(prediction.astype(np.int64))[None, None]
    monai_dice = DiceMetric(include_background=False, reduction="none", num_classes=num_labels)(
        y_pred, y
    )[0].numpy()

    def one_hot(labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(labels[:, 0], num_labels).movedim(-1, 1).float()

    monai_iou = compute_iou(one_hot(y_pred), one_hot(y), include_background=False)[0].numpy()
    assert dice[4] == 0.0 and 0.3 < np.nanmean(dice[1:]) < 0.99
    np.testing.assert_allclose(dice[1:], monai_dice, atol=1e-6, rtol=0)
    np.testing.assert_allclose(iou[1:], monai_iou, atol=1e-6, rtol=0)


def test_real_fast_prediction_dice_equals_per_structure_mask_computation(extra_dir):
    nib = pytest.importorskip("nibabel")
    ref_path = extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    pred_path = extra_dir / "s0000_totalsegmentator_fast_multilabel.nii.gz"
    reference = np.asarray(nib.load(ref_path).dataobj)  # uint8, Fortran order
    prediction = np.asarray(nib.load(pred_path).dataobj)
    dice, iou = compute_dice_iou(compute_confusion(reference, prediction))
    checked = 0
    for label in range(1, 118):
        ref_mask, pred_mask = reference == label, prediction == label
        if not ref_mask.any():
            assert np.isnan(dice[label])
            continue
        shared = np.count_nonzero(ref_mask & pred_mask)
        expected = 2 * shared / (ref_mask.sum() + pred_mask.sum())
        assert dice[label] == pytest.approx(expected, abs=1e-12)
        assert iou[label] == pytest.approx(shared / np.count_nonzero(ref_mask | pred_mask))
        checked += 1
    assert checked == 41 and 0.5 < np.nanmean(dice[1:]) < 0.95


def test_two_dimensional_and_batched_labels_are_pooled():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 5, (3, 16, 16), dtype=np.uint8)
    other = rng.integers(0, 5, (3, 16, 16), dtype=np.uint8)
    pooled = compute_confusion(batch, other, num_labels=5)
    per_slice = sum(compute_confusion(batch[i], other[i], num_labels=5) for i in range(3))
    np.testing.assert_array_equal(pooled, per_slice)
    assert pooled.sum() == 3 * 16 * 16


@pytest.mark.parametrize(
    ("reference", "prediction", "message"),
    [
        (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), "does not match"),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), "dtype float32"),
        (np.full((4, 4), 118, np.uint8), np.zeros((4, 4), np.uint8), "118..118"),
        (np.zeros((4, 4), np.int16), np.full((4, 4), -1, np.int16), "-1..-1"),
    ],
)
def test_bad_label_arrays_raise_a_one_line_data_error(reference, prediction, message):
    with pytest.raises(DataError, match=message) as info:
        compute_confusion(reference, prediction)
    assert "\n" not in str(info.value)


def test_volume_stats_match_per_mask_numpy_over_several_chunks():
    rng = np.random.default_rng(5)
    shape = (128, 96, 100)  # 1.2 M voxels: the running merge across chunks is exercised
    labels = smooth_labels(rng, shape, 5)
    labels[labels == 4] = 0  # label 4 absent
    ct_hu = rng.normal(1000.0, 40.0, shape).astype(np.int16)  # large mean, small spread
    spacing_mm = (0.8, 0.8, 2.5)
    stats = compute_volume_stats(labels, ct_hu, spacing_mm, num_labels=6)
    for label in (0, 1, 2, 3):
        mask = labels == label
        assert stats.voxels[label] == mask.sum()
        assert stats.volume_ml[label] == pytest.approx(mask.sum() * 0.8 * 0.8 * 2.5 / 1000)
        values = ct_hu[mask].astype(np.float64)
        assert stats.mean_hu[label] == pytest.approx(values.mean(), rel=1e-12)
        assert stats.std_hu[label] == pytest.approx(values.std(), rel=1e-9)
    for label in (4, 5):
        assert stats.voxels[label] == 0 and stats.volume_ml[label] == 0.0
        assert np.isnan(stats.mean_hu[label]) and np.isnan(stats.std_hu[label])


def test_volume_stats_of_a_hand_made_box():
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[:2, :2, :2] = 7  # 8 voxels
    ct_hu = np.where(np.arange(64).reshape(4, 4, 4) % 2 == 0, 50, 30).astype(np.int16)
    stats = compute_volume_stats(labels, ct_hu, (2.0, 2.0, 2.5), num_labels=8)
    assert stats.volume_ml[7] == pytest.approx(8 * 10.0 / 1000)
    assert stats.mean_hu[7] == 40.0 and stats.std_hu[7] == 10.0
    with pytest.raises(DataError, match="does not match CT shape"):
        compute_volume_stats(labels, ct_hu[:3], 1.0)


def test_a_structure_found_elsewhere_is_mislocated_not_detected():
    """A kidney predicted where the other kidney is (no voxel in common), and a spleen missed
    but for one stray voxel far away: both counted as detected once (reviewer); now
    mislocated, with Dice 0, and the tables count them apart."""
    import pandas as pd

    from ctseg_core.evaluation.tables import detection_table, summarize_results

    reference = np.zeros((8, 8, 4), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[0:2, 0:2, :] = 1  # found
    prediction[0:2, 0:2, :] = 1
    reference[4:6, 0:2, :] = 2  # predicted beside it
    prediction[6:8, 0:2, :] = 2
    reference[0:2, 6:8, :] = 3  # missed but for a stray voxel in the far corner
    prediction[7, 7, 3] = 3
    counts = overlap_counts(compute_confusion(reference, prediction, num_labels=4))
    np.testing.assert_array_equal(counts.detected, [True, True, False, False])
    np.testing.assert_array_equal(counts.mislocated, [False, False, True, True])
    assert not counts.missed.any()
    dice, _ = compute_dice_iou(compute_confusion(reference, prediction, num_labels=4))
    assert dice[2] == dice[3] == 0.0
    results = pd.DataFrame({
        "subject": ["s1", "s1", "s1"], "structure": ["spleen", "kidney_right", "kidney_left"],
        "group": ["organs"] * 3, "dice": [1.0, 0.0, 0.0], "iou": [1.0, 0.0, 0.0],
        "hd95_mm": [0.0, 2.0, 8.0], "surface_dice": [1.0, 0.0, 0.0],
        "status": ["detected", "mislocated", "mislocated"],
    })  # fmt: skip
    summary = summarize_results(results).set_index("structure")
    assert (
        summary.loc["kidney_left", "mislocated"] == 1
        and summary.loc["kidney_left", "detected"] == 0
    )
    detection = detection_table(results).iloc[0]
    assert detection["n_detected"] == 1 and detection["n_mislocated"] == 2
    assert detection["mislocated"] == "kidney_right;kidney_left"
