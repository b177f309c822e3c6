"""Sliding-window inference of 3D models: the window reproduces a whole-volume pass, Gaussian
weights, resampling to the model's spacing and back, mirror TTA with left/right swap, world-space
agreement across orientations, and `ctseg predict` on a 3D checkpoint."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctseg_core.config import DataConfig, ModelConfig, RunConfig
from ctseg_core.data.resample import grid_shape, resample_ct
from ctseg_core.data.slices import normalize_hu
from ctseg_core.data.volume import load_ct
from ctseg_core.device import autocast_context
from ctseg_core.errors import ConfigError, CtsegError
from ctseg_core.inference.files import predict_file
from ctseg_core.inference.predictor import Predictor
from ctseg_core.inference.to_grid import labels_on_grid, possible_winners
from ctseg_core.inference.windows import gaussian_importance, window_starts
from ctseg_core.labels import LABEL_OF, lr_swap_lut, value_of
from ctseg_core.models import build_model, register
from ctseg_core.models.checkpoint import save_checkpoint
from ctseg_core.models.head import channel_label_values, label_scores

torch.set_num_threads(1)

STRUCTURES = ["liver", "spleen", "kidney_right", "kidney_left", "aorta"]


class SideNet3D(nn.Module):
    """Labels by position in its input only: kidney_left (logit 3) in the first half of x, the
    background (logit 1) elsewhere. Channels: background, kidney_right, kidney_left."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, nx, ny, nz = x.shape
        first = (torch.arange(nx) < nx // 2).float().view(1, nx, 1, 1).expand(b, nx, ny, nz)
        return torch.stack([1 - first, torch.zeros_like(first), 3 * first], dim=1)


register("test_side3d", spatial_dims=3, inference="patches")(lambda cfg: SideNet3D())


class NearNet3D(nn.Module):
    """Liver (channel 1) where tissue (input above -0.5) lies within 2 slices along z."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tissue = (x > -0.5).float()
        near = F.max_pool3d(tissue, (1, 1, 5), stride=1, padding=(0, 0, 2))
        return torch.cat([1 - near, near, torch.full_like(near, -10.0)], dim=1)


register("test_near3d", spatial_dims=3, inference="patches")(lambda cfg: NearNet3D())


def checkpoint_3d(path, patch=(32, 32, 16), spacing=(6.0, 6.0, 6.0), output="softmax", seed=0,
                  structures=STRUCTURES, name="plain_unet3d", mirror=False,
                  **data):  # fmt: skip
    """A real checkpoint of an untrained (seeded) tiny 3D network (``data``: more DataConfig)."""
    cfg = RunConfig(
        data=DataConfig(patch_size=patch, spacing_mm=spacing, structures=list(structures),
                        mirror=mirror, **data),
        model=ModelConfig(name=name, features=[4, 8], strides=[1, [2, 2, 1]], norm="instance",
                          output=output),
    )  # fmt: skip
    cfg.validate()
    torch.manual_seed(seed)
    return save_checkpoint(path, build_model(cfg.model), config=cfg)


def window_scores(logits: torch.Tensor, config: RunConfig, as_logits: bool) -> torch.Tensor:
    """What the sliding window averages for one pass, (B, 118, *spatial) by label value: the
    logits themselves (``PatchStrategy.averages_logits``, as nnU-Net) or label_scores'."""
    if not as_logits:
        return label_scores(logits, config)
    scores = torch.zeros((logits.shape[0], 118, *logits.shape[2:]))
    scores[:, channel_label_values(config)] = logits.float()
    return scores


def test_gaussian_weights_are_nnunets():
    g = gaussian_importance((32, 24, 16))
    assert g.shape == (32, 24, 16) and g.dtype == torch.float32
    assert g.max().item() == pytest.approx(1.0, abs=1e-6) and g.min().item() > 0
    # symmetric about the centre along every axis, largest in the middle 2 x 2 x 2
    for axis in range(3):
        torch.testing.assert_close(g, g.flip(axis))
    assert g[15:17, 11:13, 7:9].min() == g.max()
    # separable, with sigma = patch / 8 along each axis around the centre (p - 1) / 2
    for axis, p in enumerate((32, 24, 16)):
        line = g.amax(dim=tuple(a for a in range(3) if a != axis)).double()
        offset = torch.arange(p, dtype=torch.float64) - (p - 1) / 2
        bell = torch.exp(-0.5 * (offset / (p / 8)) ** 2)
        torch.testing.assert_close(line, bell / bell.max(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(
        g,
        g.amax(dim=(1, 2))[:, None, None]
        * g.amax(dim=(0, 2))[None, :, None]
        * g.amax(dim=(0, 1))[None, None, :],
    )


@pytest.mark.parametrize(
    ("size", "patch", "overlap"), [(100, 32, 0.5), (61, 32, 0.25), (32, 32, 0.5)]
)
def test_windows_cover_the_axis_with_at_least_the_overlap(size, patch, overlap):
    starts = window_starts(size, patch, overlap)
    assert starts[0] == 0 and starts[-1] == size - patch
    steps = np.diff(starts)
    assert (steps <= patch * (1 - overlap)).all() and (steps > 0).all()
    assert len(starts) == (
        1 if size == patch else int(np.ceil((size - patch) / (patch * (1 - overlap)))) + 1
    )


def test_ct_resampling_is_trilinear_without_a_float_copy_of_the_ct():
    rng = np.random.default_rng(0)
    ct = rng.integers(-1000, 1500, size=(37, 29, 23)).astype(np.int16)
    for shape in ((15, 12, 9), (60, 41, 50), (37, 29, 23)):
        expected = F.interpolate(torch.from_numpy(ct).float()[None, None], size=shape,
                                 mode="trilinear", align_corners=False)[0, 0]  # fmt: skip
        torch.testing.assert_close(resample_ct(ct, shape), expected, rtol=0, atol=0.01)  # HU
    assert grid_shape((512, 512, 300), (0.8, 0.8, 1.5), (3.0, 3.0, 3.0)) == (137, 137, 150)


def test_the_resampled_grid_rounds_as_nnunet_rounds():
    """size x spacing / target and spacing / target x size round a half voxel apart in float:
    (200, 40, 325) at 0.51 mm to (0.8, 0.8, 1.5) was (128, 25, 110) for ctseg and (127, 26,
    111) for nnU-Net (reviewer), so an exported model saw another grid. Swept against
    nnU-Net's own compute_new_shape."""
    resampling = pytest.importorskip("nnunetv2.preprocessing.resampling.default_resampling")
    assert grid_shape((200, 40, 325), (0.51,) * 3, (0.8, 0.8, 1.5)) == (127, 26, 111)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        shape = tuple(int(n) for n in rng.integers(8, 600, 3))
        spacing = tuple(float(s) for s in np.round(rng.uniform(0.3, 5.0, 3), 3))
        target = tuple(float(t) for t in rng.choice([0.8, 1.0, 1.5, 2.0, 3.0, 6.0], 3))
        theirs = resampling.compute_new_shape(shape, spacing, target)
        assert grid_shape(shape, spacing, target) == tuple(int(n) for n in theirs), (shape, spacing)


def test_labels_back_on_the_ct_grid_equal_the_argmax_of_trilinear_scores():
    """Slab by slab, over the channels that can win only, the argmax of the full resampling."""
    torch.manual_seed(1)
    active = torch.arange(0, 118, 4)  # 30 label values
    for sharpness in (3.0, 0.3):  # confident scores, and nearly flat ones
        scores = torch.softmax(torch.randn(30, 9, 8, 6) * sharpness, dim=0)
        for shape in ((40, 31, 20), (9, 8, 6), (5, 4, 11)):
            full = F.interpolate(scores[None].double(), size=shape, mode="trilinear",
                                 align_corners=False)  # fmt: skip
            expected = active[full[0].argmax(dim=0)].numpy().astype(np.uint8)
            got = labels_on_grid(scores.permute(3, 1, 2, 0), shape, active)  # (Z, X, Y, A)
            assert got.dtype == np.uint8 and got.shape == shape
            np.testing.assert_array_equal(got, expected)


def _subject_scores(root, slices=slice(8, 16)):
    """(Z, X, Y, A) scores shaped by a real subject's labels at 3 mm: smooth, confident inside
    structures, mixed only at their boundaries; 12 channels never present."""
    from scipy.ndimage import gaussian_filter

    folder = root / "s0000" / "segmentations"
    labels, k = None, 0
    for path in sorted(folder.glob("*.nii.gz")):
        mask = np.asarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)[:, :, slices] > 0
        labels = np.zeros(mask.shape, np.int64) if labels is None else labels
        if mask.any():  # the structures present are channels 1..k
            k += 1
            labels[mask] = k
    channels = int(labels.max()) + 13
    rng = np.random.default_rng(0)
    logits = np.stack([
        12 * gaussian_filter((labels == k).astype(np.float32), 1.0)
        + gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 2.0)
        for k in range(channels)
    ])  # fmt: skip
    return torch.softmax(torch.from_numpy(logits), dim=0).permute(3, 1, 2, 0).contiguous()


def test_labels_back_from_a_real_subjects_scores_equal_the_full_resampling(s0000_root, monkeypatch):
    """Only boundary cells interpolated, over the channels that may win there, in boxes."""
    from ctseg_core.inference import to_grid

    scores = _subject_scores(s0000_root)  # (8, 122, 101, A) at 3 mm
    shape = (244, 202, 12)  # 1.5 mm in-plane, 2 mm apart
    # the reference in float64: float32 trilinear itself errs by ~1e-6 here, enough to flip ties
    full = F.interpolate(scores.permute(3, 1, 2, 0)[None].double(), size=shape, mode="trilinear",
                         align_corners=False)[0]  # fmt: skip
    active = torch.arange(scores.shape[3])
    expected = full.argmax(dim=0).numpy().astype(np.uint8)
    assert len(np.unique(expected)) > 10

    def refuse(*args):
        raise AssertionError("interpolated whole slices")

    with monkeypatch.context() as patch:
        patch.setattr(to_grid, "_in_slices", refuse)
        np.testing.assert_array_equal(labels_on_grid(scores, shape, active), expected)
    monkeypatch.setattr(to_grid, "MIXED_LIMIT", 0.0)  # every channel, whole slices
    got = labels_on_grid(scores, shape, active)  # F.interpolate in float32: near-ties may flip
    wrong = np.nonzero(got != expected)
    assert len(wrong[0]) <= 3
    at = tuple(torch.from_numpy(w) for w in wrong)
    gap = (
        full[(torch.from_numpy(expected[wrong].astype(np.int64)), *at)]
        - full[(torch.from_numpy(got[wrong].astype(np.int64)), *at)]
    )
    assert (gap.abs() < 1e-5).all()


def test_a_structure_that_wins_only_between_voxels_is_not_left_out():
    """b is second at both model voxels but first halfway between them; d never comes close."""
    column = torch.tensor([[0.50, 0.05], [0.45, 0.45], [0.05, 0.50], [0.0, 0.0]])  # (A, X')
    scores = column.T[None, :, None, :].expand(1, 2, 2, 4).contiguous()  # (Z', X', Y', A)
    source = scores.expand(2, -1, -1, -1)  # one cell of 2 x 2 x 2 corners
    ok = possible_winners(source, source.argmax(dim=3), torch.tensor([[0, 0, 0]]))
    assert ok.tolist() == [[True, True, True, False]]
    labels = labels_on_grid(scores, (8, 2, 1), torch.tensor([1, 2, 3, 4]))
    assert labels[:, 0, 0].tolist() == [1, 1, 2, 2, 2, 2, 3, 3]


@pytest.mark.parametrize("output", ["softmax", "sigmoid"])
def test_sliding_window_reproduces_a_whole_volume_pass_on_one_patch(tmp_path, output):
    ckpt = checkpoint_3d(tmp_path / "m.pth", patch=(32, 24, 16), spacing=(2.0, 2.0, 3.0),
                         output=output, seed=4)  # fmt: skip
    predictor = Predictor([ckpt], device="cpu", batch_slices=2)
    ct = np.random.default_rng(2).integers(-1000, 1000, size=(32, 24, 16)).astype(np.int16)
    scores = predictor.strategy.scores(ct, 2, spacing_mm=(2.0, 2.0, 3.0))  # no resampling
    member = predictor.members[0]
    x = normalize_hu(torch.from_numpy(ct)[None, None], member.config.data.hu_window)
    with torch.inference_mode(), autocast_context(predictor.device, predictor.strategy.amp):
        logits = member.model(x)
    # a softmax model's logits are averaged (nnU-Net's way), a sigmoid model's probabilities
    assert predictor.strategy.averages_logits() == (output == "softmax")
    expected = window_scores(logits, member.config, output == "softmax")[0, predictor.active]
    torch.testing.assert_close(scores, expected.permute(3, 1, 2, 0), rtol=1e-4, atol=1e-5)
    labels = predictor.predict(ct, spacing_mm=(2.0, 2.0, 3.0))
    values = torch.tensor(predictor.active)[expected.argmax(dim=0)].numpy()
    np.testing.assert_array_equal(labels, values)
    assert len(np.unique(labels)) >= 2


@pytest.mark.parametrize("tta", ["none", "mirror", "shift", "mirror unpaired"])
def test_sliding_window_is_the_gaussian_weighted_mean_of_its_windows(tmp_path, tta):
    """Several overlapping windows, with each test-time augmentation: the straightforward
    computation, window by window over all 118 label values, gives the same average of the
    passes' logits. "mirror unpaired": a mirror-trained model predicting kidney_left without
    kidney_right takes the shifted passes (a mirrored pass would give kidney_left, read from
    its partner's channel, nothing)."""
    structures = ["liver", "kidney_left"] if tta == "mirror unpaired" else STRUCTURES
    ckpt = checkpoint_3d(tmp_path / "m.pth", patch=(32, 32, 16), spacing=None, seed=5,
                         mirror=tta.startswith("mirror"), structures=structures)  # fmt: skip
    predictor = Predictor([ckpt], device="cpu", batch_slices=3, tta=tta != "none", overlap=0.4)
    predictor.strategy.amp = None  # float32 on both sides
    assert predictor.strategy.averages_logits()
    if tta == "mirror unpaired":
        assert predictor.strategy.augmentations(predictor.members[0]) == [
            "identity", "shift0", "shift1",
        ]  # fmt: skip
        tta = "shift"
    ct = np.random.default_rng(3).integers(-1000, 1000, size=(45, 38, 23)).astype(np.int16)
    scores = predictor.strategy.scores(ct, 3).permute(3, 1, 2, 0)  # (A, X, Y, Z)
    member = predictor.members[0]
    x = normalize_hu(torch.from_numpy(ct)[None, None], member.config.data.hu_window)
    g = gaussian_importance((32, 32, 16))
    total, weight = torch.zeros((118, *ct.shape)), torch.zeros(ct.shape)
    swap = torch.from_numpy(lr_swap_lut().astype(np.int64))

    def passes(start):  # each pass's window and (118, px, py, pz) scores in the CT's frame
        config, size = member.config, (32, 32, 16)
        shifts = ((2, 2, 2), (-2, -2, -2)) if tta == "shift" else ()
        for s in ((0, 0, 0), *shifts):  # a shifted pass moves its window, as far as it can
            moved = zip(start, s, ct.shape, size, strict=True)
            first = [min(max(a + d, 0), n - p) for a, d, n, p in moved]
            w = tuple(slice(f, f + p) for f, p in zip(first, size, strict=True))
            patch = x[(slice(None), slice(None), *w)]
            yield w, window_scores(member.model(patch), config, True)[0]
            if tta == "mirror":
                mirrored = window_scores(member.model(patch.flip(2)), config, True)[0]
                yield w, mirrored.flip(1)[swap]

    starts = [window_starts(n, p, 0.4) for n, p in zip(ct.shape, (32, 32, 16), strict=True)]
    assert [len(s) for s in starts] == [2, 2, 2]
    with torch.inference_mode():
        for start in itertools.product(*starts):
            for w, one in passes(start):
                total[(slice(None), *w)] += one * g
                weight[w] += g
    expected = (total / weight)[predictor.active]
    # logits reach a few units: float32 convolutions of a batch of 3 windows and of one round
    # differently (up to ~2e-5 here), so the absolute tolerance is that of such values
    assert expected.abs().max() > 1
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(45, 38, 23), (45, 20, 12)])
def test_an_ensemble_is_the_mean_of_its_members_averages(tmp_path, shape):
    """Members with other patches (so other windows) and other test-time passes (a mirror-
    trained one: 2 passes; the other: 3, shifted) count alike: the ensemble's scores are the
    mean of each member's own. They once weighed by each member's windows and passes: a small
    patch's members counted for more, and a model with more passes too. A CT thinner than the
    large patch along y and z (the second shape): each member pads it as it would alone (with
    its own padding value); the small one's windows ran over the large one's padding."""
    spacing = (6.0, 6.0, 6.0)
    small = checkpoint_3d(tmp_path / "a.pth", patch=(16, 16, 8), spacing=spacing, seed=1,
                          mirror=True)  # fmt: skip
    large = checkpoint_3d(tmp_path / "b.pth", patch=(32, 32, 16), spacing=spacing, seed=2,
                          padding="normalised_zero")  # fmt: skip
    ct = np.random.default_rng(7).integers(-1000, 1000, size=shape).astype(np.int16)
    scores = {}
    for name, members in (("a", [small]), ("b", [large]), ("ab", [small, large])):
        predictor = Predictor(members, device="cpu", batch_slices=4, tta=True)
        predictor.strategy.amp = None  # float32
        assert predictor.strategy.averages_logits()
        scores[name] = predictor.strategy.scores(ct, 4, spacing_mm=spacing)
    alone = [Predictor([m], device="cpu", tta=True) for m in (small, large)]
    assert [len(p.strategy.augmentations(p.members[0])) for p in alone] == [2, 3]
    assert (scores["a"] - scores["b"]).abs().max() > 0.1
    torch.testing.assert_close(scores["ab"], (scores["a"] + scores["b"]) / 2, rtol=1e-4, atol=1e-5)


