"""Scores to labels at the CT's size: only the channels that can win are upsampled, and the labels
are exactly those of upsampling every active channel bilinearly and taking the argmax.

The reference below resizes each channel on its own: ``F.interpolate`` can give two channels with
equal inputs values one unit in the last place apart when they sit at different places of one
batch, so "all channels in one call" breaks exact ties by position, not by channel order."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctseg_core.config import DataConfig, ModelConfig, RunConfig
from ctseg_core.data.slices import normalize_hu, resize_batch
from ctseg_core.data.volume import load_ct
from ctseg_core.inference.predictor import Predictor
from ctseg_core.inference.strategies import candidate_channels, upsampled_argmax
from ctseg_core.labels import LABEL_OF
from ctseg_core.models import build_model, register
from ctseg_core.models.checkpoint import save_checkpoint
from ctseg_core.models.head import label_scores

torch.set_num_threads(1)


def resized(scores: torch.Tensor, size) -> torch.Tensor:
    """(A, h, w) -> (A, X, Y): each channel resized bilinearly on its own."""
    return torch.stack([F.interpolate(c[None, None], size=size, mode="bilinear",
                                      align_corners=False)[0, 0] for c in scores])  # fmt: skip


def reference_argmax(scores: torch.Tensor, size) -> torch.Tensor:
    """Every channel upsampled, then argmax (the first channel on ties, the first NaN)."""
    return resized(scores, size).max(dim=0).indices  # as argmax, faster on a leading axis


def random_scores(rng: torch.Generator, kind: str, a: int, h: int, w: int) -> torch.Tensor:
    if kind == "ties":  # three levels only: exact ties everywhere, at corners and after resizing
        return torch.randint(0, 3, (a, h, w), generator=rng).float() / 2
    if kind == "noise":
        return torch.rand(a, h, w, generator=rng)
    # smooth maps like a network's: few winners per region, many channels that never win
    coarse = torch.rand(1, a, 3, 3, generator=rng) ** 3
    smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0]
    return (smooth * 4).round() / 4 if kind == "smooth_ties" else smooth


SIZES = [  # (h, w) -> (X, Y): integer, non-integer, non-square, shrinking, a single row/column
    ((8, 8), (32, 32)),
    ((13, 17), (50, 41)),
    ((12, 9), (12, 30)),
    ((20, 20), (15, 27)),
    ((1, 7), (5, 20)),
    ((6, 1), (19, 1)),
]


@pytest.mark.parametrize("kind", ["ties", "noise", "smooth", "smooth_ties"])
def test_upsampled_argmax_is_the_argmax_of_all_channels_upsampled(kind):
    rng = torch.Generator().manual_seed(7)
    dropped = 0
    for trial in range(40):
        (h, w), size = SIZES[trial % len(SIZES)]
        scores = random_scores(rng, kind, 2 + trial % 11, h, w)
        got = upsampled_argmax(scores, size)
        assert got.dtype == torch.uint8 and tuple(got.shape) == size
        assert torch.equal(got.long(), reference_argmax(scores, size)), (kind, trial)
        dropped += int((~candidate_channels(scores)).sum())
    if kind.startswith("smooth"):
        assert dropped > 20  # channels were really skipped, not all upsampled


def test_a_batch_upsamples_the_union_of_its_slices_candidates_with_the_same_labels():
    rng = torch.Generator().manual_seed(5)
    for (h, w), size in SIZES:
        batch = torch.stack([random_scores(rng, kind, 9, h, w)
                             for kind in ["smooth", "smooth_ties", "ties", "smooth"]])  # fmt: skip
        got = upsampled_argmax(batch, size)
        assert tuple(got.shape) == (4, *size)
        for b, scores in enumerate(batch):
            assert torch.equal(got[b].long(), reference_argmax(scores, size))
        per_slice = candidate_channels(batch)
        assert torch.equal(per_slice[1], candidate_channels(batch[1]))


def test_not_finite_scores_keep_every_channel_and_argmax_semantics():
    rng = torch.Generator().manual_seed(3)
    scores = torch.rand(6, 9, 11, generator=rng)
    scores[1, 2:4, 3] = float("nan")
    scores[4, 7, 1:5] = float("inf")
    scores[2, 0, :] = -float("inf")
    assert bool(candidate_channels(scores).all())
    for size in [(30, 40), (9, 25)]:
        assert torch.equal(upsampled_argmax(scores, size).long(), reference_argmax(scores, size))


def test_a_cell_whose_four_corners_share_one_argmax_keeps_it_after_bilinear_upsampling():
    """The claim ``candidate_channels`` rests on: each output pixel is a convex combination of
    one 2 x 2 cell of input pixels, so a channel ahead at all four corners is ahead there.
    Nearest-neighbour upsampling of the low-resolution argmax differs from the exact labels
    only in the other cells (the band around label boundaries)."""
    rng = torch.Generator().manual_seed(11)
    scores = random_scores(rng, "smooth", 6, 12, 10)
    winner = scores.argmax(dim=0)
    ahead = (scores >= scores.amax(dim=0) - 1e-5).sum(dim=0) == 1
    for size in [(48, 40), (37, 53)]:
        labels = reference_argmax(scores, size)

        def cell(n_in, n_out):  # first input index of each output's cell, as F.interpolate
            src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
            first = np.minimum(np.floor(src).astype(int), n_in - 2)
            clear = np.abs(src - np.round(src)) > 1e-4  # away from rounding ambiguity
            return first, clear

        rows, rows_clear = cell(12, size[0])
        cols, cols_clear = cell(10, size[1])
        r, c = np.ix_(rows, cols)
        corners = [winner[r + i, c + j].numpy() for i in (0, 1) for j in (0, 1)]
        corners_ahead = [ahead[r + i, c + j].numpy() for i in (0, 1) for j in (0, 1)]
        uniform = np.logical_and.reduce([k == corners[0] for k in corners] + corners_ahead)
        uniform &= rows_clear[:, None] & cols_clear[None, :]
        assert 0.3 < uniform.mean() < 0.95  # both kinds of cells occur
        assert np.array_equal(labels.numpy()[uniform], corners[0][uniform])
        nearest = F.interpolate(winner[None, None].float(), size=size, mode="nearest")[0, 0]
        differs = nearest.long().numpy() != labels.numpy()
        assert differs.any() and not (differs & uniform).any()


class HUBands(nn.Module):
    """A rule, not a learned model: softmax logits peaking at tissue HU values (air, fat, soft
    tissue, contrast, bone, dense bone) on the first 6 of 118 channels; the other channels get
    low, slowly varying logits that rarely or never win. Boundaries as sharp as a trained
    model's, on real anatomy."""

    centres = torch.tensor([-0.8, -0.1, 0.04, 0.15, 0.4, 0.9]).view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hu = x[:, :1]
        bands = -(((hu - self.centres) / 0.12) ** 2)
        rest = -14 + torch.sin(torch.arange(112.0).view(1, -1, 1, 1)) * (2 + hu)
        return torch.cat([bands, rest.expand(-1, -1, *hu.shape[2:])], dim=1)


