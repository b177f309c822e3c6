"""Batched 3D augmentation: rotation/scaling, mirroring with label swap, gamma and the rest."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ctseg_core.config import DataConfig, RunConfig
from ctseg_core.data.augment import mirror_lr, vessel_contrast
from ctseg_core.data.augment3d import augment_batch_3d, spatial_theta, warp_3d
from ctseg_core.data.cache import open_cached
from ctseg_core.errors import ConfigError, DataError
from ctseg_core.labels import LABEL_OF, UNPAIRED_LATERAL, VESSELS

KL, KR, LIVER = LABEL_OF["kidney_left"], LABEL_OF["kidney_right"], LABEL_OF["liver"]
OFF = dict(spatial_prob=0.0, elastic_prob=0.0, intensity_prob=0.0, gamma_prob=0.0, mirror=False)


def _cfg(**changes) -> DataConfig:
    return dataclasses.replace(DataConfig(**OFF), **changes)


def _volumes(b: int = 4, shape=(24, 20, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (B, X, Y, Z): a liver block and a left kidney at low x; image -0.5 / 0.3."""
    labels = torch.zeros(b, *shape, dtype=torch.uint8)
    labels[:, 8:18, 5:15, 4:12] = LIVER
    labels[:, 1:5, 6:10, 6:10] = KL
    image = torch.where(labels > 0, 0.3, -0.5)[:, None].float()
    return image, labels


def _centre(mask: torch.Tensor) -> torch.Tensor:
    """(3,) mean voxel index of a (X, Y, Z) mask."""
    return torch.nonzero(mask).float().mean(dim=0)


def _sphere(shape=(40, 40, 40), radius: float = 8.0) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in shape]
    x, y, z = torch.meshgrid(*axes, indexing="ij")
    return (x**2 + y**2 + z**2) <= radius**2


def test_probabilities_zero_leave_the_batch_unchanged():
    image, labels = _volumes()
    out_image, out_labels = augment_batch_3d(image, labels, _cfg(), torch.Generator())
    assert torch.equal(out_image, image) and torch.equal(out_labels, labels)
    off = dataclasses.replace(DataConfig(), augment=False, spatial_prob=1.0, mirror=True)
    assert augment_batch_3d(image, labels, off, torch.Generator()) == (image, labels)


def test_mirror_on_a_volume_moves_kidney_left_to_high_x_as_kidney_right():
    image, labels = _volumes(b=1)
    image = image + torch.linspace(0, 0.1, 24).view(1, 1, 24, 1, 1)  # x-asymmetric intensities
    out_image, out_labels = mirror_lr(image, labels)
    assert not (out_labels == KL).any()
    assert torch.equal(out_labels[0, 19:23, 6:10, 6:10], torch.full((4, 4, 4), KR))  # 23 - x
    assert torch.equal(out_labels[0, 6:16], labels[0, 8:18].flip(0))  # liver: moved, kept
    assert torch.equal(out_image, image.flip(2))
    assert (labels == KL).sum() == 64  # the input is not modified


def test_mirror_in_augment_batch_3d_happens_about_half_the_time_and_only_where_allowed():
    image, labels = _volumes(b=16)
    cfg = _cfg(mirror=True)
    out = augment_batch_3d(image, labels, cfg, torch.Generator().manual_seed(3))
    mirrored = (out[1] == KR).any(dim=(1, 2, 3))
    assert 3 <= int(mirrored.sum()) <= 13
    assert torch.equal(out[1][mirrored][:, 19:23, 6:10, 6:10].unique(), torch.tensor([KR]))
    assert torch.equal(out[1][~mirrored], labels[~mirrored])
    never = torch.zeros(16, dtype=torch.bool)
    kept = augment_batch_3d(image, labels, cfg, torch.Generator().manual_seed(3), never)
    assert torch.equal(kept[1], labels) and torch.equal(kept[0], image)
    partial = mirrored.clone()
    partial[: int(torch.nonzero(mirrored)[0]) + 1] = False  # the first mirrored one: blocked
    some = augment_batch_3d(image, labels, cfg, torch.Generator().manual_seed(3), partial)
    assert torch.equal((some[1] == KR).any(dim=(1, 2, 3)), partial)  # same draws, masked


def test_a_patch_with_an_unpaired_lateral_structure_is_never_mirrored():
    image, labels = _volumes(b=2)
    labels[1, 20:22, 2:4, 2:4] = LABEL_OF[UNPAIRED_LATERAL[0]]
    _, out = mirror_lr(image, labels)
    assert torch.equal(out[1], labels[1]) and (out[0] == KR).any()


