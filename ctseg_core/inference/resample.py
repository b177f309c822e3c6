"""Linear resampling between a CT's grid and a model's, a slab of slices at a time.

Every function follows ``F.interpolate(..., mode="trilinear", align_corners=False)``: the grids
share their outer edges, output voxel i samples input position (i + 0.5) * n_in / n_out - 0.5,
clamped to the first and last voxel. Linear interpolation is separable, so it runs one axis at
a time; working on slabs of slices along z bounds the largest float buffer by one slab instead
of the volume (a 512 x 512 x 300 CT is 315 MB as float32; 118 score channels at that size 37 GB).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: float32 values of the largest slab buffer (64 MiB) when labels go back to the CT's grid
SLAB_VALUES = 16 * 2**20
#: input slices of a CT resampled at once
CT_SLAB = 16


def grid_shape(
    shape_xyz: Sequence[int], spacing_mm: Sequence[float] | None, target_mm: Sequence[float] | None
) -> tuple[int, int, int]:
    """The shape of a (X, Y, Z) grid of voxel size ``spacing_mm`` resampled to ``target_mm``
    (same extent; at least 1 voxel per axis); ``target_mm`` or ``spacing_mm`` None: unchanged."""
    if target_mm is None or spacing_mm is None:
        return tuple(int(s) for s in shape_xyz)
    return tuple(
        max(1, round(int(n) * float(s) / float(t)))
        for n, s, t in zip(shape_xyz, spacing_mm, target_mm, strict=True)
    )


def linear_weights(n_in: int, n_out: int, device=None) -> tuple[torch.Tensor, ...]:
    """(lower index, upper index, weight of the upper) of each output position, (n_out,) each."""
    scale = n_in / n_out
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * scale - 0.5).clamp_(min=0)
    lower = src.floor().long().clamp_(max=n_in - 1)
    upper = (lower + 1).clamp_(max=n_in - 1)
    weight = (src - lower).float()
    return lower.to(device), upper.to(device), weight.to(device)


def resample_axis(t: torch.Tensor, axis: int, n_out: int) -> torch.Tensor:
    """``t`` linearly resampled to ``n_out`` along ``axis`` (float); same size: unchanged."""
    n_in = t.shape[axis]
    if n_in == n_out:
        return t
    lower, upper, weight = linear_weights(n_in, n_out, t.device)
    shape = [1] * t.dim()
    shape[axis] = n_out
    low = t.index_select(axis, lower)
    return low.lerp_(t.index_select(axis, upper), weight.view(shape).to(t.dtype))


def resample_ct(ct_xyz: np.ndarray, shape: Sequence[int]) -> torch.Tensor:
    """(X, Y, Z) CT (any numeric dtype) -> (X', Y', Z') float32 on the CPU, trilinear.

    z first, for the output slices a few at a time from only the input slices they read, then
    x and y: the float buffers are a few input slices, never the CT.
    """
    x_out, y_out, z_out = (int(s) for s in shape)
    out = torch.empty((x_out, y_out, z_out), dtype=torch.float32)
    lower, upper, weight = linear_weights(ct_xyz.shape[2], z_out)
    for start in range(0, z_out, CT_SLAB):
        ks = slice(start, min(start + CT_SLAB, z_out))
        low = torch.from_numpy(np.asarray(ct_xyz[:, :, lower[ks].numpy()], dtype=np.float32))
        if ct_xyz.shape[2] != z_out:
            high = np.asarray(ct_xyz[:, :, upper[ks].numpy()], dtype=np.float32)
            low.lerp_(torch.from_numpy(high), weight[ks])
        out[:, :, ks] = resample_axis(resample_axis(low, 0, x_out), 1, y_out)
    return out


def _candidates(slab: torch.Tensor) -> torch.Tensor:
    """(A,) bool: the channels of a (s, A, X', Y') slab that can be the largest anywhere once
    interpolated in-plane.

    Bilinear interpolation keeps each channel within its minimum and maximum over the 2 x 2
    cell around an output voxel; a channel whose maximum over a cell is below the largest
    minimum of any channel over that cell cannot win there. Channels that win nowhere are left
    out of the upsampling: the labels are the same, up to float rounding.
    """
    if min(slab.shape[-2:]) < 2:
        return torch.ones(slab.shape[1], dtype=torch.bool, device=slab.device)
    top = F.max_pool2d(slab, 2, stride=1)  # (s, A, X'-1, Y'-1)
    floor = -F.max_pool2d(-slab, 2, stride=1)
    best_floor = floor.amax(dim=1, keepdim=True)
    return (top >= best_floor).any(dim=(0, 2, 3))


def labels_on_grid(
    scores: torch.Tensor, shape: Sequence[int], active: torch.Tensor, channel_chunk: int = 16
) -> np.ndarray:
    """(A, X', Y', Z') scores -> (X, Y, Z) uint8 ``active[argmax]`` of their trilinear resampling.

    A slab of output slices at a time: z is interpolated on the model's grid, then each slab is
    upsampled in-plane ``channel_chunk`` channels at a time with a running maximum, over only
    the channels that can win in that slab (``_candidates``). The largest buffer holds about
    ``SLAB_VALUES`` floats, whatever the number of channels; ties go to the lower channel, as
    ``argmax``.
    """
    x_out, y_out, z_out = (int(s) for s in shape)
    labels = np.empty((x_out, y_out, z_out), dtype=np.uint8)
    active = active.to(scores.device)
    lower, upper, weight = linear_weights(scores.shape[3], z_out, scores.device)
    same_plane = tuple(scores.shape[1:3]) == (x_out, y_out)
    per_slice = min(channel_chunk, scores.shape[0]) * x_out * y_out
    slab = max(1, SLAB_VALUES // max(1, per_slice))
    for start in range(0, z_out, slab):
        ks = slice(start, min(start + slab, z_out))
        part = scores.index_select(3, lower[ks])
        if scores.shape[3] != z_out:
            part.lerp_(scores.index_select(3, upper[ks]), weight[ks])
        part = part.permute(3, 0, 1, 2)  # (s, A, X', Y')
        if same_plane:
            index = part.argmax(dim=1)
        else:
            keep = torch.nonzero(_candidates(part)).flatten()
            best_value = best_index = None
            for first in range(0, len(keep), channel_chunk):
                channels = keep[first : first + channel_chunk]
                chunk = F.interpolate(part.index_select(1, channels), size=(x_out, y_out),
                                      mode="bilinear", align_corners=False)  # fmt: skip
                value, at = chunk.max(dim=1)
                at = channels[at]
                if best_value is None:
                    best_value, best_index = value, at
                else:
                    better = value > best_value  # a later channel must beat, not tie
                    best_value = torch.where(better, value, best_value)
                    best_index = torch.where(better, at, best_index)
            index = best_index
        labels[:, :, ks] = active[index].to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return labels
