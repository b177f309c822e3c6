"""The box around the body in a CT: a volumetric model's windows cover only it.

A CT's field of view holds air around the patient (a 512 x 512 plane is ~41 cm across; an
abdomen is ~25 cm deep). The sliding window spends the same time on air as on anatomy, and its
windows fall where the volume's edges put them. ``body_box`` finds the voxels denser than air
(above ``BODY_HU``: every structure of the dataset lies inside the skin, lungs and bowel gas
included, since they are enclosed by tissue), widens their box by ``MARGIN_MM`` of air on each
side, and then to at least one patch (centred, within the CT), so that a window holds the CT's
own air where the whole CT would have given it, never padding. Outside the box the labels are
background. A couch apart from the body is left out (``without_couch``); one touching it, and
anything else above the threshold, stays inside the box, which can then be too large (time),
never too small (labels).

For a 512 x 512 x 300 CT at 0.8 x 0.8 x 1.5 mm and a 3 mm model with 112 x 112 x 128 patches, a
body ~26 cm deep with no couch needs one window along y instead of two: half the windows
(``benchmarks/inference_3d.py``, a synthetic body). The real s0001 (../shared/data, 512 x 512 x 20
at 0.98 x 0.98 x 2 mm, supine on a couch, arms beside the body) keeps x 0-512 and y 50-395 of its
plane without its couch (y 22-120): 2 windows instead of 4 at 3 mm (it has 20 slices).
TotalSegmentator offers the same idea as ``--body_seg`` (a body model first); nnU-Net's predictor
crops only to nonzero voxels, which in a CT are all of them, so ``nnunet.predict`` (which
reproduces it) does not use the box.
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
    plane = without_couch(np.fmax.reduce(ct_xyz, axis=2) > threshold_hu)  # (X, Y)
    if not plane.any():
        return None
    along = [plane.any(axis=1), plane.any(axis=0)]
    columns = tuple(slice(np.flatnonzero(a)[0], np.flatnonzero(a)[-1] + 1) for a in along)
    slices = np.fmax.reduce(np.fmax.reduce(ct_xyz[columns], axis=0), axis=0)
    along.append(slices > threshold_hu)
    if not along[2].any():
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


def without_couch(plane_xy: np.ndarray) -> np.ndarray:
    """(X, Y) bool, the CT's voxels above the threshold projected along z, without the pieces
    that lie beyond the body's back or front: the connected parts (8-neighbours) whose centre
    is outside the largest part's extent along y (anterior-posterior) and whose area is under a
    quarter of its own. A couch under a supine patient (its top curved up at the sides, its
    base below) is such a piece where foam below -500 HU separates it from the body; arms, legs
    and hands lie beside or on the body, within its y extent, and stay. A couch touching the
    body stays too: the box is then larger, never smaller."""
    from scipy import ndimage

    parts, count = ndimage.label(plane_xy, structure=np.ones((3, 3), dtype=bool))
    if count < 2:
        return plane_xy
    areas = np.bincount(parts.ravel())[1:]
    body = int(np.argmax(areas)) + 1
    y_body = np.flatnonzero((parts == body).any(axis=0))
    centres = ndimage.center_of_mass(plane_xy, parts, range(1, count + 1))
    beyond = [
        k + 1
        for k, (_, y) in enumerate(centres)
        if not y_body[0] <= y <= y_body[-1] and areas[k] < areas[body - 1] / 4
    ]
    return plane_xy & ~np.isin(parts, beyond)