def test_a_shifted_pass_moves_its_window_and_wraps_nothing_around(tmp_path):
    """Shift TTA: a model that labels a voxel liver when tissue lies within 2 slices of it,
    on a CT with tissue in its first two slices only, labels no slice beyond the fourth with
    TTA either; rolling the window (as it once did) put that tissue beside the last slices of
    the window and labelled them too."""
    ckpt = checkpoint_3d(tmp_path / "m.pth", patch=(16, 16, 16), spacing=None, name="test_near3d",
                         structures=["liver", "spleen"])  # fmt: skip
    ct = np.full((24, 16, 16), -1000, dtype=np.int16)  # windows at x 0 and 8, one along z
    ct[:, :, :2] = 60
    for tta in (False, True):
        predictor = Predictor([ckpt], device="cpu", tta=tta, body_crop=False)
        assert predictor.strategy.augmentations(predictor.members[0])[1:] == (
            ["shift0", "shift1"] if tta else []
        )
        liver = predictor.predict(ct) == value_of("liver")
        slices = np.nonzero(liver.any(axis=(0, 1)))[0].tolist()
        assert slices[:2] == [0, 1] and max(slices) <= 3, (tta, slices)
        assert liver[:, :, :2].all()


def test_a_volume_smaller_than_one_patch_is_padded_not_refused(tmp_path):
    ckpt = checkpoint_3d(tmp_path / "m.pth", patch=(32, 32, 16), spacing=(2.0, 2.0, 2.0))
    predictor = Predictor([ckpt], device="cpu")
    ct = np.full((10, 40, 5), 60, dtype=np.int16)
    labels = predictor.predict(ct, spacing_mm=(2.0, 2.0, 2.0))
    assert labels.shape == (10, 40, 5) and labels.dtype == np.uint8
    with pytest.raises(ConfigError, match="give the CT's spacing_mm"):
        predictor.predict(ct)


