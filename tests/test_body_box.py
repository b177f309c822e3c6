"""The box around the body: where a volumetric model's windows go, and labels unchanged by it."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ctseg_core.cli import main as cli_main
from ctseg_core.config import DataConfig, ModelConfig, RunConfig
from ctseg_core.data.resample import grid_shape
from ctseg_core.errors import CtsegError
from ctseg_core.inference.body_box import body_box
from ctseg_core.inference.predictor import Predictor
from ctseg_core.labels import value_of
from ctseg_core.models import build_model, register
from ctseg_core.models.checkpoint import save_checkpoint

AIR = -1024


def _ct(shape, block, value=40):
    ct = np.full(shape, AIR, dtype=np.int16)
    ct[block] = value
    return ct


def test_the_box_is_the_body_widened_by_the_margin_in_mm():
    ct = _ct((100, 80, 60), (slice(30, 60), slice(20, 50), slice(10, 40)))
    # 2 x 1 x 3 mm voxels, a 10 mm margin: 5, 10 and 4 voxels (ceil) on each side
    box = body_box(ct, (2.0, 1.0, 3.0), (0, 0, 0), margin_mm=10)
    assert box == (slice(25, 65), slice(10, 60), slice(6, 44))


def test_the_box_is_at_least_a_patch_around_the_bodys_centre_and_inside_the_ct():
    ct = _ct((100, 80, 60), (slice(45, 55), slice(2, 8), slice(50, 60)))
    box = body_box(ct, (1.0, 1.0, 1.0), (40, 30, 20), margin_mm=1)
    # x: 44..56 widened to 40 voxels around its centre; y: 1..9 -> 30 voxels from the edge;
    # z: 49..60 -> 20 voxels ending at the last slice
    assert box == (slice(30, 70), slice(0, 30), slice(40, 60))
    # a patch larger than the CT: the CT's whole extent along that axis
    assert body_box(ct, (1.0, 1.0, 1.0), (40, 300, 20), margin_mm=1)[1] == slice(0, 80)


def test_nan_counts_as_air():
    ct = _ct((40, 40, 20), (slice(10, 20), slice(10, 20), slice(5, 10))).astype(np.float32)
    ct[:3] = np.nan  # a float CT's outside of the reconstruction circle
    ct[15, 15, :] = np.nan  # and a whole column through the body
    assert body_box(ct, (1.0, 1.0, 1.0), (0, 0, 0), margin_mm=2) == (
        slice(8, 22), slice(8, 22), slice(3, 12),
    )  # fmt: skip
    assert body_box(np.full((8, 8, 8), np.nan), (1.0, 1.0, 1.0), (0, 0, 0)) is None


def test_no_box_where_the_body_fills_the_ct_or_there_is_none():
    spacing, patch = (1.0, 1.0, 1.0), (8, 8, 8)
    assert body_box(_ct((40, 40, 20), (slice(1, 39), slice(0, 40), slice(0, 20))), spacing,
                    patch, margin_mm=2) is None  # fmt: skip
    assert body_box(np.full((40, 40, 20), AIR, dtype=np.int16), spacing, patch) is None
    # lung-like voxels (-800 HU) alone are not body
    assert body_box(_ct((40, 40, 20), (slice(5, 9),) * 3, value=-800), spacing, patch) is None


def test_a_couch_apart_from_the_body_is_left_out_arms_beside_it_stay(padded_subject):
    """s0000's real CT (3 mm) on a couch: a plate 3 voxels thick 6 voxels below the body, its
    sides curved up past the body's back, and an arm apart from the body at its side."""
    ct, spacing, _ = padded_subject
    ct = ct.copy()
    body = body_box(ct, spacing, (0, 0, 0), margin_mm=0)
    (x0, x1), (y0, y1) = [(s.start, s.stop) for s in body[:2]]
    ct[x0 - 40 : x1 + 40, y0 - 9 : y0 - 6, :] = 300  # the couch top, wider than the body
    ct[x0 - 40 : x0 - 37, y0 - 9 : y0 + 4, :] = 300  # its sides, up past the body's back
    ct[x1 + 37 : x1 + 40, y0 - 9 : y0 + 4, :] = 300
    with_couch = body_box(ct, spacing, (0, 0, 0), margin_mm=0)
    assert with_couch[:2] == (slice(x0, x1), slice(y0, y1))
    arm = (slice(x1 + 5, x1 + 12), slice((y0 + y1) // 2, (y0 + y1) // 2 + 8), slice(0, 20))
    ct[arm] = 40
    assert body_box(ct, spacing, (0, 0, 0), margin_mm=0)[:2] == (
        slice(x0, x1 + 12), slice(y0, y1),
    )  # fmt: skip
    # a forearm on a pillow in front of the belly (below -500 HU between): apart from the body
    # and beyond its y extent, but no plate, so it stays
    forearm = (slice(x0 + 20, x0 + 40), slice(y1 + 5, y1 + 21), slice(0, 20))
    ct[forearm] = 40
    assert body_box(ct, spacing, (0, 0, 0), margin_mm=0)[:2] == (
        slice(x0, x1 + 12), slice(y0, y1 + 21),
    )  # fmt: skip
    # a couch touching the body is kept: the box grows, it never loses the body
    ct[x0 - 40 : x1 + 40, y0 - 6 : y0 + 4, :] = 300  # up into the body's back
    assert body_box(ct, spacing, (0, 0, 0), margin_mm=0)[1] == slice(y0 - 9, y1 + 21)


def test_the_slices_of_the_box_are_the_bodys_not_the_couchs():
    """A body and its arms in slices 10-19 of 40 on a couch along every slice: the box's slices
    are theirs, though the couch's curved sides rise into the x and y extent of the body and
    arms (as on the real s0001)."""
    ct = _ct((100, 100, 40), (slice(20, 80), slice(20, 60), slice(10, 20)))
    ct[2:12, 30:50, 10:20] = 40  # the arms, apart from the body at its sides
    ct[88:98, 30:50, 10:20] = 40
    ct[5:95, 10:13, :] = 300  # the couch's top
    ct[5:7, 10:27, :] = 300  # its sides, up past the body's back
    ct[93:95, 10:27, :] = 300
    assert body_box(ct, (1.0, 1.0, 1.0), (0, 0, 0), margin_mm=0) == (
        slice(2, 98), slice(20, 60), slice(10, 20),
    )  # fmt: skip


def test_the_real_s0001_box_leaves_out_its_couch_and_keeps_every_structure(sample_root):
    """s0001 (512 x 512 x 20 at 0.98 x 0.98 x 2 mm, supine on a couch): its box at 3 mm with
    112 x 112 x 128 patches needs one window along y (two over the whole CT), and holds every
    voxel of its 117 reference masks."""
    subject = sample_root / "s0001"
    img = nib.as_closest_canonical(nib.load(subject / "ct.nii.gz"))
    ct = np.asarray(img.dataobj)
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])
    box = body_box(ct, spacing, (336.0, 336.0, 384.0))
    assert box == (slice(0, 512), slice(50, 395), slice(0, 20))
    assert grid_shape([s.stop - s.start for s in box], spacing, (3.0, 3.0, 3.0))[1] == 112
    inside = np.zeros(ct.shape, dtype=bool)
    inside[box] = True
    structures = 0
    for path in sorted((subject / "segmentations").glob("*.nii.gz")):
        mask = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj) > 0
        structures += bool(mask.any())
        assert not (mask & ~inside).any(), path.name
    assert structures > 20


