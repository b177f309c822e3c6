"""HD95 and surface Dice in mm: hand-computed boxes with anisotropic spacing, spheres, MONAI parity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial.distance import cdist

from ctseg_core.errors import DataError
from ctseg_core.metrics import compute_surface_metrics, surface_distances, surface_voxels

SPACING_MM = (3.0, 3.0, 0.5)  # coarse in-plane, fine along z: the z offsets decide the distances


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def two_boxes(z_ref: tuple[int, int], z_pred: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Label-1 boxes x, y in [2, 8) (6 x 6) spanning the given z ranges, in a 10 x 10 x 14 grid."""
    reference = np.zeros((10, 10, 14), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[2:8, 2:8, slice(*z_ref)] = 1
    prediction[2:8, 2:8, slice(*z_pred)] = 1
    return reference, prediction


def brute_force(ref_mask: np.ndarray, pred_mask: np.ndarray, spacing, percentile, tol):
    """Independent reference: scipy erosion surfaces, all-pairs distances, numpy percentiles."""
    surf_ref = np.argwhere(ref_mask ^ ndimage.binary_erosion(ref_mask)) * spacing
    surf_pred = np.argwhere(pred_mask ^ ndimage.binary_erosion(pred_mask)) * spacing
    pairwise = cdist(surf_pred, surf_ref)
    pred_to_ref, ref_to_pred = pairwise.min(axis=1), pairwise.min(axis=0)
    hd = max(np.percentile(pred_to_ref, percentile), np.percentile(ref_to_pred, percentile))
    within = (pred_to_ref <= tol).sum() + (ref_to_pred <= tol).sum()
    return hd, within / (len(pred_to_ref) + len(ref_to_pred))


def test_boxes_shifted_two_voxels_along_z_are_hd95_one_mm_apart():
    # Shifted by 2 x 0.5 mm. Per direction the 112 surface voxels are 40 at 0 mm (shared side
    # rings), 36 at 0.5 mm (interior face and ring one slice off) and 36 at 1.0 mm (the far face).
    reference, prediction = two_boxes((4, 8), (6, 10))
    at_half = compute_surface_metrics(reference, prediction, SPACING_MM, [1], tolerance_mm=0.5)
    assert at_half.hd95_mm[1] == pytest.approx(1.0, abs=1e-6)
    assert at_half.surface_dice[1] == pytest.approx(2 * 76 / 224, abs=1e-9)
    tight = compute_surface_metrics(reference, prediction, SPACING_MM, [1], tolerance_mm=0.4)
    assert tight.surface_dice[1] == pytest.approx(2 * 40 / 224, abs=1e-9)
    loose = compute_surface_metrics(reference, prediction, SPACING_MM, [1], tolerance_mm=1.0)
    assert loose.surface_dice[1] == 1.0
    median = compute_surface_metrics(reference, prediction, SPACING_MM, [1], percentile=50)
    assert median.hd95_mm[1] == pytest.approx(0.5, abs=1e-6)


def test_box_grown_one_slice_each_way_is_hd95_half_a_mm():
    # Prediction: 72 face voxels at 0.5 mm, 80 side voxels at 0 mm; reference: 32 face-interior
    # voxels at 0.5 mm, 80 side voxels at 0 mm (in-plane neighbours are 3 mm away).
    reference, prediction = two_boxes((4, 8), (3, 9))
    tight = compute_surface_metrics(reference, prediction, SPACING_MM, [1], tolerance_mm=0.4)
    assert tight.hd95_mm[1] == pytest.approx(0.5, abs=1e-6)
    assert tight.surface_dice[1] == pytest.approx(160 / 264, abs=1e-9)
    pred_to_ref, ref_to_pred = surface_distances(reference == 1, prediction == 1, SPACING_MM)
    assert sorted(np.unique(pred_to_ref)) == [0.0, 0.5]
    assert (np.count_nonzero(pred_to_ref), pred_to_ref.size) == (72, 152)
    assert (np.count_nonzero(ref_to_pred), ref_to_pred.size) == (32, 112)


def test_identical_masks_give_zero_distance_and_full_surface_dice():
    rng = np.random.default_rng(0)
    labels = ndimage.gaussian_filter(rng.normal(size=(4, 30, 30, 20)), (0, 2, 2, 2)).argmax(0)
    labels = labels.astype(np.uint8)
    result = compute_surface_metrics(labels, labels, (0.7, 0.9, 2.5), num_labels=4)
    np.testing.assert_array_equal(result.hd95_mm[1:], 0.0)
    np.testing.assert_array_equal(result.surface_dice[1:], 1.0)
    assert np.isnan(result.hd95_mm[0]) and np.isnan(result.surface_dice[0])


def test_sphere_against_a_sphere_shifted_along_the_anisotropic_axis():
    spacing = np.array([0.8, 0.8, 2.0])
    grid = np.indices((40, 40, 24)).astype(float)
    centre = np.array([20.0, 20.0, 10.0])[:, None, None, None]
    radius_mm = 12.0
    reference = (((grid - centre) * spacing[:, None, None, None]) ** 2).sum(0) <= radius_mm**2
    prediction = np.roll(reference, 3, axis=2)  # 3 slices = 6 mm
    labels_ref, labels_pred = reference.astype(np.uint8), prediction.astype(np.uint8)
    full = compute_surface_metrics(labels_ref, labels_pred, spacing, [1], percentile=100)
    # The topmost predicted voxels are 3 slices above anything of the reference: exactly 6 mm.
    assert full.hd95_mm[1] == pytest.approx(6.0, abs=1e-6)
    result = compute_surface_metrics(labels_ref, labels_pred, spacing, [1], tolerance_mm=3.0)
    hd, nsd = brute_force(reference, prediction, spacing, 95, 3.0)
    assert result.hd95_mm[1] == pytest.approx(hd, abs=1e-5)
    assert result.surface_dice[1] == pytest.approx(nsd, abs=1e-9)
    # The flat caps of the sampled sphere hold over 5 % of its surface: HD95 is the full 6 mm.
    assert result.hd95_mm[1] == pytest.approx(6.0, abs=1e-6)
    assert 0.3 < result.surface_dice[1] < 0.95


def test_surface_voxels_equal_scipy_erosion_edges_also_at_the_array_border():
    rng = np.random.default_rng(2)
    for shape in [(25, 30), (12, 14, 9)]:
        mask = ndimage.gaussian_filter(rng.normal(size=shape), 1.5) > 0  # touches the borders
        expected = mask ^ ndimage.binary_erosion(mask)
        np.testing.assert_array_equal(surface_voxels(mask), expected)
        assert surface_voxels(mask)[0].any()


def test_empty_masks_follow_the_totalsegmentator_convention():
    reference = np.zeros((8, 8, 8), dtype=np.uint8)
    prediction = np.zeros_like(reference)
    reference[1:4, 1:4, 1:4] = 1  # missed
    prediction[5:7, 5:7, 5:7] = 2  # false positive; 3 absent in both
    reference[4, 4, 4] = prediction[4, 4, 4] = 4  # not annotated
    annotated = np.array([True, True, True, True, False])
    result = compute_surface_metrics(reference, prediction, 1.5, num_labels=5, annotated=annotated)
    assert result.hd95_mm[1] == np.inf and result.surface_dice[1] == 0.0
    assert np.isnan(result.hd95_mm[2:]).all() and np.isnan(result.surface_dice[2:]).all()
    with pytest.raises(DataError, match="non-empty"):
        surface_distances(reference == 1, prediction == 1, 1.0)


def test_surface_metrics_equal_monai_on_random_multilabel_volumes():
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(11)
    num_labels, shape, spacing = 6, (44, 38, 20), (0.7, 0.9, 2.5)

    def blobs() -> np.ndarray:
        noise = ndimage.gaussian_filter(rng.normal(size=(num_labels, *shape)), (0, 3, 3, 1.5))
        return noise.argmax(0).astype(np.uint8)

    reference = blobs()
    prediction = np.where(rng.random(shape) < 0.85, reference, blobs())
    prediction = ndimage.median_filter(prediction, 3).astype(np.uint8)
    result = compute_surface_metrics(reference, prediction, spacing, num_labels=num_labels)

    def one_hot(labels: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(labels.astype(np.int64))
        return torch.nn.functional.one_hot(tensor, num_labels).movedim(-1, 0)[None].float()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_hd = compute_hausdorff_distance(
            one_hot(prediction), one_hot(reference), percentile=95, spacing=spacing
        )[0].numpy()
        monai_nsd = compute_surface_dice(
            one_hot(prediction), one_hot(reference), [3.0] * (num_labels - 1), spacing=spacing
        )[0].numpy()
    assert np.all(result.hd95_mm[1:] > 0) and np.all(result.surface_dice[1:] < 1)
    np.testing.assert_allclose(result.hd95_mm[1:], monai_hd, atol=1e-3, rtol=0)
    np.testing.assert_allclose(result.surface_dice[1:], monai_nsd, atol=1e-6, rtol=0)


def test_real_fast_prediction_matches_monai_on_every_present_structure(extra_dir):
    nib = pytest.importorskip("nibabel")
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    ref_path = extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    pred_path = extra_dir / "s0000_totalsegmentator_fast_multilabel.nii.gz"
    image = nib.load(ref_path)
    reference = np.asarray(image.dataobj)
    prediction = np.asarray(nib.load(pred_path).dataobj)
    spacing = tuple(float(s) for s in image.header.get_zooms()[:3])
    result = compute_surface_metrics(reference, prediction, spacing)
    both = [k for k in range(1, 118) if (reference == k).any() and (prediction == k).any()]
    assert len(both) >= 35

    def channels(labels: np.ndarray) -> torch.Tensor:  # background + the structures in `both`
        masks = [labels == 0] + [labels == k for k in both]
        return torch.from_numpy(np.stack(masks).astype(np.float32))[None]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_hd = compute_hausdorff_distance(
            channels(prediction), channels(reference), percentile=95, spacing=spacing
        )[0].numpy()
        monai_nsd = compute_surface_dice(
            channels(prediction), channels(reference), [3.0] * len(both), spacing=spacing
        )[0].numpy()
    np.testing.assert_allclose(result.hd95_mm[both], monai_hd, atol=1e-3, rtol=0)
    np.testing.assert_allclose(result.surface_dice[both], monai_nsd, atol=1e-6, rtol=0)
    missed = [k for k in range(1, 118) if (reference == k).any() and not (prediction == k).any()]
    assert all(result.hd95_mm[k] == np.inf for k in missed)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"spacing_mm": (1.0, 1.0)}, "spacing_mm"),
        ({"spacing_mm": (1.0, 0.0, 1.0)}, "spacing_mm"),
        ({"spacing_mm": 1.0, "percentile": 120}, "percentile"),
        ({"spacing_mm": 1.0, "tolerance_mm": -1.0}, "tolerance_mm"),
        ({"spacing_mm": 1.0, "labels": [118]}, "label 118"),
    ],
)
def test_bad_arguments_raise_data_error(kwargs, message):
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(DataError, match=message):
        compute_surface_metrics(labels, labels, **kwargs)