@pytest.mark.parametrize(
    "padding, hu_mean_std, pad",
    [(None, None, -1.0), ("normalised_zero", None, 0.0), ("normalised_zero", (60.0, 250.0), 0.0)],
)
def test_the_network_sees_the_runs_padding_around_a_ct_smaller_than_a_patch(
    tmp_path, padding, hu_mean_std, pad
):
    """A 10 x 40 x 5 CT in 32 x 32 x 16 windows (two along y), centred: what the network itself
    receives (after a fine-tune's input map) is the CT's normalised voxels in the middle and
    ``pad`` around them: air (-1024 HU -> -1) for a checkpoint whose config predates
    ``data.padding``, nnU-Net's 0 for "normalised_zero", with the window or with (mean, std)."""
    ckpt = checkpoint_3d(tmp_path / "m.pth", spacing=(2.0, 2.0, 2.0), hu_mean_std=hu_mean_std,
                         padding=padding or "air")  # fmt: skip
    if padding is None:  # as checkpoints were written before the setting existed
        saved = torch.load(ckpt, weights_only=True)
        del saved["config"]["data"]["padding"]
        torch.save(saved, ckpt)
    predictor = Predictor([ckpt], device="cpu")
    assert predictor.members[0].config.data.padding == (padding or "air")
    seen = []

    def record(module, args) -> None:  # runs after the input map (hooks run in order)
        seen.append(args[0].float().clone())

    predictor.members[0].model.register_forward_pre_hook(record)
    ct = np.random.default_rng(0).integers(-300, 300, size=(10, 40, 5)).astype(np.int16)
    predictor.predict(ct, spacing_mm=(2.0, 2.0, 2.0))
    x = torch.cat(seen)[:, 0]  # (windows, 32, 32, 16)
    assert x.shape == (2, 32, 32, 16)
    inside = np.zeros((32, 40, 16), dtype=bool)
    inside[11:21, :, 5:10] = True  # (32 - 10) // 2 and (16 - 5) // 2 before the CT
    windows = [inside[:, :32], inside[:, 8:]]  # y starts 0 and 8 (overlap 0.5)
    padding_seen = torch.cat([x[i][torch.from_numpy(~w)] for i, w in enumerate(windows)])
    torch.testing.assert_close(padding_seen, torch.full_like(padding_seen, pad), atol=1e-5, rtol=0)
    mean, std = hu_mean_std or (0.0, 1000.0)  # the window (-1000, 1000): (HU - 0) / 1000
    expected = (torch.from_numpy(ct).float() - mean) / std
    torch.testing.assert_close(x[0, 11:21, :, 5:10], expected[:, :32], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(x[1, 11:21, :, 5:10], expected[:, 8:], atol=1e-5, rtol=1e-5)


def test_a_nan_spacing_or_nan_voxels_are_refused_before_any_window(tmp_path):
    """Through the Python API (files are checked when read): a NaN or inf spacing, and a float
    CT with NaN voxels (NaN passed on to the network and labelled anything)."""
    ckpt = checkpoint_3d(tmp_path / "m.pth", spacing=(2.0, 2.0, 2.0))
    predictor = Predictor([ckpt], device="cpu")
    ct = np.full((20, 20, 10), 40.0, dtype=np.float32)
    for spacing in ((2.0, 2.0, float("nan")), (2.0, float("inf"), 2.0), (0.0, 2.0, 2.0)):
        with pytest.raises(CtsegError, match=r"spacing .* mm must be > 0 and finite"):
            predictor.predict(ct, spacing_mm=spacing)
    ct[:3] = np.nan
    with pytest.raises(CtsegError, match="the CT holds 600 NaN/inf voxels; replace them"):
        predictor.predict(ct, spacing_mm=(2.0, 2.0, 2.0))


def test_resampled_grid_over_the_voxel_limit_refused_in_one_line(tmp_path, monkeypatch):
    ckpt = checkpoint_3d(tmp_path / "m.pth", spacing=(1.0, 1.0, 1.0))
    predictor = Predictor([ckpt], device="cpu")
    monkeypatch.setenv("CTSEG_MAX_VOXELS", str(20 * 20 * 20))
    ct = np.zeros((10, 10, 10), dtype=np.int16)  # 3 mm: 30 x 30 x 30 at 1 mm
    with pytest.raises(
        CtsegError, match=r"would be 30 x 30 x 30 voxels, over the 8,000 voxel limit"
    ):
        predictor.predict(ct, spacing_mm=(3.0, 3.0, 3.0))


def test_mirror_tta_swaps_left_and_right_labels(tmp_path):
    ckpt = checkpoint_3d(tmp_path / "side.pth", patch=(16, 8, 8), spacing=None,
                         structures=["kidney_right", "kidney_left"], name="test_side3d",
                         mirror=True)  # fmt: skip
    ct = np.zeros((16, 8, 8), dtype=np.int16)
    plain = Predictor([ckpt], device="cpu").predict(ct)
    assert (plain[:8] == LABEL_OF["kidney_left"]).all() and (plain[8:] == 0).all()
    predictor = Predictor([ckpt], device="cpu", tta=True)
    assert predictor.strategy.augmentations(predictor.members[0]) == ["identity", "mirror"]
    mirrored = predictor.predict(ct)
    # the mirrored pass puts its "left" on the other side, where it is the right kidney
    assert (mirrored[:8] == LABEL_OF["kidney_left"]).all()
    assert (mirrored[8:] == LABEL_OF["kidney_right"]).all()


def _reoriented_copy(img: nib.Nifti1Image, codes: str, path):
    ornt = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(tuple(codes))
    )
    copy = img.as_reoriented(ornt)
    assert "".join(nib.aff2axcodes(copy.affine)) == codes
    nib.save(copy, str(path))
    return path


