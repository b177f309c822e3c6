"""What was assumed or skipped while reading data is said, once per file: masks of values other
than 0/1, NIfTI files without orientation or voxel size, dataset folders that are no subjects."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctseg_core.data import load_ct, load_subject, open_dataset
from ctseg_core.data.volume import load_label_volume
from ctseg_core.inference.files import load_ct_noting
from ctseg_core.labels import LABEL_OF

SHAPE = (16, 12, 8)
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _save(path: Path, data: np.ndarray, affine=AFFINE, codes=(1, 1), pixdim=None) -> Path:
    """A NIfTI with the given (qform_code, sform_code) and, if given (.nii only), pixdim[1:4]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = nib.Nifti1Header()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_qform(affine, code=codes[0])
    header.set_sform(affine, code=codes[1])
    nib.save(nib.Nifti1Image(data, None, header=header), str(path))  # no affine: header as is
    if pixdim is not None:  # nibabel writes a zero pixdim as 1: patch the bytes (pixdim[1] at 80)
        assert path.suffix == ".nii"
        raw = bytearray(path.read_bytes())
        raw[80:92] = np.asarray(pixdim, dtype="<f4").tobytes()
        path.write_bytes(bytes(raw))
    return path


def _subject(root: Path, sid: str = "s0001", **kwargs) -> Path:
    ct = np.full(SHAPE, -1000, dtype=np.int16)
    ct[4:12, 3:9, 2:6] = 50
    _save(root / sid / "ct.nii.gz", ct, **kwargs)
    liver = np.zeros(SHAPE, dtype=np.uint8)
    liver[4:8, 3:9, 2:6] = 1
    _save(root / sid / "segmentations" / "liver.nii.gz", liver, **kwargs)
    return root / sid


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "values,dtype,said,voxels",
    [
        ((0, 3), np.uint8, "is a mask holding the values 0, 3 (not only 0 and 1); every voxel "
         "above 0 was read as the structure", 24),
        ((0, 1, 2), np.int16, "holding the values 0, 1, 2 (not only 0 and 1)", 24),
        ((0.0, 0.3, 0.8), np.float32, "is a mask of non-binary values (0..0.8); voxels above "
         "0.5 were read as the structure", 12),
    ],
)  # fmt: skip
def test_a_mask_of_other_values_is_said_once_per_file(tmp_path, caplog, values, dtype, said,
                                                      voxels):  # fmt: skip
    sdir = _subject(tmp_path)
    mask = np.full(SHAPE, values[0], dtype=dtype)
    mask[0:2, 0:3, 0:4] = values[-1]  # 24 voxels, half of them overwritten below
    if len(values) == 3:
        mask[0:1, 0:3, 0:4] = values[1]
    _save(sdir / "segmentations" / "kidney_left.nii.gz", mask)
    subject = load_subject(sdir)
    assert subject.mask_voxels[LABEL_OF["kidney_left"]] == voxels
    (note,) = [p for p in subject.problems if "kidney_left" in p]
    assert note.startswith("s0001/segmentations/kidney_left.nii.gz ") and said in note
    assert _warnings(caplog) == [note]
    again = load_subject(sdir)  # the same file again: in problems, not warned twice
    assert note in again.problems and _warnings(caplog) == [note]


@pytest.mark.parametrize(
    "values,dtype", [((0, 1), np.uint8), ((0, 255), np.uint8), ((0.0, 1.0), np.float32),
                     ((0, 1), np.int16), ((False, True), np.bool_)]
)  # fmt: skip
def test_binary_masks_say_nothing(tmp_path, caplog, values, dtype):
    sdir = _subject(tmp_path)
    mask = np.full(SHAPE, values[0], dtype=dtype)
    mask[0:2, 0:3, 0:4] = values[1]
    _save(sdir / "segmentations" / "kidney_left.nii.gz", mask.astype(np.uint8) if dtype == np.bool_
          else mask)  # fmt: skip
    subject = load_subject(sdir)
    assert subject.mask_voxels[LABEL_OF["kidney_left"]] == 24
    assert subject.problems == [] and _warnings(caplog) == []


