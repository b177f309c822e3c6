"""How a CT is cut into model inputs and put back together: one strategy per kind of model.

A strategy is built with its ``Predictor`` (members, device, TTA, active label values) and
offers ``estimate_bytes(shape_xyz, batch, spacing_mm) -> int`` and ``label(ct_xyz, batch,
progress, spacing_mm) -> (X, Y, Z) uint8``. A model's registry entry names its strategy
(``ModelSpec.inference``): "slices" here, "patches" (sliding-window patches for a volumetric
model) in :mod:`.patches`.

``slices``: batches of axial slices (with their 2.5D context when the model was trained so),
each normalised and resized to the model's target size, scored (``label_scores``: (B, 118, h,
w) per label value), averaged over test-time augmentations and members; then, slice by slice,
the channels that can win anywhere (``candidate_channels``) are brought back to the CT's
in-plane size one at a time and turned into labels with a running argmax (``upsampled_argmax``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.slices import context_indices, normalize_hu, resize_batch
from ..labels import NUM_LABELS, lr_swap_lut, mirror_partners_present
from ..models.head import label_scores
from .patches import PatchStrategy

#: scores (probabilities, at most 1) ruled out as winners must be this far below (x max score):
#: float32 bilinear interpolation is off its exact value by a few 1e-7 (see candidate_channels)
_MARGIN = 1e-5
#: TTA shifts (pixels at the model's resolution) for models trained without left/right mirroring
_TTA_SHIFTS = ((2, 2), (-2, -2))


def _moved(t: torch.Tensor, dh: int, dw: int, fill: float | None = None) -> torch.Tensor:
    """(B, C, H, W) ``t`` moved ``dh`` rows and ``dw`` columns (content at (i, j) goes to
    (i + dh, j + dw)); the rows and columns it uncovers repeat the edge, or hold ``fill``."""
    ph, pw = abs(dh), abs(dw)
    if fill is None:
        padded = F.pad(t, (pw, pw, ph, ph), mode="replicate")
    else:
        padded = F.pad(t, (pw, pw, ph, ph), value=fill)
    h, w = t.shape[-2:]
    return padded[..., ph - dh : ph - dh + h, pw - dw : pw - dw + w]


def _corner_offsets(h: int, w: int) -> list[tuple[slice, slice]]:
    """The 4 corners of the interpolation cells of an (h, w) map, as slices giving (h - 1, w - 1)
    views: rows r, r + 1 and columns c, c + 1 of cell (r, c) (an axis of size 1 is its own cell)."""
    rows = (slice(None, -1), slice(1, None)) if h > 1 else (slice(None),)
    cols = (slice(None, -1), slice(1, None)) if w > 1 else (slice(None),)
    return [(r, c) for r in rows for c in cols]


def candidate_channels(scores: torch.Tensor) -> torch.Tensor:
    """(B, A, h, w) or (A, h, w) float32 scores -> (B, A) or (A,) bool: the channels that can be
    the argmax somewhere in their slice after bilinear upsampling (align_corners=False, any
    output size); the others cannot.

    Why: every output pixel of a bilinear resize is a convex combination (weights >= 0, sum 1)
    of the 4 corners of one cell of input pixels, rows r, r + 1 and columns c, c + 1 (at the
    borders an index is clamped and the far row or column gets weight 0: still a combination
    of one such cell's corners; also when shrinking without antialiasing), with the same
    weights for every channel. So if a fixed mix of channels (weights a_j >= 0, sum 1) beats
    channel k by more than a margin at each of the 4 corners, then at every pixel of the cell
    the same mix of the interpolated channels beats k by more than the margin (a convex
    combination of differences above the margin is above it), and so does the best channel
    of the mix. In float32 each interpolated value is within a few 1e-7 (x the largest score)
    of its exact value (weights and products rounded to 2^-24, weights summing to 1 within
    2^-23), far inside the 1e-5 margin, so k stays strictly below that channel and is never
    the argmax, ties included. A channel k whose largest corner score in a cell is below the
    cell's ``floor`` minus the margin therefore cannot win there, the floor being the larger of

    - the smallest corner score of one corner's argmax j (the mix is j alone; where the four
      corners share one argmax c, k must reach c's smallest corner score to win), and
    - for scores >= 0: the smallest corner maximum divided by the number n of distinct corner
      argmaxes (their mix in equal parts is at each corner at least its maximum / n): e.g.
      between two structures, half the weaker side's score.

    Per pixel, a channel is kept if its score reaches (minus the margin) the lowest floor of
    the cells the pixel is a corner of; kept anywhere in the slice, it is upsampled. The argmax
    over the kept channels, in their order, is then exactly the argmax over all of them (the
    first maximum is always a kept channel). Not-finite scores keep every channel.
    """
    single = scores.dim() == 3
    if single:
        scores = scores[None]
    batch, num, h, w = scores.shape
    top, winner = scores.max(dim=1)  # (B, h, w); NaN and +inf show in top
    high, low = float(top.amax()), float(scores.amin())
    if num < 2 or not np.isfinite(high) or not np.isfinite(low):
        keep = torch.ones((batch, num), dtype=torch.bool, device=scores.device)
        return keep[0] if single else keep
    margin = _MARGIN * max(1.0, abs(high), abs(low))
    offsets = _corner_offsets(h, w)
    winners = [winner[:, r, c] for r, c in offsets]  # (B, h - 1, w - 1) each
    floor = None
    for j in winners:  # each corner's argmax alone: its smallest corner score
        lowest = None
        for r, c in offsets:
            value = scores[:, :, r, c].gather(1, j[:, None])[:, 0]
            lowest = value if lowest is None else torch.minimum(lowest, value)
        floor = lowest if floor is None else torch.maximum(floor, lowest)
    if low >= 0:  # the distinct corner argmaxes mixed in equal parts
        distinct = torch.ones(floor.shape, dtype=floor.dtype, device=floor.device)
        for i, other in enumerate(winners[1:]):
            new = torch.ones_like(other, dtype=torch.bool)
            for earlier in winners[: i + 1]:
                new &= other != earlier
            distinct += new
        smallest_top = top[:, offsets[0][0], offsets[0][1]]
        for r, c in offsets[1:]:
            smallest_top = torch.minimum(smallest_top, top[:, r, c])
        floor = torch.maximum(floor, smallest_top / distinct)
    pixel_floor = torch.full(top.shape, float("inf"), dtype=floor.dtype, device=floor.device)
    for r, c in offsets:  # the lowest floor of the cells each pixel is a corner of
        pixel_floor[:, r, c] = torch.minimum(pixel_floor[:, r, c], floor)
    keep = (scores - pixel_floor[:, None]).flatten(2).amax(dim=2) >= -margin
    return keep[0] if single else keep


def upsampled_argmax(scores: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, A, h, w) or (A, h, w) float32 scores (A <= 256) -> (B, X, Y) or (X, Y) uint8 channel
    index: the argmax over the channels (the first on ties) of the scores resized bilinearly to
    ``size`` (align_corners False), computed from the channels that are ``candidate_channels``
    in some slice of the batch, one channel (of all slices) at a time, with a running maximum.

    One channel at a time, because ``F.interpolate`` can give a channel a value one unit in the
    last place apart depending on its place in the batch (measured, torch 2.13 CPU: 10 channels
    from 9 x 3 to 28 x 10, two channels with equal inputs came out 0.72500002 and 0.72500008 in
    one call), which would break exact ties by position; resized in calls of the same shape, a
    slice's channels all sit at the same place, equal inputs give equal outputs and a tie goes
    to the first channel, as ``argmax`` does (NaN: the first NaN).
    """
    single = scores.dim() == 3
    if single:
        scores = scores[None]
    keep = candidate_channels(scores).any(dim=0).nonzero().flatten().tolist()
    index = torch.full((scores.shape[0], *size), keep[0], dtype=torch.uint8, device=scores.device)
    finite = bool(torch.isfinite(scores.amax()) & torch.isfinite(scores.amin()))
    best = None
    for channel in keep if len(keep) > 1 else []:  # one channel: it wins everywhere
        value = F.interpolate(scores[:, channel : channel + 1], size=size, mode="bilinear",
                              align_corners=False)[:, 0]  # fmt: skip
        if best is None:
            best = value
            continue
        better = value > best  # ties keep the earlier channel
        if not finite:  # argmax takes the first NaN as the maximum
            better |= value.isnan() & ~best.isnan()
        torch.maximum(best, value, out=best)  # NaN propagates, as in argmax
        index.masked_fill_(better, channel)
    return index[0] if single else index


class SliceStrategy:
    """Batches of axial slices through a 2D or 2.5D model (see the module doc)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        # scores of all members are averaged at the largest target size
        members = predictor.members
        self.work_size = tuple(max(m.target_size[i] for m in members) for i in range(2))

    def augmentations(self, member) -> list[str]:
        """The test-time augmentations of ``member`` ("identity" alone without TTA): as
        ``PatchStrategy.augmentations``."""
        if not self.predictor.tta:
            return ["identity"]
        data = member.config.data
        if getattr(data, "mirror", False) and mirror_partners_present(data.structures):
            return ["identity", "mirror"]
        return ["identity", *(f"shift{i}" for i in range(len(_TTA_SHIFTS)))]

    def estimate_bytes(self, shape_xyz: Sequence[int], batch_slices: int,
                       spacing_mm: Sequence[float] | None = None) -> int:  # fmt: skip
        """Peak memory (bytes) of labelling a CT of ``shape_xyz``, an estimate (any spacing).

        Volume terms: the int16 CT and the uint8 labels (plus a copy of each for reorientation).
        Batch terms: the slices read and normalised (int16 and float32 at the CT's size), the
        scores at the working size (one, plus accumulator and resize buffer,
        plus the candidate search's difference to the floor, and a dozen (h, w) maps per slice
        for it), the upsampling at the CT's size (per slice: a resized channel, the running
        maximum, a mask, the channel index and the labels) and the model's activations (about
        six float maps of the first U-Net level per slice).
        """
        x, y, z = (int(s) for s in shape_xyz)
        b = int(batch_slices)
        h, w = self.work_size
        n_active = len(self.predictor.active)
        volume = x * y * z * (2 + 2 + 1 + 1)
        scores = (3 * NUM_LABELS + n_active + 12) * b * h * w * 4
        upsample = (4 + 4 + 1 + 1 + 1) * b * x * y
        width = max(int(m.config.model.features[0]) for m in self.predictor.members)
        context = max(m.context for m in self.predictor.members)
        activations = b * h * w * 4 * (6 * width + 2 * context)
        inputs = b * context * x * y * (2 + 4)
        return volume + inputs + scores + upsample + activations

    def device_bytes(self, shape_xyz: Sequence[int], batch_slices: int,
                     spacing_mm: Sequence[float] | None = None) -> int:  # fmt: skip
        """The part of ``estimate_bytes`` on the predictor's device (a GPU's): the batch's
        resized inputs, scores, upsampling and activations (the volumes stay in host memory)."""
        x, y, z = (int(s) for s in shape_xyz)
        h, w = self.work_size
        context = max(m.context for m in self.predictor.members)
        host = x * y * z * 6 + int(batch_slices) * context * x * y * 6
        resized = int(batch_slices) * context * h * w * 4
        return self.estimate_bytes(shape_xyz, batch_slices, spacing_mm) - host + resized

    @torch.inference_mode()
    def _batch_scores(self, ct_xyz: np.ndarray, zs: list[int]) -> torch.Tensor:
        """(B, A, h, w) float32 scores of the active label values: the mean over the members of
        each member's average over its TTA passes (members with more passes count alike; a
        pixel counts the passes that saw it, see ``_scores``)."""
        total = None
        members = self.predictor.members
        num_slices = ct_xyz.shape[2]
        for member in members:
            index = [i for z in zs for i in context_indices(z, num_slices, member.context)]
            stack = np.ascontiguousarray(np.moveaxis(ct_xyz[:, :, index], 2, 0))  # (B*C, X, Y)
            x = torch.from_numpy(stack).reshape(len(zs), member.context, *stack.shape[1:])
            x = normalize_hu(x, member.config.data.hu_window)
            x = resize_batch(x, member.target_size).to(self.predictor.device)
            summed, seen = None, 0.0
            for aug in self.augmentations(member):
                scores, covered = self._scores(member, x, aug)
                if len(self.predictor.active) < scores.shape[1]:
                    scores = scores[:, self.predictor.active]
                if covered is not None:
                    scores = scores.mul_(covered)
                summed = scores if summed is None else summed.add_(scores)
                seen = seen + (1.0 if covered is None else covered)
            scores = summed.div_(seen) if torch.is_tensor(seen) else summed.mul_(1.0 / seen)
            if scores.shape[-2:] != self.work_size:
                scores = F.interpolate(scores, size=self.work_size, mode="bilinear",
                                       align_corners=False)  # fmt: skip
            scores = scores.mul_(1.0 / len(members))
            total = scores if total is None else total.add_(scores)
        return total

    def _scores(
        self, member, x: torch.Tensor, aug: str
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, K, h, w) scores of one pass and the (1, 1, h, w) pixels it saw (None: all).

        A shifted pass moves the slice by a few pixels, its edge repeated into the side it
        uncovers, and moves the scores back: the pixels pushed out of the slice get no score
        from it (rolling the slice instead put the far edge's anatomy beside the near one).
        """
        if aug == "identity":
            return label_scores(member.model(x), member.config), None
        if aug == "mirror":
            # H is the canonical x axis (patient left/right): flip, score, flip back, and give
            # each left/right label the score its mirror partner got.
            scores = label_scores(member.model(torch.flip(x, dims=[2])), member.config)
            swap = lr_swap_lut(member.config.data.structures)
            lut = torch.from_numpy(swap.astype(np.int64)).to(scores.device)
            return torch.flip(scores, dims=[2])[:, lut], None
        dh, dw = _TTA_SHIFTS[int(aug.removeprefix("shift"))]
        scores = label_scores(member.model(_moved(x, dh, dw)), member.config)
        covered = torch.ones((1, 1, *x.shape[-2:]), device=scores.device)
        # the pixels pushed out hold 0 (weight 0 too): an edge NaN stays where it was
        return _moved(scores, -dh, -dw, 0.0), _moved(_moved(covered, dh, dw, 0.0), -dh, -dw, 0.0)

    @torch.inference_mode()
    def _to_labels(self, scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(B, A, h, w) scores -> (B, X, Y) uint8 label values at the CT's in-plane size.

        ``upsampled_argmax``: the labels of bilinear upsampling of all A channels then an argmax,
        from only the channels that can win in some slice of the batch; the largest buffers are
        a few (B, X, Y) maps, and a batch upsamples a handful of channels instead of 118.
        """
        lut = np.asarray(self.predictor.active, dtype=np.uint8)
        if tuple(scores.shape[-2:]) == size:
            return lut[scores.argmax(dim=1).cpu().numpy()]
        return lut[upsampled_argmax(scores, size).cpu().numpy()]

    def label(
        self,
        ct_xyz: np.ndarray,
        batch: int,
        progress: Callable[[int, int, str], None] | None,
        spacing_mm: Sequence[float] | None = None,
    ) -> np.ndarray:
        """(X, Y, Z) int16 HU -> (X, Y, Z) uint8 labels, ``batch`` slices at a time (the
        spacing is not needed); ``progress(done_slices, total_slices, "slices")`` after each batch."""
        x_size, y_size, num_slices = ct_xyz.shape
        labels = np.zeros(ct_xyz.shape, dtype=np.uint8)
        for start in range(0, num_slices, batch):
            zs = list(range(start, min(start + batch, num_slices)))
            scores = self._batch_scores(ct_xyz, zs)
            labels[:, :, zs[0] : zs[-1] + 1] = np.moveaxis(
                self._to_labels(scores, (x_size, y_size)), 0, 2
            )
            del scores
            if progress:
                progress(zs[-1] + 1, num_slices, "slices")
        return labels


#: strategy name (``ModelSpec.inference``) -> class
STRATEGIES: dict[str, type] = {"slices": SliceStrategy, "patches": PatchStrategy}
