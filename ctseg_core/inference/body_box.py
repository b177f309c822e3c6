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
body ~26 cm deep on a couch needs one window along y instead of two: half the windows
(``benchmarks/inference_3d.py``, a synthetic body; a body over ~30 cm deep needs two). The real s0001 (../shared/data, 512 x 512 x 20
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
    along.append(_slices_above(ct_xyz[columns], plane[columns], threshold_hu))
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


def _slices_above(ct_xyz: np.ndarray, columns_xy: np.ndarray, threshold_hu: float) -> np.ndarray:
    """(Z,) bool: the slices with a voxel above ``threshold_hu`` in the columns ``columns_xy``
    (a couch's columns left out), a few slices at a time (no copy of the CT)."""
    if columns_xy.all():
        return np.fmax.reduce(np.fmax.reduce(ct_xyz, axis=0), axis=0) > threshold_hu
    out = np.zeros(ct_xyz.shape[2], dtype=bool)
    for z0 in range(0, ct_xyz.shape[2], 32):
        slab = ct_xyz[:, :, z0 : z0 + 32][columns_xy]  # (columns, slices)
        out[z0 : z0 + 32] = np.fmax.reduce(slab, axis=0) > threshold_hu
    return out


def without_couch(plane_xy: np.ndarray) -> np.ndarray:
    """(X, Y) bool, the CT's voxels above the threshold projected along z, without a couch:
    the connected parts (8-neighbours) that are plates lying beyond the body's back or front.

    A part is left out when its centre is outside the largest part's extent along y (anterior-
    posterior), its area is under a quarter of that part's, and it is flat and wide: along x at
    least 5 times its own y extent and a third of the largest part's x extent. A couch under a
    supine (or over a prone) patient, its top curved up at the sides and its base below, is such
    a plate where foam below -500 HU separates it from the body. Arms, hands and legs are not
    plates, so they stay even apart from the body (an arm on a pillow in front of the belly); a
    couch touching the body stays too: the box is then larger, never smaller.
    """
    from scipy import ndimage

    parts, count = ndimage.label(plane_xy, structure=np.ones((3, 3), dtype=bool))
    if count < 2:
        return plane_xy
    areas = np.bincount(parts.ravel())[1:]
    body = int(np.argmax(areas))
    boxes = ndimage.find_objects(parts)  # (x slice, y slice) of each part
    centres = ndimage.center_of_mass(plane_xy, parts, range(1, count + 1))
    y_body, x_body = boxes[body][1], boxes[body][0].stop - boxes[body][0].start
    plates = []
    for k, ((xs, ys), (_, y)) in enumerate(zip(boxes, centres, strict=True)):
        wide, deep = xs.stop - xs.start, ys.stop - ys.start
        beyond = not y_body.start <= y < y_body.stop
        if beyond and areas[k] < areas[body] / 4 and wide >= 5 * deep and 3 * wide >= x_body:
            plates.append(k + 1)
    return plane_xy & ~np.isin(parts, plates)
