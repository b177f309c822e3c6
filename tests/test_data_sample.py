"""The data layer on the real s0000 and on subjects derived from it (conftest.py: another
orientation, a partial annotation, a crop, a DICOM series), read in place."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from ctseg_core.data import load_ct, load_subject, open_cached, open_dataset, prepare_dataset
from ctseg_core.data.dicom import read_dicom_series
from ctseg_core.data.volume import to_canonical
from ctseg_core.labels import LABEL_OF, NUM_STRUCTURES


def test_sample_index_reads_meta_csv_splits(derived_sample):
    index = open_dataset(derived_sample)
    assert index.subjects == ["s0000", "s0001", "s0002", "s0003"]
    assert index.split_source == "meta.csv"
    assert index.splits == {"s0000": "train", "s0001": "train", "s0002": "val", "s0003": "test"}
    assert index.problems == []  # a stray mask file is the subject's problem, not the index's


@pytest.mark.parametrize("subject_id", ["s0000", "s0001", "s0002", "s0003"])
def test_structure_voxel_counts_match_mask_files(root_of, subject_id):
    subject = load_subject(root_of(subject_id) / subject_id)
    seg = root_of(subject_id) / subject_id / "segmentations"
    checked = 0
    for path in sorted(seg.glob("*.nii.gz")):
        name = path.name[: -len(".nii.gz")]
        if name not in LABEL_OF:
            continue
        expected = int(np.count_nonzero(np.asanyarray(nib.load(path).dataobj)))
        assert subject.mask_voxels[LABEL_OF[name]] == expected, name
        assert int((subject.labels == LABEL_OF[name]).sum()) == expected, name
        checked += 1
    assert checked == int(subject.annotated[1:].sum())
    assert subject.overlap_voxels == 0


def test_incomplete_subject_reports_not_annotated(derived_sample):
    subject = load_subject(derived_sample / "s0002")
    # s0002 has two files: vertebrae_L1 (a v2 structure) and pulmonary_artery, which
    # TotalSegmentator v2 moved out of the "total" task; so 116 of the 117 are not annotated.
    assert subject.present == ["vertebrae_L1"]
    assert len(subject.not_annotated) == NUM_STRUCTURES - 1
    assert "liver" in subject.not_annotated and "liver" not in subject.absent
    assert any("pulmonary_artery.nii.gz" in p for p in subject.problems)


def test_empty_mask_is_absent_not_missing(derived_sample):
    subject = load_subject(derived_sample / "s0003")
    # 7 files: iliac_artery_left and _right are empty; kidney_right has no file at all
    assert "iliac_artery_left" in subject.absent
    assert "iliac_artery_left" not in subject.not_annotated
    assert "kidney_right" in subject.not_annotated and "kidney_right" not in subject.absent
    assert len(subject.present) == 5


def _world_centroid(volume_affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ijk = np.argwhere(mask).mean(axis=0)
    return volume_affine[:3, :3] @ ijk + volume_affine[:3, 3]


def test_las_lps_ras_subjects_come_out_canonical_ras(derived_sample):
    orientations = {}
    for sid in ["s0000", "s0001", "s0002"]:
        ct = load_ct(derived_sample / sid / "ct.nii.gz")
        orientations[sid] = ct.orientation
        assert nib.aff2axcodes(ct.affine) == ("R", "A", "S")
        assert np.all(np.diag(ct.affine)[:3] > 0)
        # the canonical affine maps voxels to the same world points as the file's
        img = nib.load(derived_sample / sid / "ct.nii.gz")
        corner = np.array(img.shape) - 1
        world = set()
        for ijk in [(0, 0, 0), tuple(corner)]:
            world.add(tuple(np.round(img.affine[:3, :3] @ ijk + img.affine[:3, 3], 3)))
        canon_corners = set()
        for ijk in [(0, 0, 0), tuple(np.array(ct.array.shape) - 1)]:
            canon_corners.add(tuple(np.round(ct.affine[:3, :3] @ ijk + ct.affine[:3, 3], 3)))
        lo = np.minimum(*[np.array(c) for c in world])
        hi = np.maximum(*[np.array(c) for c in world])
        clo = np.minimum(*[np.array(c) for c in canon_corners])
        chi = np.maximum(*[np.array(c) for c in canon_corners])
        np.testing.assert_allclose(lo, clo, atol=1e-3)
        np.testing.assert_allclose(hi, chi, atol=1e-3)
        # and the voxels themselves: the file's array read back to R, A, S order
        data = np.asanyarray(img.dataobj)
        for axis, code in enumerate(nib.aff2axcodes(img.affine)):
            if code in "LPI":
                data = np.flip(data, axis)
        np.testing.assert_array_equal(ct.array, data)
    assert orientations == {"s0000": "RAS", "s0001": "LAS", "s0002": "LPS"}


def test_kidney_left_lies_on_patient_left(s0000_root):
    subject = load_subject(s0000_root / "s0000")
    left = _world_centroid(subject.ct.affine, subject.labels == LABEL_OF["kidney_left"])
    right = _world_centroid(subject.ct.affine, subject.labels == LABEL_OF["kidney_right"])
    # RAS+ world: +x points to the patient's right, so the left kidney has the smaller x.
    assert left[0] < right[0] - 50, (left, right)
    # and in the canonical array the x index grows with world x
    lx = np.argwhere(subject.labels == LABEL_OF["kidney_left"])[:, 0].mean()
    rx = np.argwhere(subject.labels == LABEL_OF["kidney_right"])[:, 0].mean()
    assert lx < rx


def test_dicom_series_matches_nifti_conversion(sample_root, shared_extra):
    """The real scanner series (../shared, optional) reads as the NIfTI it was converted to."""
    img = read_dicom_series(shared_extra / "dicom_s0001")
    dicom = load_ct(shared_extra / "dicom_s0001")
    nifti = load_ct(sample_root / "s0001" / "ct.nii.gz")
    assert img.shape == (512, 512, 20)
    np.testing.assert_array_equal(dicom.array, nifti.array)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-3)
    np.testing.assert_allclose(dicom.spacing_mm, (0.9765625, 0.9765625, 2.0), atol=1e-5)


def test_dicom_series_of_a_derived_subject_matches_its_nifti(derived_sample, derived_dicom):
    """The derived s0001 (LAS, 122 x 101 x 20, 1.5 x 2.0 x 2.5 mm) written as a DICOM series
    (101 rows x 122 columns per slice, LPS) reads as the NIfTI file."""
    img = read_dicom_series(derived_dicom)
    dicom = load_ct(derived_dicom)
    nifti = load_ct(derived_sample / "s0001" / "ct.nii.gz")
    assert img.shape == (122, 101, 20)  # columns, rows, slices
    np.testing.assert_array_equal(dicom.array, nifti.array)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-3)
    np.testing.assert_allclose(dicom.spacing_mm, (1.5, 2.0, 2.5), atol=1e-5)


def test_cache_is_slice_major_and_equals_loaded_subject(derived_sample, tmp_path, monkeypatch):
    report = prepare_dataset(derived_sample, tmp_path, workers=2)  # in a process pool
    assert sorted(report.built) == ["s0000", "s0001", "s0002", "s0003"]
    assert report.failed == {}
    entry = open_cached(derived_sample, "s0001", tmp_path, build=False)
    # the report hands back the entries it built (in other processes), current and complete
    assert sorted(report.entries) == sorted(report.built)
    assert report.entries["s0001"].folder == entry.folder
    subject = load_subject(derived_sample / "s0001")
    assert entry.ct.shape == (20, 122, 101) and entry.ct.dtype == np.int16  # stored LAS
    assert entry.labels.dtype == np.uint8 and entry.ct[7].flags["C_CONTIGUOUS"]
    assert isinstance(entry.ct, np.memmap)
    np.testing.assert_array_equal(entry.ct[7], subject.ct.array[:, :, 7])
    np.testing.assert_array_equal(entry.labels_xyz(), subject.labels)
    # slice 7 of the cache is slice 10 + 7 of s0000 (RAS): the LAS file read back to RAS
    s0000 = np.asanyarray(nib.load(derived_sample / "s0000" / "ct.nii.gz").dataobj)
    np.testing.assert_array_equal(entry.ct[7], s0000[:, :, 17])
    assert entry.meta["orientation"] == "LAS"
    # unchanged sources are reused, not rebuilt, and found without starting a process pool
    import ctseg_core.data.prepare as prepare_module

    def no_pool(*args, **kwargs):
        raise AssertionError("a process pool was started with nothing to build")

    monkeypatch.setattr(prepare_module, "ProcessPoolExecutor", no_pool)
    seen = []
    again = prepare_dataset(derived_sample, tmp_path, workers=2, progress=lambda *a: seen.append(a))
    assert again.built == [] and sorted(again.reused) == sorted(report.built)
    assert {k: e.folder for k, e in again.entries.items()} == {
        k: e.folder for k, e in report.entries.items()
    }
    assert [done for done, total, _ in seen] == [1, 2, 3, 4] and seen[-1][1] == 4


def test_canonical_transform_roundtrip_is_exact():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 100, (5, 6, 7)).astype(np.int16)
    for codes in [("L", "P", "S"), ("R", "A", "S"), ("L", "A", "I"), ("A", "R", "S")]:
        ornt = nib.orientations.axcodes2ornt(codes)
        affine = nib.orientations.inv_ornt_aff(ornt, data.shape)
        from ctseg_core.data.volume import from_canonical

        canon, canon_affine = to_canonical(data, affine)
        assert nib.aff2axcodes(canon_affine) == ("R", "A", "S")
        np.testing.assert_array_equal(from_canonical(canon, affine), data)