def test_mirrored_real_volume_keeps_right_structures_on_the_patients_right(s0000_root, tmp_path):
    subject = open_cached(s0000_root, "s0000", tmp_path)
    # the cache is z-first (Z, X, Y); slices 0..19 hold both kidneys and no unpaired structure
    labels = torch.from_numpy(np.array(subject.labels[:20])).permute(1, 2, 0)[None]
    assert _centre(labels[0] == KR)[0] > _centre(labels[0] == KL)[0]  # RAS+: x to the right
    image = torch.zeros(1, 1, *labels.shape[1:])
    _, out = augment_batch_3d(image, labels, _cfg(mirror=True), torch.Generator().manual_seed(0))
    assert not torch.equal(out, labels)  # seed 0 mirrors
    assert _centre(out[0] == KR)[0] > _centre(out[0] == KL)[0]  # still anatomically true
    assert (out == KR).sum() == (labels == KL).sum() and (out == KL).sum() == (labels == KR).sum()


def test_rotation_of_90_degrees_about_z_turns_plus_x_towards_plus_y():
    # a non-cubic patch: the rotation must be physical, not in normalised grid units
    shape = (24, 16, 8)
    labels = torch.zeros(1, *shape, dtype=torch.uint8)
    labels[0, 15:18, 7:9, 3:5] = LIVER  # centre (16, 7.5, 3.5): 4.5 voxels towards +x
    image = torch.where(labels > 0, 0.5, -1.0)[:, None]
    theta = spatial_theta(torch.tensor([[0.0, 0.0, 90.0]]), torch.ones(1), shape)
    out_image, out_labels = warp_3d(image, labels, theta)
    centre = _centre(out_labels[0] == LIVER)
    assert centre.tolist() == pytest.approx([11.5, 12.0, 3.5], abs=0.01)  # now 4.5 towards +y
    assert int((out_labels == LIVER).sum()) == 3 * 2 * 2
    assert float(out_image[0, 0, 11, 12, 3]) == pytest.approx(0.5, abs=1e-5)


def test_rotation_about_y_respects_anisotropic_spacing():
    # 1 x 1 x 2 mm voxels: a blob 2 voxels (4 mm) above the centre turns 4 voxels towards +x
    shape = (16, 16, 16)
    labels = torch.zeros(1, *shape, dtype=torch.uint8)
    labels[0, 7:9, 7:9, 9:11] = LIVER  # centre (7.5, 7.5, 9.5)
    theta = spatial_theta(torch.tensor([[0.0, 90.0, 0.0]]), torch.ones(1), shape, (1.0, 1.0, 2.0))
    _, out = warp_3d(torch.zeros(1, 1, *shape), labels, theta)
    assert _centre(out[0] == LIVER).tolist() == pytest.approx([11.5, 7.5, 7.5], abs=0.3)