class DenseNet3D(nn.Module):
    """Labels each voxel from its own intensity alone: liver (channel 1) where the input is
    above 0.2, the background elsewhere, so every window gives a voxel the same logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        liver = 8 * (x - 0.2)
        rest = torch.full_like(x, -10.0).expand(-1, 4, -1, -1, -1)
        return torch.cat([torch.zeros_like(x), liver, rest], dim=1)


class WindowSideNet3D(DenseNet3D):
    """DenseNet3D's liver only in the first half of each window along x: its labels show
    where the windows fell."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        out[:, 1, x.shape[2] // 2 :] = -10.0
        return out


register("test_dense3d", spatial_dims=3, inference="patches")(lambda cfg: DenseNet3D())
register("test_window_side3d", spatial_dims=3, inference="patches")(lambda cfg: WindowSideNet3D())


def _dense_checkpoint(path, spacing, name="test_dense3d"):
    cfg = RunConfig(
        data=DataConfig(patch_size=(32, 32, 16), spacing_mm=spacing,
                        structures=["liver", "spleen", "kidney_right", "kidney_left", "aorta"]),
        model=ModelConfig(name=name),
    )  # fmt: skip
    return save_checkpoint(path, build_model(cfg.model), config=cfg)


@pytest.fixture
def padded_subject(s0000_root, tmp_path):
    """s0000's real CT (3 mm) in a field of view 60 voxels wider of air on each side of x and y."""
    img = nib.as_closest_canonical(nib.load(s0000_root / "s0000" / "ct.nii.gz"))
    ct = np.asarray(img.dataobj).astype(np.int16)
    padded = np.pad(ct, ((60, 60), (60, 60), (0, 0)), constant_values=AIR)
    spacing = tuple(float(s) for s in img.header.get_zooms()[:3])
    path = tmp_path / "wide.nii.gz"
    nib.save(nib.Nifti1Image(padded, img.affine), path)
    return padded, spacing, path


