"""Where a volumetric model's windows go and how they weigh: nnU-Net's window placement and
Gaussian importance, the windows of a test-time pass, and a member's sum of weights per voxel
(``inference.patches`` runs them; ``training.validation_volumes`` tiles with the placement)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

#: TTA shifts (voxels) for models trained without left/right mirroring
TTA_SHIFTS = ((2, 2, 2), (-2, -2, -2))


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1 / 8) -> torch.Tensor:
    """(px, py, pz) float32 weights: a Gaussian centred on the patch, sigma = patch *
    ``sigma_scale`` per axis, 1 at the centre, symmetric, > 0 everywhere (nnU-Net's)."""
    axes = []
    for p in patch:
        offset = torch.arange(int(p), dtype=torch.float64) - (int(p) - 1) / 2
        axes.append(torch.exp(-0.5 * (offset / (int(p) * sigma_scale)) ** 2))
    g = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    g = (g / g.max()).float()
    return g.clamp_(min=float(g[g > 0].min()))


def window_starts(size: int, patch: int, overlap: float) -> list[int]:
    """First voxel of each window along an axis of ``size`` voxels (>= ``patch``): the fewest
    windows with at least ``overlap`` of a patch shared, spread evenly (nnU-Net's steps)."""
    if size <= patch:
        return [0]
    step = patch * (1.0 - overlap)
    count = min(math.ceil((size - patch) / step) + 1, size - patch + 1)  # one voxel apart at most
    spacing = (size - patch) / (count - 1)
    return [round(spacing * i) for i in range(count)]


def window(start: Sequence[int], patch: Sequence[int], aug: str,
            padded: Sequence[int]) -> tuple[slice, ...]:  # fmt: skip
    """The (x, y, z) slices of the window at ``start`` in the padded volume for the pass
    ``aug``: a shifted pass's window moved by its shift (``TTA_SHIFTS``), as far as the volume
    allows; the others where it is."""
    shift = TTA_SHIFTS[int(aug.removeprefix("shift"))] if aug.startswith("shift") else (0, 0, 0)
    first = [
        min(max(s + d, 0), n - p) for s, d, n, p in zip(start, shift, padded, patch, strict=True)
    ]
    return tuple(slice(f, f + p) for f, p in zip(first, patch, strict=True))


def pass_weights(starts: list[tuple[int, ...]], patch: Sequence[int], augs: list[str],
                  padded: Sequence[int], g: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """(Z, X, Y) float32 sum of the Gaussian ``g`` (pz, px, py) over a member's windows and
    passes, on ``g``'s device: what each voxel's sum of that member's passes is divided by."""
    total = torch.zeros((padded[2], padded[0], padded[1]), device=g.device)
    for aug in augs:
        for start in starts:
            wx, wy, wz = window(start, patch, aug, padded)
            total[wz, wx, wy] += g
    return total
