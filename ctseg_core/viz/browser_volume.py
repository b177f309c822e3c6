"""Volumes for a browser viewer (NiiVue): NIfTI bytes of cached (Z, X, Y) arrays, a stride that
keeps them within a voxel budget, and the label lookup table of ctseg's names and colours.

A browser holds the whole volume on the GPU (NiiVue keeps an RGBA texture of it as well), so a
512 x 512 x 300 CT (79 M voxels, 157 MB as int16) is sent every second voxel in-plane
(256 x 256 x 300, 39 MB + 20 MB of labels); the server's slice view keeps full resolution.
"""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np

from ctseg_core.errors import DataError
from ctseg_core.labels import COLOURS, NUM_LABELS, STRUCTURES

#: the most voxels sent to a browser: 2^25 (33.5 M) is 67 MB of int16 CT + 34 MB of labels
MAX_BROWSER_VOXELS = 2**25
#: in-plane stride comes first, down to this many pixels across; then slices are skipped
MIN_INPLANE_PX = 256


def browser_stride(shape_xyz, max_voxels: int = MAX_BROWSER_VOXELS) -> tuple[int, int, int]:
    """Whole-voxel steps (x, y, z) so that the strided volume holds at most ``max_voxels``.

    In-plane pixels are given up first (down to ``MIN_INPLANE_PX`` across), then slices; (1, 1, 1)
    when the volume fits. Raises DataError for an empty shape or a budget under one voxel.
    """
    nx, ny, nz = (int(n) for n in shape_xyz[:3])
    if min(nx, ny, nz) < 1 or max_voxels < 1:
        raise DataError(f"cannot fit volume shape {tuple(shape_xyz)} into {max_voxels} voxels")
    step_xy, step_z = 1, 1

    def count() -> int:
        return math.ceil(nx / step_xy) * math.ceil(ny / step_xy) * math.ceil(nz / step_z)

    while count() > max_voxels:
        if max(math.ceil(nx / (step_xy + 1)), math.ceil(ny / (step_xy + 1))) >= MIN_INPLANE_PX:
            step_xy += 1
        else:
            step_z += 1
    return step_xy, step_xy, step_z


def nifti_bytes(volume_zxy: np.ndarray, affine: np.ndarray, stride_xyz, dtype) -> bytes:
    """An uncompressed NIfTI-1 file (bytes) of a cached (Z, X, Y) volume, every ``stride_xyz``-th
    voxel, as ``dtype`` (int16 for CT in HU, uint8 for labels: marked as a label map, NIfTI
    intent 1002).

    ``affine``: (4, 4) of the canonical (X, Y, Z) array; the result's affine scales its columns
    by the stride, so voxel (i, j, k) of the file lies at voxel (i*sx, j*sy, k*sz) of the
    original and every position in mm is kept. Uncompressed: a browser reads it without
    inflating (on localhost the transfer is cheaper than gzip on both sides).
    """
    sx, sy, sz = (int(s) for s in stride_xyz)
    xyz = np.transpose(np.asarray(volume_zxy[::sz, ::sx, ::sy]), (1, 2, 0))
    scaled = np.asarray(affine, dtype=np.float64).copy()
    scaled[:3, :3] = scaled[:3, :3] * np.array([sx, sy, sz], dtype=np.float64)
    image = nib.Nifti1Image(np.ascontiguousarray(xyz, dtype=dtype), scaled)
    image.header.set_xyzt_units("mm")
    image.header.set_qform(scaled, code=1)
    image.header.set_sform(scaled, code=1)
    if np.dtype(dtype) == np.uint8:  # labels: NiiVue otherwise draws value 0 in label 1's colour
        image.header.set_intent("label")
    return image.to_bytes()


def label_lut() -> dict:
    """NiiVue's label colormap: lists R, G, B, A, I (0-255) for values 0..117 and their names.

    Value 0 (background) is transparent and named "background"; every structure is opaque in
    its ctseg colour (the overlay's opacity is set on the volume).
    """
    lut: dict = {"R": [0], "G": [0], "B": [0], "A": [0], "I": list(range(NUM_LABELS))}
    for name in STRUCTURES:
        r, g, b = COLOURS[name]
        lut["R"].append(int(r))
        lut["G"].append(int(g))
        lut["B"].append(int(b))
        lut["A"].append(255)
    lut["labels"] = ["background", *STRUCTURES]
    return lut
