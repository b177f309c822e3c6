"""A real subject stored in other orientations caches to the same canonical voxels."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctseg_core.data import open_cached
from ctseg_core.errors import DataError
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
def test_reoriented_copy_caches_voxel_identical(s0000_root, tmp_path, codes):
    _reoriented_copy(s0000_root / "s0000", tmp_path / "s0000", codes)
    assert nib.aff2axcodes(nib.load(tmp_path / "s0000" / "ct.nii.gz").affine) == codes
    original = open_cached(s0000_root, "s0000")
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


def test_mirrored_image_is_a_different_patient_not_the_same_cache(s0000_root, tmp_path):
    """Flipping the voxels but keeping the affine mirrors the anatomy: the cache must show it."""
    src = s0000_root / "s0000"
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


@pytest.mark.parametrize("subject", ["s0000", "s0003"])  # RAS (tests/data), LPS (derived)
def test_labels_written_on_the_ct_grid_keep_its_header_codes(root_of, tmp_path, subject):
    """A label file for a CT whose sform says "aligned" (2) and has no qform says the same,
    with the same matrix (TotalSegmentator's sample CTs are written so)."""
    from ctseg_core.data.volume import load_ct, save_on_original_grid

    source = nib.load(root_of(subject) / subject / "ct.nii.gz")
    ct = load_ct(root_of(subject) / subject / "ct.nii.gz")
    save_on_original_grid(np.zeros(ct.array.shape, np.uint8), ct, tmp_path / "labels.nii.gz")
    out = nib.load(tmp_path / "labels.nii.gz")
    codes = ("qform_code", "sform_code")
    assert [int(out.header[c]) for c in codes] == [int(source.header[c]) for c in codes]
    assert [int(source.header[c]) for c in codes] == [0, 2]
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
    assert out.shape == source.shape


def test_labels_of_a_dicom_series_say_scanner_coordinates(derived_dicom, tmp_path):
    from ctseg_core.data.volume import load_ct, save_on_original_grid

    ct = load_ct(derived_dicom)
    save_on_original_grid(np.zeros(ct.array.shape, np.uint8), ct, tmp_path / "labels.nii.gz")
    out = nib.load(tmp_path / "labels.nii.gz")
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (1, 1)
    np.testing.assert_allclose(out.affine, ct.original_affine, atol=1e-5)
    assert out.shape == (122, 101, 20)  # the series' columns, rows and slices


def test_a_mask_on_a_45_degree_grid_is_reordered_as_its_ct(tmp_path):
    """A CT rotated 45 degrees about z and its mask whose affine differs by float rounding
    (within the same-grid tolerance): near 45 degrees the two affines could pick different RAS
    axis orders, and the liver landed on 0 of its 18 voxels; the mask takes the CT's order."""
    from ctseg_core.data.subject import load_subject
    from ctseg_core.labels import LABEL_OF

    def rotated(deg):
        a = np.radians(deg)
        affine = np.eye(4)
        turn = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
        affine[:3, :3] = turn @ np.diag([0.8, 0.8, 2.0])
        affine[:3, 3] = [-20, 5, 0]
        return affine

    subject = tmp_path / "s0001"
    (subject / "segmentations").mkdir(parents=True)
    ct = np.full((12, 12, 6), -1000, np.int16)
    mask = np.zeros(ct.shape, np.uint8)
    mask[2:5, 1:3, 1:4] = 1
    ct[mask > 0] = 60
    nib.save(nib.Nifti1Image(ct, rotated(45.0)), subject / "ct.nii.gz")
    nib.save(
        nib.Nifti1Image(mask, rotated(45.0 + 1e-5)), subject / "segmentations" / "liver.nii.gz"
    )
    loaded = load_subject(subject)
    liver = loaded.labels == LABEL_OF["liver"]
    assert liver.sum() == 18 and (loaded.ct.array[liver] == 60).all()


def test_labels_of_a_ct_whose_qform_and_sform_disagree_overlay_it_in_itk(tmp_path):
    """A CT with a scanner qform and an "aligned" sform that disagree (mirrored, or 20 mm off):
    ctseg reads the sform and says so; the label file keeps both transforms, so SimpleITK (the
    reader of 3D Slicer and ITK-SNAP), which takes the qform here, lays it on the CT's voxels
    (it put it on 0 of them when the qform was overwritten with the sform)."""
    import SimpleITK as sitk

    from ctseg_core.data.volume import load_ct, save_on_original_grid

    data = np.full((20, 16, 8), -1000, np.int16)
    data[2:6, 4:10, 2:6] = 300
    sform = np.diag([1.5, 1.5, 3.0, 1.0])
    sform[:3, 3] = [-15, -12, 0]
    mirrored = np.diag([-1.5, 1.5, 3.0, 1.0])
    mirrored[:3, 3] = [15, -12, 0]
    shifted = sform.copy()
    shifted[0, 3] += 20
    for qform in (mirrored, shifted):
        img = nib.Nifti1Image(data, None)
        img.set_sform(sform, code=2)
        img.set_qform(qform, code=1)
        nib.save(img, tmp_path / "ct.nii.gz")
        ct = load_ct(tmp_path / "ct.nii.gz")
        assert any("qform and sform disagree" in note for note in ct.notes)
        save_on_original_grid((ct.array > 0).astype(np.uint8), ct, tmp_path / "labels.nii.gz")
        ct_itk = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
        labels_itk = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
        on_ct = sitk.Resample(labels_itk, ct_itk, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        bright = sitk.GetArrayFromImage(ct_itk) > 0
        overlay = sitk.GetArrayFromImage(on_ct) > 0
        assert bright.sum() == 96 and (overlay == bright).all()


@pytest.mark.parametrize("unit", ["micron", "meter", "mm"])
def test_labels_keep_the_units_of_the_ct(tmp_path, unit):
    """A CT whose header states its sizes in microns or meters (``xyzt_units``): ITK scales
    pixdim and the transforms by the unit, so labels that said "unknown" (read as mm) lay
    1000 times off the CT in 3D Slicer / ITK-SNAP; they state the CT's unit, as its pixdim."""
    sitk = pytest.importorskip("SimpleITK")
    from ctseg_core.data.volume import load_ct, save_on_original_grid

    img = nib.Nifti1Image(np.full((6, 5, 4), -1000, np.int16), np.diag([0.8, 0.8, 1.5, 1]))
    img.header.set_xyzt_units(xyz=unit, t="sec")
    nib.save(img, tmp_path / "ct.nii.gz")
    ct = load_ct(tmp_path / "ct.nii.gz")
    save_on_original_grid(np.ones(ct.array.shape, np.uint8), ct, tmp_path / "labels.nii.gz")
    assert nib.load(tmp_path / "labels.nii.gz").header.get_xyzt_units() == (unit, "sec")
    ct_itk = sitk.ReadImage(str(tmp_path / "ct.nii.gz"))
    labels_itk = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert labels_itk.GetSpacing() == pytest.approx(ct_itk.GetSpacing())
    assert labels_itk.GetOrigin() == pytest.approx(ct_itk.GetOrigin())


def test_a_sheared_ct_is_read_with_a_note(tmp_path):
    """An uncorrected gantry tilt of 20 degrees leaves the NIfTI's z axis sheared: volumes in mm
    take the axes as perpendicular (a 1.000 ml structure measured 1.064 ml), so it is said."""
    from ctseg_core.data.volume import load_ct

    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[1, 2] = 2.0 * np.tan(np.radians(20))  # z steps also move along y
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), affine), tmp_path / "tilt.nii.gz")
    notes = load_ct(tmp_path / "tilt.nii.gz").notes
    assert any("sheared by 20.0 degrees" in note for note in notes), notes
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.diag([1.0, 1.0, 2.0, 1.0])),
             tmp_path / "straight.nii.gz")  # fmt: skip
    assert not load_ct(tmp_path / "straight.nii.gz").notes