def test_labels_on_the_box_equal_those_of_the_whole_ct_with_fewer_windows(padded_subject, tmp_path):
    """A model that labels each voxel from itself: the box changes where the windows fall,
    not a label, and the air around the body is background either way."""
    ct, spacing, _ = padded_subject
    ckpt = _dense_checkpoint(tmp_path / "dense.pth", spacing)
    counts, labels = {}, {}
    for crop in (True, False):
        predictor = Predictor([ckpt], device="cpu", batch_slices=2, body_crop=crop)
        seen: list[int] = []
        labels[crop] = predictor.predict(ct, spacing_mm=spacing,
                                         progress=lambda d, n, u, seen=seen: seen.append(n))  # fmt: skip
        counts[crop] = seen[-1]
    box = Predictor([ckpt], device="cpu").strategy.body_box(ct, spacing)
    assert box is not None and box[0].stop - box[0].start < ct.shape[0] - 100
    assert counts[True] < counts[False]
    np.testing.assert_array_equal(labels[True], labels[False])
    assert 1000 < (labels[True] == value_of("liver")).sum() < ct.size / 2
    with pytest.raises(CtsegError, match=r"spacing \(0.0, 3.0, 3.0\) mm must be > 0"):
        Predictor([ckpt], device="cpu").predict(ct, spacing_mm=(0.0, 3.0, 3.0))


def test_predict_labels_the_box_unless_told_not_to(padded_subject, tmp_path, capsys):
    """``ctseg predict`` on a 3D model labels the box by default and the whole CT with
    ``--no-body-crop``: a model whose labels show where its windows fell gives each file the
    labels of the matching Predictor, on the whole CT's grid."""
    ct, spacing, path = padded_subject
    ckpt = _dense_checkpoint(tmp_path / "side.pth", spacing, name="test_window_side3d")
    expected = {}
    for crop, flag in ((True, []), (False, ["--no-body-crop"])):
        out = tmp_path / f"out_{crop}.nii.gz"
        assert cli_main(["predict", "--ct", str(path), "--checkpoint", str(ckpt), "--out",
                         str(out), "--device", "cpu", *flag]) == 0  # fmt: skip
        predictor = Predictor([ckpt], device="cpu", body_crop=crop)
        expected[crop] = predictor.predict(ct, spacing_mm=spacing)
        printed = capsys.readouterr().out
        if crop:  # said, with the box's voxels
            spans = zip("xyz", predictor.last_box, strict=True)
            box = ", ".join(f"{a} {s.start}-{s.stop - 1}" for a, s in spans)
            assert (
                f"labelled the box around the body (RAS voxel indices {box}, inclusive" in printed
            )
        else:
            assert predictor.last_box is None and "box around the body" not in printed
        np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj), expected[crop])
    assert (expected[True] != expected[False]).sum() > 1000  # the windows fell elsewhere


def test_evaluate_labels_the_box_records_it_and_can_be_told_not_to(
    padded_subject, tmp_path, capsys
):
    """``ctseg evaluate --checkpoint`` on a 3D model scores the labels of the Predictor with
    the same ``body_crop`` (a model whose labels show where its windows fell tells them apart),
    says so and records each box in source_<split>.json; ``--no-body-crop`` scores the whole
    CT's windows and records no box. The reference "liver" is what DenseNet3D labels (the
    same, box or not)."""
    ct, spacing, path = padded_subject
    root = tmp_path / "wide_root"
    (root / "s0000" / "segmentations").mkdir(parents=True)
    img = nib.load(path)
    nib.save(img, root / "s0000" / "ct.nii.gz")
    dense = Predictor([_dense_checkpoint(tmp_path / "dense.pth", spacing)], device="cpu")
    mask = (dense.predict(ct, spacing_mm=spacing) == value_of("liver")).astype(np.uint8)
    nib.save(nib.Nifti1Image(mask, img.affine), root / "s0000" / "segmentations" / "liver.nii.gz")
    ckpt = _dense_checkpoint(tmp_path / "side.pth", spacing, name="test_window_side3d")
    dice = {}
    for crop, flag in ((True, []), (False, ["--no-body-crop"])):
        out = tmp_path / f"eval_{crop}"
        assert cli_main(["evaluate", "--data", str(root), "--split", "all", "--checkpoint",
                         str(ckpt), "--out", str(out), "--no-report", "--device", "cpu",
                         "--cache", str(tmp_path / "cache"), *flag]) == 0  # fmt: skip
        printed = capsys.readouterr().out
        predictor = Predictor([ckpt], device="cpu", body_crop=crop)
        labels = predictor.predict(ct, spacing_mm=spacing)
        ours = labels == value_of("liver")
        expected = 2 * (ours & (mask > 0)).sum() / (ours.sum() + (mask > 0).sum())
        table = pd.read_csv(out / "evaluation_results_all.csv")
        dice[crop] = float(table.loc[table["structure"] == "liver", "dice"].iloc[0])
        assert dice[crop] == pytest.approx(expected, abs=1e-6)
        source = json.loads((out / "source_all.json").read_text())
        assert source["body_crop"] is crop
        if crop:
            box = [[s.start, s.stop] for s in predictor.last_box]
            assert source["body_boxes"] == {"s0000": box}
            assert "labelled the box around the body in 1 CTs" in printed
        else:
            assert source["body_boxes"] == {} and "box around the body" not in printed
    assert min(dice.values()) > 0.2 and abs(dice[True] - dice[False]) > 0.01  # windows moved
