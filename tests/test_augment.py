"""Batched augmentation: left/right mirroring with label swap, spatial and intensity changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ctseg_core.config import DataConfig
from ctseg_core.data.augment import apply_curve, augment_batch, mirror_lr, vessel_contrast
from ctseg_core.data.cache import open_cached
from ctseg_core.labels import LABEL_OF, VESSELS, lr_swap_lut

KL, KR = LABEL_OF["kidney_left"], LABEL_OF["kidney_right"]


def _x_centre(labels: torch.Tensor, value: int) -> float:
    return float(torch.nonzero(labels == value)[:, 0].float().mean())


def test_mirror_flips_x_and_swaps_left_right_labels():
    labels = torch.zeros(1, 8, 6, dtype=torch.uint8)
    labels[0, 1, 2] = KL
    labels[0, 6, 3] = LABEL_OF["liver"]
    image = torch.arange(48, dtype=torch.float32).view(1, 1, 8, 6)
    out_image, out_labels = mirror_lr(image, labels)
    assert out_labels[0, 8 - 1 - 1, 2] == KR  # moved to the mirrored x and renamed
    assert out_labels[0, 8 - 1 - 6, 3] == LABEL_OF["liver"]  # unpaired midline/one-sided: kept
    assert torch.equal(out_image[0, 0], image[0, 0].flip(0))
    assert labels[0, 1, 2] == KL  # the input is not modified


def test_mirrored_real_slice_keeps_right_structures_on_the_patients_right(s0000_root, tmp_path):
    # canonical RAS+: x (axis 0 of an (X, Y) slice) grows towards the patient's right
    subject = open_cached(s0000_root, "s0000", tmp_path)
    assert subject.affine[0, 0] > 0
    labels = torch.from_numpy(np.array(subject.labels[9]))[None]  # both kidneys in this slice
    assert _x_centre(labels[0], KR) > _x_centre(labels[0], KL)
    image = torch.zeros(1, 1, *labels.shape[1:])
    _, mirrored = mirror_lr(image, labels)
    assert _x_centre(mirrored[0], KR) > _x_centre(mirrored[0], KL)  # still anatomically true
    lut = torch.from_numpy(lr_swap_lut()).long()
    assert torch.equal(mirrored[0], lut[labels[0].flip(0).long()].to(torch.uint8))
    counts = torch.bincount(labels.flatten().long(), minlength=118)
    swapped = torch.bincount(mirrored.flatten().long(), minlength=118)
    assert swapped[KR] == counts[KL] and swapped[KL] == counts[KR]


def test_slices_with_an_unpaired_lateral_structure_are_not_mirrored(s0000_root, tmp_path):
    subject = open_cached(s0000_root, "s0000", tmp_path)
    z = 29  # holds lung_middle_lobe_right, which has no left partner
    labels = torch.from_numpy(np.array(subject.labels[[9, z]]))
    assert (labels[1] == LABEL_OF["lung_middle_lobe_right"]).any()
    image = torch.randn(2, 1, *labels.shape[1:])
    out_image, out_labels = mirror_lr(image, labels)
    assert torch.equal(out_labels[1], labels[1]) and torch.equal(out_image[1], image[1])
    assert not torch.equal(out_labels[0], labels[0])


def test_subjects_annotating_one_side_of_a_learned_pair_are_never_mirrored(derived_sample):
    """s0003 has kidney_left but no _right file: mirrored, its kidney would sit on the right
    while its annotations still said "left known, right unknown"."""
    from ctseg_core.config import ModelConfig, RunConfig
    from ctseg_core.data.slices import SliceDataset

    pair = ["kidney_left", "kidney_right"]
    data = DataConfig(data_root=str(derived_sample), target_size=(32, 32), train_split="all")
    config = RunConfig(dataclasses.replace(data, structures=["liver", *pair]), ModelConfig())
    dataset = SliceDataset(config, "all")
    safe = dict(zip(dataset.subject_ids, dataset.mirror_safe().tolist(), strict=True))
    # s0000/s0001 have every file, s0002 neither kidney, s0003 the left one only
    assert safe == {"s0000": True, "s0001": True, "s0002": True, "s0003": False}
    liver_only = RunConfig(dataclasses.replace(data, structures=["liver"]), ModelConfig())
    assert SliceDataset(liver_only, "all").mirror_safe() is None  # no learned pair: all may

    cfg = DataConfig(mirror=True, spatial_prob=0.0, elastic_prob=0.0, intensity_prob=0.0)
    image, labels = _batch(b=16)
    never = torch.zeros(16, dtype=torch.bool)
    kept = augment_batch(image, labels, cfg, torch.Generator().manual_seed(3), never)
    assert torch.equal(kept[1], labels) and torch.equal(kept[0], image)
    allowed = augment_batch(image, labels, cfg, torch.Generator().manual_seed(3), ~never)
    mirrored = (allowed[1] == KR).any(dim=(1, 2))
    assert 0 < int(mirrored.sum()) < 16  # about half, as without the mask


def _batch(b: int = 6, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.zeros(b, size, size, dtype=torch.uint8)
    labels[:, 16:40, 20:44] = LABEL_OF["liver"]
    labels[:, 44:54, 10:20] = KL
    image = torch.where(labels > 0, 0.3, -0.5)[:, None].float()
    return image, labels


def test_augmentation_is_seeded_and_keeps_label_values():
    cfg = DataConfig(mirror=True, spatial_prob=1.0, elastic_prob=1.0, intensity_prob=1.0)
    image, labels = _batch()
    a = augment_batch(image, labels, cfg, torch.Generator().manual_seed(5))
    b = augment_batch(image, labels, cfg, torch.Generator().manual_seed(5))
    c = augment_batch(image, labels, cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    out_image, out_labels = a
    assert out_image.shape == image.shape and out_labels.dtype == torch.uint8
    assert set(out_labels.unique().tolist()) <= {0, LABEL_OF["liver"], KL, KR}
    assert not torch.equal(out_labels, labels)  # every sample was moved
    # label area roughly preserved by rotation +-15 deg and scaling 0.85-1.15
    ratio = (out_labels == LABEL_OF["liver"]).sum((1, 2)).float() / (24 * 24)
    assert bool(((ratio > 0.6) & (ratio < 1.5)).all())


def test_spatial_transform_moves_image_and_labels_together():
    cfg = DataConfig(spatial_prob=1.0, elastic_prob=0.0, intensity_prob=0.0, noise_std=0.0)
    image, labels = _batch()
    out_image, out_labels = augment_batch(image, labels, cfg, torch.Generator().manual_seed(1))
    inside = out_labels == LABEL_OF["liver"]
    # image pixels under the moved liver label keep the liver intensity (bilinear edges aside)
    assert float((out_image[:, 0][inside] - 0.3).abs().median()) < 1e-5
    # padding brought in from outside the slice is the low end of the window (-1)
    assert float(out_image.min()) >= -1.0 - 1e-5


def test_probabilities_zero_leave_the_batch_unchanged():
    cfg = dataclasses.replace(
        DataConfig(), spatial_prob=0.0, elastic_prob=0.0, intensity_prob=0.0, mirror=False
    )
    image, labels = _batch()
    out_image, out_labels = augment_batch(image, labels, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out_labels, labels) and torch.allclose(out_image, image)


def test_intensity_curve_is_monotone_keeps_the_window_ends_and_changes_contrast():
    ramp = torch.linspace(-1.0, 1.0, 201).view(1, 1, 1, 201).repeat(8, 1, 1, 1)
    identity = torch.linspace(-1.0, 1.0, 9).expand(8, 9)
    assert torch.allclose(apply_curve(ramp, identity), ramp, atol=1e-6)
    cfg = DataConfig(
        curve_prob=1.0, spatial_prob=0.0, elastic_prob=0.0, intensity_prob=0.0, noise_std=0.0
    )
    labels = torch.zeros(8, 1, 201, dtype=torch.uint8)
    out, out_labels = augment_batch(ramp, labels, cfg, torch.Generator().manual_seed(2))
    assert torch.equal(out_labels, labels)
    assert bool((out[..., 1:] - out[..., :-1] >= -1e-6).all())  # no tissue order swaps
    assert torch.allclose(out[..., 0], torch.full((8, 1, 1), -1.0))  # padding stays -1
    assert torch.allclose(out[..., -1], torch.ones(8, 1, 1))
    # two tissues 125 HU apart in a 1000 HU window (0.25 units) change their contrast
    gap = out[..., 150] - out[..., 125]
    assert float(gap.min()) < 0.2 and float(gap.max()) > 0.3


def _normalised(hu: float, window=(-400.0, 600.0)) -> float:
    return (hu - window[0]) * 2.0 / (window[1] - window[0]) - 1.0


def test_vessel_contrast_sets_each_vessels_mean_and_keeps_its_texture():
    aorta, ivc, liver = LABEL_OF["aorta"], LABEL_OF["inferior_vena_cava"], LABEL_OF["liver"]
    labels = torch.zeros(2, 32, 32, dtype=torch.uint8)
    labels[:, 2:14, 2:14] = liver
    labels[:, 18:26, 4:12] = aorta
    labels[:, 18:26, 20:28] = ivc
    g = torch.Generator().manual_seed(0)
    image = torch.full((2, 1, 32, 32), _normalised(40.0)) + 0.05 * torch.randn(
        2, 1, 32, 32, generator=g
    )
    image[:, :, 2:14, 2:14] += _normalised(60.0) - _normalised(40.0)
    target = torch.full((2, len(VESSELS)), float("nan"))
    target[0, VESSELS.index("aorta")] = 300.0  # sample 0: an enhanced aorta, IVC as it was
    out = vessel_contrast(image, labels, target, (-400.0, 600.0))
    inside = (slice(19, 25), slice(5, 11))  # away from the softened edge
    shift = out[0, 0][inside] - image[0, 0][inside]
    assert torch.allclose(shift, shift.mean().expand_as(shift), atol=1e-5)  # texture kept
    mean_aorta = out[0, 0][labels[0] == aorta].mean()
    assert float(mean_aorta) == pytest.approx(_normalised(300.0), abs=0.02)
    ring = out[0, 0, 17, 5:11] - image[0, 0, 17, 5:11]  # outside, next to the aorta: a share
    assert bool((ring > 0.1 * shift.mean()).all() and (ring < 0.5 * shift.mean()).all())
    assert torch.equal(out[0, 0, 18:26, 20:28], image[0, 0, 18:26, 20:28])  # NaN: the IVC kept
    assert torch.equal(out[0, 0, :14, :16], image[0, 0, :14, :16])  # no vessel near: unchanged
    assert torch.equal(out[1], image[1])  # an all-NaN row: the sample is untouched


def test_vessel_contrast_in_augment_batch_changes_only_vessels(s0000_root, tmp_path):
    subject = open_cached(s0000_root, "s0000", tmp_path)
    aorta = LABEL_OF["aorta"]
    z = int(np.argmax((np.asarray(subject.labels) == aorta).sum(axis=(1, 2))))
    labels = torch.from_numpy(np.array(subject.labels[z]))[None].repeat(4, 1, 1)
    hu = torch.from_numpy(np.array(subject.ct[z], dtype=np.float32))
    image = ((hu.clamp(-400, 600) + 400) / 500 - 1)[None, None].repeat(4, 1, 1, 1)
    off = dict(spatial_prob=0.0, elastic_prob=0.0, intensity_prob=0.0, noise_std=0.0)
    cfg = DataConfig(hu_window=(-400.0, 600.0), vessel_contrast_prob=1.0, **off)
    out, out_labels = augment_batch(image, labels, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(out_labels, labels)
    mask = labels == aorta
    means = [float(out[i, 0][mask[i]].mean()) for i in range(4)]
    low, high = _normalised(20.0), _normalised(400.0)
    assert all(low - 0.05 < m < high + 0.05 for m in means)
    assert max(means) - min(means) > 0.1  # each sample draws its own intensity
    far = ~torch.from_numpy(
        np.isin(subject.labels[z], [LABEL_OF[v] for v in VESSELS])
    )  # a pixel next to a vessel takes a share of its shift (3 x 3 softening)
    far = ~torch.nn.functional.max_pool2d((~far).float()[None, None], 3, 1, 1)[0, 0].bool()
    assert torch.equal(out[:, 0][:, far], image[:, 0][:, far])
    unchanged = DataConfig(hu_window=(-400.0, 600.0), vessel_contrast_prob=0.0, **off)
    same, _ = augment_batch(image, labels, unchanged, torch.Generator().manual_seed(0))
    assert torch.equal(same, image)


def test_the_training_step_mirrors_only_the_subjects_that_may_be(monkeypatch):
    """StepRunner hands each sample's subject row of ``mirror_safe`` to the augmentation."""
    import ctseg_core.training.step as step_module
    from ctseg_core.config import ModelConfig, RunConfig
    from ctseg_core.models import build_model
    from ctseg_core.models.head import class_lut
    from ctseg_core.training.losses import build_loss
    from ctseg_core.training.step import StepRunner

    config = RunConfig(
        DataConfig(target_size=(32, 32), structures=["liver", "kidney_left", "kidney_right"],
                   mirror=True, spatial_prob=0.0, intensity_prob=0.0),
        ModelConfig(features=[4, 8], bottleneck=8),
    )  # fmt: skip
    net = build_model(config.model)
    seen = []
    real = step_module.augment_batch

    def recording(image, labels, cfg, generator, mirror_allowed=None):  # the real one runs
        seen.append(mirror_allowed)
        return real(image, labels, cfg, generator, mirror_allowed)

    monkeypatch.setattr(step_module, "augment_batch", recording)
    runner = StepRunner(
        net, torch.optim.SGD(net.parameters(), lr=0.0), torch.amp.GradScaler("cpu", enabled=False),
        build_loss("dice_ce"), class_lut(config), config.data, torch.device("cpu"), None, False,
        None, None, torch.tensor([True, False, True]),
    )  # fmt: skip
    image, labels = _batch(b=4, size=32)
    runner(image, labels, torch.Generator().manual_seed(0), torch.tensor([1, 0, 2, 1]))
    assert seen[-1].tolist() == [False, True, True, False]