def test_an_oblique_ct_is_read_with_a_note(tmp_path):
    """Voxel axes turned 20 degrees about z are read on the nearest axes, unresampled: the
    model sees the anatomy turned, so it is said (it was not); 3 degrees is not."""
    from ctseg_core.data.volume import load_ct

    for degrees, said in ((20.0, True), (3.0, False)):
        c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
        affine = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])
        path = tmp_path / f"turned{degrees:g}.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), affine), path)
        notes = load_ct(path).notes
        assert (
            any(f"is oblique: its voxel axes are turned {degrees:.1f} degrees" in n for n in notes)
            == said
        ), notes


def test_an_sform_whose_voxel_size_is_not_pixdims_is_read_with_a_note(tmp_path):
    """An sform alone (qform_code 0) of 0.8 x 0.8 x 1.5 mm voxels over a pixdim of 1 mm:
    ctseg reads the sform, ITK (nnU-Net's SimpleITK reader) pixdim, so it is said."""
    from ctseg_core.data.volume import load_ct

    sform = np.diag([0.8, 0.8, 1.5, 1.0])
    img = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), sform)
    img.set_qform(None, code=0)
    img.set_sform(sform, code=1)
    img.header["pixdim"][1:4] = [1.0, 1.0, 1.0]
    nib.save(img, tmp_path / "pixdim.nii.gz")
    ct = load_ct(tmp_path / "pixdim.nii.gz")
    assert np.allclose(ct.spacing_mm, (0.8, 0.8, 1.5))
    assert any(
        "pixdim says 1 x 1 x 1 mm voxels, its sform 0.8 x 0.8 x 1.5 mm" in n for n in ct.notes
    )
    sitk = pytest.importorskip("SimpleITK")
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    assert sitk.ReadImage(str(tmp_path / "pixdim.nii.gz")).GetSpacing() == (1.0, 1.0, 1.0)
    # labels written on its grid keep its pixdim: ITK reads them on the CT's voxels again
    from ctseg_core.data.volume import save_on_original_grid

    save_on_original_grid(np.zeros(ct.array.shape, np.uint8), ct, tmp_path / "labels.nii.gz")
    labels = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    assert labels.GetSpacing() == (1.0, 1.0, 1.0)
    assert np.allclose(nib.load(tmp_path / "labels.nii.gz").affine, sform)
    sitk.ProcessObject.SetGlobalWarningDisplay(True)
    img.header["pixdim"][1:4] = [0.8, 0.8, 1.5]  # matching: nothing to say
    nib.save(img, tmp_path / "matching.nii.gz")
    assert not load_ct(tmp_path / "matching.nii.gz").notes
    img.header["pixdim"][1:4] = [800, 800, 1500]  # the same in microns, as ITK reads them
    img.header.set_xyzt_units(xyz="micron")
    nib.save(img, tmp_path / "microns.nii.gz")
    assert not load_ct(tmp_path / "microns.nii.gz").notes
    img.header.set_xyzt_units(xyz="mm")
    img.header["pixdim"][1:4] = [-1.0, 0.0, 1.0]  # ITK: 1 x 1 x 1 mm
    nib.save(img, tmp_path / "signs.nii.gz")
    assert any("pixdim says 1 x 1 x 1 mm" in n for n in load_ct(tmp_path / "signs.nii.gz").notes)
    img.header["pixdim"][1:4] = [np.nan, 1.0, 1.0]  # was a traceback from nibabel
    nib.save(img, tmp_path / "nan.nii.gz")
    assert np.allclose(load_ct(tmp_path / "nan.nii.gz").spacing_mm, (0.8, 0.8, 1.5))  # unused
    img.set_qform(sform, code=1)  # a qform that is used cannot be built
    img.header["pixdim"][1:4] = [np.nan, 1.0, 1.0]
    nib.save(img, tmp_path / "nan_qform.nii.gz")
    with pytest.raises(DataError, match=r"nan_qform\.nii\.gz's qform cannot be built .*pixdim"):
        load_ct(tmp_path / "nan_qform.nii.gz")


