"""A real subject stored in other orientations caches to the same canonical voxels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctseg_core.data import open_cached
from ctseg_core.labels import LABEL_OF


def _reoriented_copy(src: Path, dst: Path, codes: tuple[str, str, str]) -> None:
    """Write src (a subject folder) to dst with every image stored in the ``codes`` orientation."""
    files = [src / "ct.nii.gz", *sorted((src / "segmentations").glob("*.nii.gz"))]
    for path in files:
        img = nib.load(path)
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(img.affine), nib.orientations.axcodes2ornt(codes)
        )
        out = img.as_reoriented(transform)
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(out, str(target))


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("P", "L", "I"), ("S", "R", "A")])
def test_reoriented_copy_caches_voxel_identical(sample_root, tmp_path, codes):
    _reoriented_copy(sample_root / "s0000", tmp_path / "s0000", codes)
    assert nib.aff2axcodes(nib.load(tmp_path / "s0000" / "ct.nii.gz").affine) == codes
    original = open_cached(sample_root, "s0000")
    copy = open_cached(tmp_path, "s0000")
    assert copy.meta["orientation"] == "".join(codes)
    np.testing.assert_array_equal(copy.ct, original.ct)
    np.testing.assert_array_equal(copy.labels, original.labels)
    np.testing.assert_allclose(copy.affine, original.affine, atol=1e-4)
    # kidney_left lies on the patient's left: smaller world x in RAS+
    labels = copy.labels_xyz()
    centre = {}
    for name in ("kidney_left", "kidney_right"):
        ijk = np.argwhere(labels == LABEL_OF[name]).mean(axis=0)
        centre[name] = copy.affine[:3, :3] @ ijk + copy.affine[:3, 3]
    assert centre["kidney_left"][0] < centre["kidney_right"][0] - 50


def test_mirrored_image_is_a_different_patient_not_the_same_cache(sample_root, tmp_path):
    """Flipping the voxels but keeping the affine mirrors the anatomy: the cache must show it."""
    src = sample_root / "s0000"
    dst = tmp_path / "s0000"
    for path in [src / "ct.nii.gz", *sorted((src / "segmentations").glob("*.nii.gz"))]:
        img = nib.load(path)
        data = np.flip(np.asanyarray(img.dataobj), axis=0)
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, img.affine, img.header), str(target))
    mirrored = open_cached(tmp_path, "s0000")
    labels = mirrored.labels_xyz()
    left_x = np.argwhere(labels == LABEL_OF["kidney_left"])[:, 0].mean()
    right_x = np.argwhere(labels == LABEL_OF["kidney_right"])[:, 0].mean()
    # the mirrored file has its "left" kidney on the patient's right: a label mirror without a
    # label swap, exactly what an augmentation must never produce
    assert left_x > right_x