def test_a_ct_without_orientation_codes_says_how_it_was_read(tmp_path, caplog):
    sdir = _subject(tmp_path, codes=(0, 0))
    ct = load_ct(sdir / "ct.nii.gz")
    (note,) = ct.notes
    assert ("s0001/ct.nii.gz has no orientation (qform_code = sform_code = 0): read as LAS with "
            "1.5 x 1.5 x 3 mm voxels centred on the origin") in note  # fmt: skip
    assert "left/right and position may be wrong" in note
    assert _warnings(caplog) == [note]
    assert note in load_subject(sdir).problems  # listed by `ctseg info` and Home
    _, said = load_ct_noting(sdir / "ct.nii.gz")  # already warned: still in predict's warnings
    assert said == [note] and _warnings(caplog) == [note]


def test_a_zero_voxel_size_is_said_with_the_1_mm_assumed(tmp_path, caplog):
    ct_hu = np.full(SHAPE, -1000, np.int16)
    path = _save(tmp_path / "ct.nii", ct_hu, codes=(1, 0), pixdim=(1.5, 1.5, 0))  # qform only
    ct = load_ct(path)
    assert ct.spacing_mm == pytest.approx((1.5, 1.5, 1.0))
    (note,) = ct.notes
    assert "gives voxel size 1.5 x 1.5 x 0 mm: 1 mm was assumed along z" in note
    assert note in _warnings(caplog)
    # an sform states the voxel size itself: ctseg assumes nothing; ITK takes pixdim there
    # (its 0 as 1 mm), which is said
    path = _save(tmp_path / "ct_sform.nii", ct_hu, codes=(0, 1), pixdim=(1.5, 1.5, 0))
    ct = load_ct(path)
    assert ct.spacing_mm == pytest.approx((1.5, 1.5, 3.0))
    (note,) = ct.notes
    assert "pixdim says 1.5 x 1.5 x 1 mm voxels, its sform 1.5 x 1.5 x 3 mm" in note


def test_a_label_file_without_orientation_is_said(tmp_path):
    path = _save(tmp_path / "pred.nii.gz", np.zeros(SHAPE, np.uint8), codes=(0, 0))
    (note,) = load_label_volume(path).notes
    assert "pred.nii.gz has no orientation" in note


def test_files_with_orientation_say_nothing(tmp_path, caplog):
    for codes in ((1, 1), (0, 2), (1, 0)):
        path = _save(tmp_path / f"ct{codes[0]}{codes[1]}.nii.gz", np.zeros(SHAPE, np.int16),
                     codes=codes)  # fmt: skip
        assert load_ct(path).notes == []
    assert _warnings(caplog) == []


def test_an_empty_folder_or_a_file_in_the_dataset_root_is_said_as_skipped(tmp_path):
    _subject(tmp_path, "s0001")
    (tmp_path / "s0002").mkdir()
    (tmp_path / "s0003.nii.gz").write_bytes(b"x")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    (tmp_path / "meta.csv").write_text("image_id;split\ns0001;train\n")
    (tmp_path / ".DS_Store").write_bytes(b"x")
    index = open_dataset(tmp_path)
    assert index.subjects == ["s0001"]
    assert index.problems == [
        "notes: skipped, a folder without ct.nii.gz or segmentations/; add the CT or move the "
        "folder out of the dataset folder",
        "s0002: skipped, an empty folder; add <id>/ct.nii.gz or remove it",
        "s0003.nii.gz: skipped, a file where a subject folder is expected (<id>/ct.nii.gz); "
        "move it out of the dataset folder",
    ]