def test_a_mask_stored_in_another_axis_order_on_the_cts_voxels_is_read(s0000_root, tmp_path):
    """The liver mask of s0000 re-stored LPS beside its RAS CT: the same voxels in world space,
    so it is read (it was refused: "affine differs by 363 mm; resample"); one on another grid
    is still refused."""
    import shutil

    from ctseg_core.data.subject import load_subject
    from ctseg_core.labels import LABEL_OF

    subject = tmp_path / "s0000"
    (subject / "segmentations").mkdir(parents=True)
    shutil.copy(s0000_root / "s0000" / "ct.nii.gz", subject / "ct.nii.gz")
    liver = nib.load(s0000_root / "s0000" / "segmentations" / "liver.nii.gz")
    lps = liver.as_reoriented(nib.orientations.axcodes2ornt(("L", "P", "S")))
    nib.save(lps, subject / "segmentations" / "liver.nii.gz")
    expected = np.asarray(nib.as_closest_canonical(liver).dataobj) > 0
    loaded = load_subject(subject)
    np.testing.assert_array_equal(loaded.labels == LABEL_OF["liver"], expected)
    moved = lps.affine.copy()
    moved[0, 3] += 3.0  # a voxel off along x: another grid
    shifted = nib.Nifti1Image(np.asarray(lps.dataobj), moved)
    nib.save(shifted, subject / "segmentations" / "liver.nii.gz")
    (line,) = load_subject(subject).unused_masks  # left out, said; the subject used
    assert "differs from the CT's" in line