register("test_hu_bands")(lambda cfg: HUBands())


def checkpoint(path, name: str, target) -> str:
    cfg = RunConfig(
        data=DataConfig(target_size=target, structures=list(LABEL_OF)),
        model=ModelConfig(name=name, features=[8, 16], bottleneck=16),
    )
    torch.manual_seed(0)
    save_checkpoint(path, build_model(cfg.model), config=cfg)
    return path


@pytest.mark.parametrize("name", ["unet", "test_hu_bands"])
@pytest.mark.parametrize("target", [(64, 64), (60, 44), (128, 96)])
def test_predictor_labels_equal_the_reference_on_a_real_ct(tmp_path, s0000_root, name, target):
    """10 slices of s0000's 122 x 101 CT (non-square; from 64 x 64, 60 x 44 and 128 x 96: factors
    1.9 x 1.6, 2.03 x 2.3, and 128 -> 122 shrinking)."""
    ct = np.ascontiguousarray(load_ct(s0000_root / "s0000" / "ct.nii.gz").array[:, :, 10:20])
    predictor = Predictor([checkpoint(tmp_path / "m.pth", name, target)], device="cpu")
    member = predictor.members[0]
    active = np.asarray(predictor.active)
    got = predictor.predict(ct)

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(ct, 2, 0)))[:, None]
        x = resize_batch(normalize_hu(x, member.config.data.hu_window), target)
        scores = label_scores(member.model(x), member.config)[:, active]
        size = ct.shape[:2]
        each = np.stack([active[reference_argmax(s, size).numpy()] for s in scores], axis=-1)
        at_once = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        at_once = np.moveaxis(active[at_once.max(dim=1).indices.numpy()], 0, 2)
        kept = [int(candidate_channels(s).sum()) for s in scores]
        winners = [len(np.unique(s.argmax(dim=0))) for s in scores]

    assert got.dtype == np.uint8 and got.shape == ct.shape
    assert np.array_equal(got, each)
    assert np.array_equal(got, at_once)  # no exact ties here: the old way's labels too
    assert all(w <= k for w, k in zip(winners, kept, strict=True))
    assert max(kept) < len(active) / 4  # most of the 118 channels are never upsampled
    if name == "test_hu_bands":
        assert len(np.unique(got)) >= 5  # several structures with real boundaries