def test_3d_predictions_of_ras_las_lps_copies_land_on_the_same_voxels_in_world_space(
    tmp_path, s0000_root
):
    """`ctseg predict` with a 3D checkpoint: resampled to 6 mm and back, on each copy's grid."""
    ckpt = checkpoint_3d(tmp_path / "m.pth", patch=(32, 32, 16), spacing=(6.0, 6.0, 6.0), seed=7)
    img = nib.load(str(s0000_root / "s0000" / "ct.nii.gz"))
    from ctseg_core.cli import main

    canonical = {}
    for codes in ("RAS", "LAS", "LPS"):
        ct_path = _reoriented_copy(img, codes, tmp_path / f"ct_{codes}.nii.gz")
        out = tmp_path / f"labels_{codes}.nii.gz"
        if codes == "LPS":  # the command line, as for a 2D checkpoint
            argv = ["predict", "--ct", str(ct_path), "--checkpoint", str(ckpt), "--out", str(out),
                    "--device", "cpu", "--overlap", "0.25", "--json"]  # fmt: skip
            assert main(argv) == 0
        else:
            predict_file(ct_path, [ckpt], out, device="cpu", overlap=0.25)
        written = nib.load(str(out))
        np.testing.assert_allclose(written.affine, nib.load(str(ct_path)).affine)
        assert written.shape == img.shape
        as_ras = nib.as_closest_canonical(written)
        canonical[codes] = (np.asarray(as_ras.dataobj), as_ras.affine)
    labels, affine = canonical["RAS"]
    counts = np.bincount(labels.ravel(), minlength=118)
    assert (counts > 0.01 * labels.size).sum() >= 2  # not one label everywhere
    for codes in ("LAS", "LPS"):
        np.testing.assert_array_equal(canonical[codes][0], labels)
        np.testing.assert_allclose(canonical[codes][1], affine)
    # the same labels as the predictor gives the canonical CT directly
    predictor = Predictor([ckpt], device="cpu", overlap=0.25)
    direct = predictor.predict(load_ct(s0000_root / "s0000" / "ct.nii.gz"))
    np.testing.assert_array_equal(direct, labels)