def test_patches_on_their_cts_own_grids_rotate_in_millimetres_each():
    """Without data.spacing_mm the patches keep their CTs' voxel sizes: each sample's own
    spacing goes into its rotation (it was none: a ball at 0.8 x 0.8 x 3 mm turned 30 degrees
    about x grew from 24 to 45 mm along z; reviewer)."""
    angles = torch.tensor([[30.0, 0.0, 0.0], [0.0, 20.0, 10.0]])
    spacing = torch.tensor([[0.8, 0.8, 3.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    shape = (24, 24, 12)
    batch = spatial_theta(angles, torch.ones(2), shape, spacing)
    for i in range(2):
        one = spatial_theta(angles[i : i + 1], torch.ones(1), shape, tuple(spacing[i].tolist()))
        torch.testing.assert_close(batch[i : i + 1], one)
    # through augment_batch_3d: a ball of 12 mm radius at 0.8 x 0.8 x 3 mm stays ~24 mm tall
    grid = torch.stack(torch.meshgrid(*(torch.arange(n) for n in (48, 48, 16)), indexing="ij"))
    mm = (grid - torch.tensor([23.5, 23.5, 7.5]).view(3, 1, 1, 1)) * torch.tensor(
        [0.8, 0.8, 3.0]
    ).view(3, 1, 1, 1)
    ball = ((mm**2).sum(0) <= 12.0**2).to(torch.uint8)[None] * LIVER
    cfg = _cfg(spatial_prob=1.0, rotation_deg=30.0, scale_range=(1.0, 1.0), spacing_mm=None)
    image = torch.where(ball > 0, 0.5, -1.0)[:, None]
    for own in (torch.tensor([[0.8, 0.8, 3.0]], dtype=torch.float64), None):
        _, out = augment_batch_3d(image, ball, cfg, torch.Generator().manual_seed(3), None, own)
        tall = float((out[0] == LIVER).any(0).any(0).sum()) * 3.0  # mm along z
        assert (tall <= 30.0) == (own is not None), tall


def test_random_rotation_and_scaling_keep_label_values_and_move_image_with_labels():
    image, labels = _volumes(b=6)
    cfg = _cfg(spatial_prob=1.0, rotation_deg=30.0, scale_range=(0.8, 1.25))
    out_image, out_labels = augment_batch_3d(image, labels, cfg, torch.Generator().manual_seed(1))
    assert out_labels.dtype == torch.uint8 and out_image.shape == image.shape
    assert set(out_labels.unique().tolist()) <= {0, LIVER, KL}  # nearest: no new values
    assert bool((out_labels != labels).flatten(1).any(1).all())  # every sample moved
    inside = out_labels == LIVER  # image voxels under the moved liver keep its intensity
    assert float((out_image[:, 0][inside] - 0.3).abs().median()) < 1e-5
    assert float(out_image.min()) >= -1.0 - 1e-5


def test_scale_above_one_makes_a_sphere_larger_by_its_cube():
    sphere = _sphere()
    labels = sphere.to(torch.uint8)[None].repeat(2, 1, 1, 1) * LIVER
    image = torch.where(labels > 0, 0.4, -0.2)[:, None].float()
    cfg = _cfg(spatial_prob=1.0, rotation_deg=0.0, scale_range=(1.2, 1.2))
    _, out = augment_batch_3d(image, labels, cfg, torch.Generator().manual_seed(0))
    ratio = (out == LIVER).sum(dim=(1, 2, 3)).float() / float(sphere.sum())
    assert ratio.tolist() == pytest.approx([1.2**3] * 2, rel=0.05)
    smaller = _cfg(spatial_prob=1.0, rotation_deg=0.0, scale_range=(0.8, 0.8))
    _, out = augment_batch_3d(image, labels, smaller, torch.Generator().manual_seed(0))
    ratio = (out == LIVER).sum(dim=(1, 2, 3)).float() / float(sphere.sum())
    assert ratio.tolist() == pytest.approx([0.8**3] * 2, rel=0.05)


@pytest.mark.parametrize(
    "padding, hu_mean_std, fill",
    [("air", None, -1.0), ("normalised_zero", None, 0.0), ("normalised_zero", (100.0, 300.0), 0.1)],
)
def test_padding_brought_in_reads_the_runs_padding_in_the_image_and_zero_in_the_labels(
    padding, hu_mean_std, fill
):
    """air: the window's low end (-1); nnU-Net's: what the network sees as 0 (its rotations
    fill 0 after normalising): 0, or (mean - 0) / 1000 in the window (-1000, 1000)."""
    shape = (20, 20, 20)
    labels = torch.full((1, *shape), LIVER, dtype=torch.uint8)
    image = torch.full((1, 1, *shape), 0.5)
    cfg = _cfg(spatial_prob=1.0, rotation_deg=0.0, scale_range=(0.5, 0.5),  # shrink: pads
               padding=padding, hu_mean_std=hu_mean_std)  # fmt: skip
    out_image, out_labels = augment_batch_3d(image, labels, cfg, torch.Generator())
    torch.testing.assert_close(out_image[0, 0, :4], torch.full((4, 20, 20), fill))
    assert torch.equal(out_labels[0, :4], torch.zeros(4, 20, 20, dtype=torch.uint8))
    assert float(out_image[0, 0, 10, 10, 10]) == pytest.approx(0.5, abs=1e-6)
    assert out_labels[0, 10, 10, 10] == LIVER
    assert int((out_labels == LIVER).sum()) == 10**3  # half the size each way


def test_identity_samples_are_passed_through_exactly():
    image, labels = _volumes(b=8)
    image = image + 0.01 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    still = _cfg(spatial_prob=1.0, rotation_deg=0.0, scale_range=(1.0, 1.0))
    out = augment_batch_3d(image, labels, still, torch.Generator())
    assert torch.equal(out[0], image) and torch.equal(out[1], labels)
    mixed = _cfg(spatial_prob=0.5)
    out_image, out_labels = augment_batch_3d(image, labels, mixed, torch.Generator().manual_seed(4))
    same = (out_labels == labels).flatten(1).all(1) & (out_image == image).flatten(1).all(1)
    assert 0 < int(same.sum()) < 8  # some moved, the others untouched to the bit


def test_gamma_keeps_the_window_and_its_ends_and_goes_both_ways():
    ramp = torch.linspace(-1.0, 1.0, 101).view(1, 1, 101, 1, 1).repeat(16, 1, 1, 2, 2)
    labels = torch.zeros(16, 101, 2, 2, dtype=torch.uint8)
    cfg = _cfg(gamma_prob=1.0)
    out, out_labels = augment_batch_3d(ramp, labels, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out_labels, labels)
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    assert torch.allclose(out[:, 0, 0], torch.full((16, 2, 2), -1.0))
    assert torch.allclose(out[:, 0, -1], torch.ones(16, 2, 2))
    assert bool((out[:, :, 1:] - out[:, :, :-1] >= 0).all())  # monotone
    # the middle (0 -> 0.5 on [0, 1]) moves to 2 * 0.5 ** gamma - 1, gamma in 0.7..1.5
    middle = out[:, 0, 50, 0, 0]
    assert float(middle.max()) > 0.05 and float(middle.min()) < -0.05  # brighter and darker
    assert float(middle.max()) <= 2 * 0.5**0.7 - 1 + 1e-6
    assert float(middle.min()) >= 2 * 0.5**1.5 - 1 - 1e-6


def test_augmentation_is_deterministic_for_a_seed():
    image, labels = _volumes()
    cfg = dataclasses.replace(DataConfig(), mirror=True, spatial_prob=1.0, gamma_prob=1.0,
                              intensity_prob=1.0, curve_prob=0.5)  # fmt: skip
    a = augment_batch_3d(image, labels, cfg, torch.Generator().manual_seed(5))
    b = augment_batch_3d(image, labels, cfg, torch.Generator().manual_seed(5))
    c = augment_batch_3d(image, labels, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0]) and not torch.equal(a[1], c[1])


def test_vessel_contrast_sets_a_vessels_mean_in_a_volume():
    aorta = LABEL_OF["aorta"]
    labels = torch.zeros(1, 16, 16, 16, dtype=torch.uint8)
    labels[0, 6:10, 6:10, 2:14] = aorta
    image = torch.full((1, 1, 16, 16, 16), -0.9)  # 40 HU in (-400, 600)
    target = torch.full((1, len(VESSELS)), float("nan"))
    target[0, VESSELS.index("aorta")] = 300.0
    out = vessel_contrast(image, labels, target, (-400.0, 600.0))
    assert float(out[0, 0][labels[0] == aorta].mean()) == pytest.approx(0.4, abs=1e-5)
    assert 0.0 < float(out[0, 0, 5, 7, 7] - image[0, 0, 5, 7, 7]) < 1.3 / 2  # a share, in x
    assert torch.equal(out[0, 0, :4], image[0, 0, :4])  # away from it: unchanged


def test_augmentation_reads_nothing_back_from_the_device():
    """On the meta device any read of a value fails; the noise is left out (its generator
    lives on the device)."""
    meta = torch.device("meta")
    image, labels = _volumes(b=4)
    cfg = dataclasses.replace(DataConfig(), mirror=True, spatial_prob=0.5, gamma_prob=0.5,
                              intensity_prob=1.0, noise_std=0.0, curve_prob=1.0,
                              vessel_contrast_prob=1.0)  # fmt: skip
    out_image, out_labels = augment_batch_3d(
        image.to(meta), labels.to(meta), cfg, torch.Generator().manual_seed(0)
    )
    assert out_image.shape == image.shape and out_labels.dtype == torch.uint8


def test_slice_shaped_input_is_refused_with_the_shapes():
    image, labels = _volumes()
    with pytest.raises(DataError, match=r"\(4, 1, 24, 20\)"):
        augment_batch_3d(image[..., 0], labels[..., 0], DataConfig(), torch.Generator())


def test_gamma_settings_round_trip_and_are_checked():
    config = RunConfig.from_dict({"data": {"gamma_range": [0.5, 2.0], "gamma_prob": 0.2}})
    assert config.data.gamma_range == (0.5, 2.0) and config.data.gamma_prob == 0.2
    for bad, message in (
        ({"gamma_range": (0.0, 1.5)}, "gamma range"),
        ({"gamma_range": (1.5, 0.7)}, "gamma range"),
        ({"gamma_prob": 1.5}, "gamma probability"),
    ):
        with pytest.raises(ConfigError, match=message):
            RunConfig(dataclasses.replace(DataConfig(), **bad)).validate()
