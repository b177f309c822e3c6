"""The box around the body in a CT: a volumetric model's windows cover only it.

A CT's field of view holds air around the patient (a 512 x 512 plane is ~41 cm across; an
abdomen is ~25 cm deep). The sliding window spends the same time on air as on anatomy, and its
windows fall where the volume's edges put them. ``body_box`` finds the voxels denser than air
(above ``BODY_HU``: every structure of the dataset lies inside the skin, lungs and bowel gas
included, since they are enclosed by tissue), widens their box by ``MARGIN_MM`` of air on each
side, and then to at least one patch (centred, within the CT), so that a window holds the CT's
own air where the whole CT would have given it, never padding. Outside the box the labels are
background. The CT couch and anything else above the threshold stay inside the box: it can only
be too large, which costs time, not labels.

For a 512 x 512 x 300 CT at 0.8 x 0.8 x 1.5 mm and a 3 mm model with 112 x 112 x 128 patches,
a body ~26 cm deep with no couch needs one window along y instead of two: half the windows
(``benchmarks/inference_3d.py``, a synthetic body). A couch, or arms beside the body, can take
that saving away: the real s0001 (tests' shared data, 512 x 512 at 0.98 mm) keeps 512 x 363
voxels of its plane, the same windows at 3 mm, 15 instead of 25 at 1.5 mm with 128^3 patches. TotalSegmentator offers the same idea as ``--body_seg`` (a
body model first); nnU-Net's predictor crops only to nonzero voxels, which in a CT are all of
them, so ``nnunet.predict`` (which reproduces it) does not use the box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: HU above which a voxel is body (or couch); air is below it, and so is lung, which tissue
#: encloses
BODY_HU = -500.0
#: air kept around the body on each side (mm): the network saw the body's edge with air beyond
MARGIN_MM = 15.0


def body_box(ct_xyz: np.ndarray, spacing_mm: Sequence[float], min_extent_mm: Sequence[float],
             margin_mm: float = MARGIN_MM,
             threshold_hu: float = BODY_HU) -> tuple[slice, slice, slice] | None:  # fmt: skip
    """(x, y, z) slices of the CT around its voxels above ``threshold_hu`` (HU).

    ``ct_xyz``: (X, Y, Z) HU (NaN counts as air); ``spacing_mm``: its voxel size, > 0 (the
    caller checks it; an array without one is given 1 mm voxels); the box is widened by
    ``margin_mm`` on each side, then to ``min_extent_mm`` (one patch of the model) where the CT
    has that much, around the body's centre and shifted to stay inside the CT. None: the box
    would be the whole CT, or no voxel is above the threshold (nothing to crop to).
    """
    shape = ct_xyz.shape
    # the densest voxel of each column and of each slice: two reductions, no copy of the CT
    # (a threshold of the whole CT would be a bool volume; 36 ms for 512 x 512 x 300 int16);
    # fmax ignores NaN (a float CT's outside of the reconstruction circle)
    plane = np.fmax.reduce(ct_xyz, axis=2) > threshold_hu  # (X, Y)
    along = [plane.any(axis=1), plane.any(axis=0),
             np.fmax.reduce(np.fmax.reduce(ct_xyz, axis=0), axis=0) > threshold_hu]  # fmt: skip
    if not all(hit.any() for hit in along):
        return None
    box = []
    for n, hit, spacing, extent in zip(shape, along, spacing_mm, min_extent_mm, strict=True):
        where = np.flatnonzero(hit)
        margin = math.ceil(margin_mm / float(spacing))
        lo, hi = max(0, int(where[0]) - margin), min(n, int(where[-1]) + 1 + margin)
        need = min(n, math.ceil(float(extent) / float(spacing) - 1e-6))
        if hi - lo < need:
            lo = min(max(0, (lo + hi - need) // 2), n - need)
            hi = lo + need
        box.append(slice(lo, hi))
    if all(s.stop - s.start == n for s, n in zip(box, shape, strict=True)):
        return None
    return tuple(box)
