"""Volumes for the browser viewer: the voxel budget's stride, NIfTI bytes that keep positions in
mm, and NiiVue's label table of ctseg's names and colours."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctseg_core.errors import DataError
from ctseg_core.labels import COLOURS, LABEL_OF, NUM_LABELS
from ctseg_core.viz.browser_volume import (
    MAX_BROWSER_VOXELS,
    browser_stride,
    label_lut,
    nifti_bytes,
)


def test_stride_halves_a_512_ct_in_plane_and_keeps_small_volumes_whole():
    assert browser_stride((512, 512, 300)) == (2, 2, 1)  # 256 x 256 x 300 = 19.7 M voxels
    assert browser_stride((122, 101, 30)) == (1, 1, 1)
    assert browser_stride((512, 512, 20)) == (1, 1, 1)  # 5.2 M voxels fit
    # a long scan: in-plane down to 256 first, then every 4th slice
    assert browser_stride((512, 512, 2000)) == (2, 2, 4)
    nx, ny, nz = 512, 512, 2000
    sx, sy, sz = browser_stride((nx, ny, nz))
    assert -(-nx // sx) * -(-ny // sy) * -(-nz // sz) <= MAX_BROWSER_VOXELS
    with pytest.raises(DataError, match="0, 5, 5"):
        browser_stride((0, 5, 5))


def test_nifti_bytes_keep_every_voxel_at_its_mm_position():
    rng = np.random.default_rng(0)
    ct_zxy = rng.integers(-1000, 1500, size=(7, 10, 9)).astype(np.int16)
    affine = np.array([[0.7, 0, 0, -100], [0, 0.8, 0, 20], [0, 0, 3.0, -50], [0, 0, 0, 1]])
    image = nib.Nifti1Image.from_bytes(nifti_bytes(ct_zxy, affine, (2, 2, 1), np.int16))
    data = np.asarray(image.dataobj)
    assert data.dtype == np.int16 and data.shape == (5, 5, 7)  # (X, Y, Z), x and y halved
    i, j, k = 3, 4, 6  # a voxel of the file ...
    assert data[i, j, k] == ct_zxy[k, 2 * i, 2 * j]  # ... is voxel (6, 8, 6) of the original
    world = image.affine @ [i, j, k, 1]
    np.testing.assert_allclose(world, affine @ [2 * i, 2 * j, k, 1])  # at the same mm
    assert image.header.get_sform(coded=True)[1] == 1
    assert image.header.get_intent()[0] == "none"  # a CT
    labels = nib.Nifti1Image.from_bytes(nifti_bytes(ct_zxy > 0, affine, (1, 1, 1), np.uint8))
    assert labels.header.get_intent()[0] == "label"  # else NiiVue tints value 0


def test_label_lut_names_every_value_in_its_ctseg_colour():
    lut = label_lut()
    assert len(lut["labels"]) == len(lut["R"]) == len(lut["I"]) == NUM_LABELS == 118
    assert lut["A"][0] == 0 and lut["labels"][0] == "background"  # background transparent
    liver = LABEL_OF["liver"]
    assert lut["labels"][liver] == "liver"
    assert (lut["R"][liver], lut["G"][liver], lut["B"][liver]) == tuple(COLOURS["liver"])
    assert min(lut["A"][1:]) == 255