def test_links_that_lead_nowhere_are_said_with_their_target_and_the_fix(tmp_path):
    """A subject folder, its CT, its segmentations/ or a mask behind a link whose target is
    gone (a disk not mounted), loops or is itself such a link: one line naming the target."""
    from ctseg_core.data import prepare_dataset
    from ctseg_core.data.cache import check_cache_dir
    from ctseg_core.errors import ConfigError, DataError

    fix = "restore what it points to (a disk not mounted?) or remove the link"
    data = tmp_path / "data"
    _subject(data, "s0001")
    masked = _subject(data, "s0002")
    (data / "s0003").symlink_to(tmp_path / "unmounted" / "s0003")
    (data / "s0004").symlink_to("s0004")  # a loop
    ct_gone = _subject(data, "s0005")
    (ct_gone / "ct.nii.gz").unlink()
    (ct_gone / "ct.nii.gz").symlink_to("../../scans/s0005.nii.gz")  # relative
    seg_gone = _subject(data, "s0006")
    for mask in (seg_gone / "segmentations").iterdir():
        mask.unlink()
    (seg_gone / "segmentations").rmdir()
    (seg_gone / "segmentations").symlink_to(tmp_path / "labels" / "s0006")
    beside = _subject(data, "s0007")  # its ct.nii would be read without a word
    (beside / "ct.nii.gz").rename(beside / "ct.nii")
    (beside / "ct.nii.gz").symlink_to(tmp_path / "new_ct.nii.gz")
    (masked / "segmentations" / "mid.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (masked / "segmentations" / "spleen.nii.gz").symlink_to("mid.nii.gz")  # a chain
    index = open_dataset(data)
    assert index.subjects == ["s0001", "s0002"]
    assert index.problems == [
        f"s0003: skipped, a link to {tmp_path / 'unmounted' / 's0003'}, which does not exist; "
        + fix,
        f"s0004: skipped, a link that loops (to s0004); {fix}",
        "s0005: skipped, its ct.nii.gz is a link to ../../scans/s0005.nii.gz, i.e. "
        f"{tmp_path / 'scans' / 's0005.nii.gz'}, which does not exist; {fix}",
        f"s0006: skipped, its segmentations/ is a link to {tmp_path / 'labels' / 's0006'}, "
        f"which does not exist; {fix}",
        f"s0007: skipped, its ct.nii.gz is a link to {tmp_path / 'new_ct.nii.gz'}, which does "
        f"not exist; {fix}",
    ]
    report = prepare_dataset(data, tmp_path / "cache", workers=1)
    assert sorted(report.entries) == ["s0001"]
    assert list(report.failed) == ["s0002"]
    assert report.failed["s0002"] == (  # mid.nii.gz names no structure: not read
        f"s0002: {masked / 'segmentations' / 'spleen.nii.gz'} is a link to mid.nii.gz, i.e. "
        f"{tmp_path / 'gone.nii.gz'}, which does not exist; {fix}"
    )
    # a meta.csv behind a broken link: a seeded split instead would move subjects silently
    (data / "meta.csv").symlink_to(tmp_path / "gone.csv")
    with pytest.raises(DataError, match=r"meta.csv is a link to .*gone.csv, which does not exist, "
                       r"so the splits cannot be read; restore"):  # fmt: skip
        open_dataset(data)
    (tmp_path / "root").symlink_to(tmp_path / "gone")
    with pytest.raises(DataError, match=r"dataset folder .*root is a link to .*gone, which"):
        open_dataset(tmp_path / "root")
    (tmp_path / "cache_link").symlink_to(tmp_path / "gone_cache")
    with pytest.raises(ConfigError, match=r"cache .*cache_link is a link to .*gone_cache, which"):
        check_cache_dir(tmp_path / "cache_link", data)
    with pytest.raises(ConfigError, match=r"cache .*cache_link/ctseg lies in .*cache_link, which "
                       r"is a link to .*gone_cache, which does not exist"):  # fmt: skip
        check_cache_dir(tmp_path / "cache_link" / "ctseg", data)


def test_a_prediction_behind_a_link_that_leads_nowhere_is_said_as_such(tmp_path):
    from ctseg_core.errors import DataError
    from ctseg_core.evaluation.prediction_files import find_prediction

    (tmp_path / "s0001.nii.gz").symlink_to(tmp_path / "gone" / "s0001.nii.gz")
    with pytest.raises(DataError, match=r"s0001.nii.gz is a link to .*gone/s0001.nii.gz, which "
                       r"does not exist; restore what it points to or remove the link"):  # fmt: skip
        find_prediction(tmp_path, "s0001")
    assert find_prediction(tmp_path, "s0002") is None
