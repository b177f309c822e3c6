"""Scores on a model's grid -> labels on the CT's grid: trilinear resampling and argmax, a slab
of output slices at a time, without ever holding every channel at the CT's resolution.

The labels are those of ``F.interpolate(scores, size, mode="trilinear", align_corners=False)
.argmax()`` up to float rounding (ties go to the lower channel, as argmax), computed with far
less work (118 channels at the CT's size would be 37 GB and ~9 billion interpolations for a
512 x 512 x 300 CT):

- a cell of 2 x 2 x 2 neighbouring model voxels whose corners share their largest channel
  keeps it everywhere inside (the interpolated difference of two channels keeps the sign it has
  at every corner), so its output voxels take that label without interpolating;
- in the other cells (boundaries), a channel can win only if, for each corner's winner b, it
  reaches b's score at some corner (else it stays below b throughout the cell): only such
  channels are interpolated, each over the box of the cells where it may win, or all of them
  over whole slices (``F.interpolate``, a few channels at a time) when those boxes add up to
  more than ``BOX_LIMIT`` slices' worth, and all channels when more than ``MIXED_LIMIT`` of
  the cells are mixed (an untrained model).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.resample import interpolation_matrix, linear_weights

#: values of the largest slab buffers (64 MiB as float32)
SLAB_VALUES = 16 * 2**20
#: boxes adding up to more than this many whole slices are interpolated slice-wide instead
BOX_LIMIT = 6
#: a slab with a larger share of mixed cells interpolates every channel slice-wide
MIXED_LIMIT = 0.5
#: channels interpolated slice-wide at once; mixed cells tested at once
_CHANNELS, _CELLS = 16, 8192
_CORNERS = [(dz, dx, dy) for dz in (0, 1) for dx in (0, 1) for dy in (0, 1)]


def over_cells(op, t: torch.Tensor) -> torch.Tensor:
    """``op`` (torch.maximum, torch.minimum) over each 2 x 2 x 2 cell of neighbouring voxels of
    a (n, ..., X, Y) tensor, z first: (n-1, ..., X-1, Y-1)."""
    t = op(t[:-1], t[1:])
    t = op(t[..., :-1, :], t[..., 1:, :])
    return op(t[..., :-1], t[..., 1:])


def possible_winners(
    channel_last: torch.Tensor, winner: torch.Tensor, cells: torch.Tensor
) -> torch.Tensor:
    """(M, A) bool: channels that may be the largest somewhere in each of M mixed cells
    (``cells``: (M, 3) lower corners z, x, y) of (n, X', Y', A) scores, channels last, whose
    corner winners are ``winner`` (n, X', Y').

    A channel below a rival at every corner stays below it throughout the cell; the rivals
    tested are the winner of the first corner and of the first corner another channel wins.
    """
    z, x, y = cells.unbind(1)
    winners = torch.stack([winner[z + a, x + b, y + c] for a, b, c in _CORNERS], 1)  # (M, 8)
    other = (winners != winners[:, :1]).to(torch.uint8).argmax(dim=1, keepdim=True)
    rivals = torch.cat([winners[:, :1], winners.gather(1, other)], 1)  # (M, 2)
    ok = torch.zeros((len(cells), 2, channel_last.shape[3]), dtype=torch.bool, device=z.device)
    for a, b, c in _CORNERS:
        corner = channel_last[z + a, x + b, y + c]  # (M, A)
        ok |= corner[:, None, :] >= corner.gather(1, rivals)[:, :, None]
    return ok.all(dim=1)


class _Axis:
    """An in-plane axis: linear weights, the cell of each output pixel and the interpolation
    matrix; an axis of one model voxel is read as two equal ones."""

    def __init__(self, n_in: int, n_out: int, device) -> None:
        n_in = max(2, n_in)
        self.lower, self.upper, self.weight = linear_weights(n_in, n_out, device)
        self.cell = self.lower.clamp(max=n_in - 2)
        self.matrix = interpolation_matrix(n_in, n_out, device).T.contiguous()  # (n_in, n_out)


def _span(marked: torch.Tensor, cell_of: torch.Tensor) -> tuple[int, int, int, int]:
    """(first output, end output, first source, end source) along an axis covering the cells
    marked (n_in - 1,) bool; ``cell_of``: (n_out,) the cell of each output pixel."""
    at = torch.nonzero(marked).flatten()
    first, last = int(at[0]), int(at[-1])
    o0 = int(torch.searchsorted(cell_of, first))
    o1 = int(torch.searchsorted(cell_of, last, right=True))
    return o0, o1, first, last + 2


def _in_boxes(part, channels, rows, cols, x: _Axis, y: _Axis) -> torch.Tensor:
    """(s, X, Y) index of the largest of ``channels`` (``part``: (s, C, X', Y')), each channel
    interpolated over its own box (``rows`` (C, X'-1), ``cols`` (C, Y'-1) cells) only."""
    shape = (part.shape[0], len(x.lower), len(y.lower))
    best = torch.full(shape, -torch.inf, device=part.device)
    index = torch.zeros(shape, dtype=torch.int64, device=part.device)
    for i, c in enumerate(channels.tolist()):
        o0, o1, r0, r1 = _span(rows[i], x.cell)
        p0, p1, c0, c1 = _span(cols[i], y.cell)
        value = part[:, i, r0:r1, c0:c1] @ y.matrix[c0:c1, p0:p1]  # (s, rows, p1 - p0)
        lower, upper, weight = x.lower[o0:o1] - r0, x.upper[o0:o1] - r0, x.weight[o0:o1]
        value = value[:, lower].lerp_(value[:, upper], weight.view(1, -1, 1))
        region = (slice(None), slice(o0, o1), slice(p0, p1))
        best_here = best[region]
        index[region].masked_fill_(value > best_here, c)  # a later one must beat, not tie
        torch.maximum(best_here, value, out=best_here)
    return index


def _in_slices(part, channels, size: tuple[int, int]) -> torch.Tensor:
    """(s, X, Y) index of the largest of ``channels``, interpolated over whole slices."""
    best = index = None
    for first in range(0, len(channels), _CHANNELS):
        chunk = F.interpolate(part[:, first : first + _CHANNELS], size=size, mode="bilinear",
                              align_corners=False)  # fmt: skip
        value, at = chunk.max(dim=1)
        at = channels[first : first + _CHANNELS][at]
        if best is None:
            best, index = value, at
        else:
            better = value > best  # a later channel must beat, not tie
            best = torch.where(better, value, best)
            index = torch.where(better, at, index)
    return index


def _z_interpolated(source, channels, zw) -> torch.Tensor:
    """(s, C, X', Y'): ``channels`` of the slab's model slices ``source`` (n, X', Y', A)
    interpolated along z."""
    lower, upper, weight = zw
    # the channels gathered once, channels first (the slab's model slices hold all A of them)
    planes = source[..., channels].permute(0, 3, 1, 2).contiguous()  # (n, C, X', Y')
    part = planes[lower]
    if not torch.equal(lower, upper):
        part.lerp_(planes[upper], weight.view(-1, 1, 1, 1))
    return part


def _mixed_cell_winners(source, winner, mixed, x: _Axis, y: _Axis, zw) -> torch.Tensor:
    """(s, X, Y) channel index of the largest interpolated score, right in the mixed cells of
    ``source`` (n, X', Y', A).

    When most cells are mixed (a model without confident scores, such as an untrained one),
    every channel is interpolated over whole slices without testing the cells."""
    size = (len(x.lower), len(y.lower))
    if float(mixed.float().mean()) > MIXED_LIMIT:
        channels = torch.arange(source.shape[3], device=source.device)
        return _in_slices(_z_interpolated(source, channels, zw), channels, size)
    cells = torch.nonzero(mixed)  # (M, 3)
    ok = torch.cat([possible_winners(source, winner, cells[i : i + _CELLS])
                    for i in range(0, len(cells), _CELLS)])  # fmt: skip
    channels = torch.nonzero(ok.any(dim=0)).flatten()
    ok = ok[:, channels]
    rows = torch.zeros((len(channels), source.shape[1] - 1), dtype=torch.bool, device=ok.device)
    cols = torch.zeros((len(channels), source.shape[2] - 1), dtype=torch.bool, device=ok.device)
    hit = torch.nonzero(ok)  # (cell, channel) pairs
    rows[hit[:, 1], cells[hit[:, 0], 1]] = True
    cols[hit[:, 1], cells[hit[:, 0], 2]] = True
    part = _z_interpolated(source, channels, zw)
    area = 0
    for r, q in zip(rows, cols, strict=True):
        (o0, o1, _, _), (p0, p1, _, _) = _span(r, x.cell), _span(q, y.cell)
        area += (o1 - o0) * (p1 - p0)
    if area > BOX_LIMIT * size[0] * size[1]:
        return _in_slices(part, channels, size)
    return _in_boxes(part, channels, rows, cols, x, y)


def labels_on_grid(scores: torch.Tensor, shape: Sequence[int], active: torch.Tensor) -> np.ndarray:
    """(Z', X', Y', A) scores (z first, channels last) -> (X, Y, Z) uint8 ``active[argmax]`` of their
    trilinear resampling (see the module doc); the largest buffers hold about ``SLAB_VALUES``
    values, besides each model voxel's winner (int64) and the labels written z first."""
    x_out, y_out, z_out = (int(s) for s in shape)
    z_in, x_in, y_in, n_channels = scores.shape
    labels = np.empty((z_out, x_out, y_out), dtype=np.uint8)  # z first: slabs written whole
    device = scores.device
    lut = active.to(device=device, dtype=torch.uint8)
    zw = linear_weights(z_in, z_out, device)
    x, y = _Axis(x_in, x_out, device), _Axis(y_in, y_out, device)
    same_plane = (x_in, y_in) == (x_out, y_out)
    # every model voxel's winner once (a slab's model slices are shared with the next slab's)
    winners = None if same_plane else scores.argmax(dim=3)
    per_slice = max(8 * x_out * y_out, 3 * n_channels * x_in * y_in * max(1.0, z_in / z_out))
    slab = max(1, int(SLAB_VALUES // per_slice))
    for start in range(0, z_out, slab):
        ks = slice(start, min(start + slab, z_out))
        if same_plane:
            part = scores[zw[0][ks]]  # (s, X, Y, A)
            if z_in != z_out:
                part.lerp_(scores[zw[1][ks]], zw[2][ks].view(-1, 1, 1, 1))
            index = part.argmax(dim=3)
        else:
            first, last = int(zw[0][ks].min()), int(zw[1][ks].max())
            source = scores[first : last + 1].contiguous()  # (n, X', Y', A)
            # an axis of one voxel read as two equal ones: the same values, and cells
            sizes = [2 if n == 1 and axis != 3 else n for axis, n in enumerate(source.shape)]
            source = source.expand(*sizes)
            winner = winners[first : last + 1].expand(*sizes[:3])  # (n, X', Y')
            mixed = over_cells(torch.maximum, winner) != over_cells(torch.minimum, winner)
            lower, upper = zw[0][ks] - first, zw[1][ks] - first
            cz = lower.clamp(max=source.shape[0] - 2)
            index = winner[cz][:, x.cell][:, :, y.cell]  # right in cells of one winner
            mixed_out = mixed[cz][:, x.cell][:, :, y.cell]
            if bool(mixed_out.any()):
                at_mixed = _mixed_cell_winners(source, winner, mixed, x, y,
                                               (lower, upper, zw[2][ks]))  # fmt: skip
                index = torch.where(mixed_out, at_mixed, index)
        labels[ks] = lut[index].cpu().numpy()
    return np.ascontiguousarray(labels.transpose(1, 2, 0))
