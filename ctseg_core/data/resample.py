"""Linear resampling between a CT's grid and a model's (the CT in; the scores go back in
:mod:`ctseg_core.inference.to_grid`).

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

#: input slices of a CT resampled at once
CT_SLAB = 16


def grid_shape(
    shape_xyz: Sequence[int], spacing_mm: Sequence[float] | None, target_mm: Sequence[float] | None
) -> tuple[int, int, int]:
    """The shape of a (X, Y, Z) grid of voxel size ``spacing_mm`` resampled to ``target_mm``
    (same extent; at least 1 voxel per axis); ``target_mm`` or ``spacing_mm`` None: unchanged.
    Computed in nnU-Net's order (``compute_new_shape``: spacing / target * size), so a half
    voxel rounds alike and an exported model sees the grid ctseg's own runs do."""
    if target_mm is None or spacing_mm is None:
        return tuple(int(s) for s in shape_xyz)
    return tuple(
        max(1, round(float(s) / float(t) * int(n)))
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


def interpolation_matrix(n_in: int, n_out: int, device=None) -> torch.Tensor:
    """(n_out, n_in) float32: linear interpolation along an axis as a matrix (two weights a row)."""
    lower, upper, weight = linear_weights(n_in, n_out, device)
    matrix = torch.zeros((n_out, n_in), dtype=torch.float32, device=device)
    rows = torch.arange(n_out, device=device)
    matrix.index_put_((rows, lower), 1 - weight, accumulate=True)
    matrix.index_put_((rows, upper), weight, accumulate=True)
    return matrix