def test_patch_memory_estimate_counts_the_score_sums_at_the_model_spacing(tmp_path):
    ckpt = checkpoint_3d(tmp_path / "m.pth", patch=(32, 32, 16), spacing=(3.0, 3.0, 3.0))
    predictor = Predictor([ckpt], device="cpu", batch_slices=1)
    ct_shape, spacing = (512, 512, 300), (0.8, 0.8, 1.5)
    estimate = predictor.estimate_bytes(ct_shape, 1, spacing)
    sums = 6 * 137 * 137 * 150 * 4  # 6 active label values at 3 mm
    assert sums + 512 * 512 * 300 * 6 < estimate < sums + 512 * 512 * 300 * 6 + 600e6
    # a finer model spacing holds more score sums
    assert predictor.estimate_bytes(ct_shape, 1, (3.0, 3.0, 6.0)) > estimate


def test_score_sums_that_do_not_fit_the_gpu_go_to_host_memory_before_a_refusal(tmp_path):
    """On a GPU (``device_limit_bytes`` stands in for its free memory here) the batch is lowered
    first, then the score sums are kept in host memory (nnU-Net's fallback) at the largest batch
    that fits, then the CT is refused in one line; the labels are those of sums on the device."""
    ckpt = checkpoint_3d(tmp_path / "m.pth", patch=(32, 24, 16), spacing=(2.0, 2.0, 3.0), seed=4)
    predictor = Predictor([ckpt], device="cpu", batch_slices=4)
    strategy, host = predictor.strategy, 10**13
    ct = np.random.default_rng(2).integers(-1000, 1000, size=(64, 64, 40)).astype(np.int16)
    spacing = (1.0, 1.0, 1.5)
    need = {}
    for host_sums in (False, True):
        strategy.host_sums = host_sums
        need[host_sums] = {b: strategy.device_bytes(ct.shape, b, spacing) for b in (4, 2, 1)}
    assert need[False][4] > need[False][2] > need[False][1] > need[True][1]
    seen = set()
    for limit in np.linspace(need[True][1], need[False][4], 200).astype(np.int64):
        batch = predictor.check_memory(ct.shape, host, spacing, int(limit))
        sums = strategy.host_sums
        seen.add((batch, sums))
        assert need[sums][batch] <= limit  # it fits
        assert batch == 4 or need[sums][2 * batch] > limit  # the largest batch that does
        assert not sums or need[False][1] > limit  # the sums leave only when they must
    assert seen == {(4, False), (2, False), (1, False), (1, True)}
    # even one patch on the GPU, the sums on the host: said of the network, not of the CT
    with pytest.raises(CtsegError, match=r"^the network on one patch needs about 0\.\d GB of "
                       r"cpu memory, more than the 0\.\d GB it can spare now"):  # fmt: skip
        predictor.check_memory(ct.shape, host, spacing, need[True][1] - 1)
    expected = predictor.predict(ct, spacing_mm=spacing)  # the sums where the device is
    assert not strategy.host_sums and len(np.unique(expected)) >= 2
    assert predictor.check_memory(ct.shape, host, spacing, need[True][1])
    assert strategy.host_sums
    np.testing.assert_array_equal(strategy.label(ct, 1, None, spacing), expected)


def test_settings_a_model_does_not_use_and_models_of_two_kinds_are_said(tmp_path, s0000_root):
    """A 2D model given a 3D model's overlap or no body crop: labelled, and said that they were
    not used (they were ignored without a word); a 2D and a 3D checkpoint in one ensemble:
    refused naming each file's kind (it named neither); an nnU-Net fold's checkpoint given as
    a ctseg checkpoint: refused pointing to its model folder."""
    from test_inference import make_checkpoint

    flat = make_checkpoint(tmp_path / "flat.pth", ["liver"])
    deep = checkpoint_3d(tmp_path / "deep.pth", structures=["liver"])
    ct = s0000_root / "s0000" / "ct.nii.gz"
    summary = predict_file(ct, [flat], tmp_path / "p.nii.gz", overlap=0.8, body_crop=False)
    assert (
        f"overlap 0.8 and no body crop: for 3D models only, and {flat} is 2D; not used"
        in summary["warnings"]
    )
    assert Predictor([deep], device="cpu", overlap=0.8, body_crop=False).notes == []
    with pytest.raises(ConfigError) as refused:
        Predictor([flat, deep], device="cpu")
    assert str(refused.value) == (
        f"{flat} is 2D, {deep} is 3D: an ensemble needs checkpoints of one kind"
    )
    pytest.importorskip("nnunetv2")
    from nnunet_kit import write_model_folder

    model = write_model_folder(tmp_path / "nn", "3d_fullres", [4.5, 5.0, 4.0], [16, 32, 32],
                               [0, 2, 1])  # fmt: skip
    with pytest.raises(CtsegError, match=rf"give its model folder instead \(--model {model}\)$"):
        Predictor([model / "fold_0" / "checkpoint_final.pth"], device="cpu")
    # an nnU-Net model runs as nnU-Net's predictor does: the settings said unused, not dropped
    summary = predict_file(ct, [], tmp_path / "n.nii.gz", model=model, overlap=0.3,
                           body_crop=False, device="cpu")  # fmt: skip
    assert (
        f"overlap 0.3 and no body crop: for ctseg's 3D checkpoints only; {model} runs as "
        "nnU-Net's predictor runs it (overlap 0.5, the whole CT): not used"
    ) in summary["warnings"]
    from ctseg_core.evaluation.evaluate import evaluate_predictions

    results = evaluate_predictions(s0000_root, "train", None, tmp_path / "ev", model=model,
                                   body_crop=False, device="cpu", report=False,
                                   cache_dir=tmp_path / "cache")  # fmt: skip
    assert (
        f"no body crop: for ctseg's 3D checkpoints only; {model} runs as nnU-Net's predictor "
        "runs it (the whole CT): not used"
    ) in results.attrs["notes"]
