"""Bad input gets one clear line naming the file and the fix; the dataset folder is never written."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctseg_core.cli import main as cli_main
from ctseg_core.data import load_ct, load_subject, open_cached, open_dataset, prepare_dataset
from ctseg_core.data.volume import load_label_volume
from ctseg_core.errors import CtsegError, DataError
from ctseg_core.labels import LABEL_OF

AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _subject(root: Path, sid: str = "s0001", shape=(16, 12, 8)) -> Path:
    ct = np.full(shape, -1000, dtype=np.int16)
    ct[4:12, 3:9, 2:6] = 50
    _save(root / sid / "ct.nii.gz", ct)
    liver = np.zeros(shape, dtype=np.uint8)
    liver[4:8, 3:9, 2:6] = 1
    _save(root / sid / "segmentations" / "liver.nii.gz", liver)
    _save(root / sid / "segmentations" / "spleen.nii.gz", np.zeros(shape, np.uint8))
    return root / sid


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_truncated_gzip_names_file_and_fix(tmp_path):
    sdir = _subject(tmp_path)
    blob = (sdir / "ct.nii.gz").read_bytes()
    (sdir / "ct.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as exc:
        load_ct(sdir / "ct.nii.gz")
    assert "s0001/ct.nii.gz" in _one_line(exc) and "re-export" in str(exc.value)


def _header_only(path: Path, shape, dtype=np.int16) -> Path:
    """A .nii.gz whose header claims ``shape`` but which holds one slice of voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_sform(AFFINE, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    offset = int(header.get_data_offset()) or 352
    header.set_data_offset(offset)
    body = header.binaryblock + b"\0" * (offset - len(header.binaryblock))
    path.write_bytes(gzip.compress(body + b"\0" * (shape[0] * shape[1] * 2)))
    return path


def test_a_header_claiming_more_voxels_than_the_limit_is_refused_before_reading(
    tmp_path, monkeypatch
):
    # 1200^3 int16 claimed in ~70 bytes: nibabel would zero-fill 3.5 GB before failing
    path = _header_only(tmp_path / "s0001" / "ct.nii.gz", (1200, 1200, 1200))
    with pytest.raises(DataError) as exc:
        load_ct(path)
    message = _one_line(exc)
    assert "s0001/ct.nii.gz claims a 1200 x 1200 x 1200 grid (1,728,000,000 voxels" in message
    assert "CTSEG_MAX_VOXELS" in message
    # the limit is the admin's to move: a real image over it is read once it is raised
    sdir = _subject(tmp_path / "real")
    monkeypatch.setenv("CTSEG_MAX_VOXELS", str(16 * 12 * 8 - 1))
    with pytest.raises(DataError, match="over the limit of 1,535 voxels"):
        load_ct(sdir / "ct.nii.gz")
    monkeypatch.setenv("CTSEG_MAX_VOXELS", str(16 * 12 * 8))
    assert load_ct(sdir / "ct.nii.gz").array.shape == (16, 12, 8)
    monkeypatch.setenv("CTSEG_MAX_VOXELS", "inf")  # no limit
    assert load_ct(sdir / "ct.nii.gz").array.shape == (16, 12, 8)
    monkeypatch.setenv("CTSEG_MAX_VOXELS", "lots")
    with pytest.raises(DataError, match="CTSEG_MAX_VOXELS='lots' is not a number"):
        load_ct(sdir / "ct.nii.gz")


def test_payload_check_finds_a_short_file_without_reading_it_into_memory(tmp_path):
    from ctseg_core.data.image_limits import check_nifti_payload

    claimed = (400, 400, 300)  # 96 MB claimed, one slice present
    path = _header_only(tmp_path / "up" / "upload.nii.gz", claimed)
    with pytest.raises(DataError) as exc:
        check_nifti_payload(path, shown="ct.nii.gz")
    message = _one_line(exc)
    assert message.startswith("ct.nii.gz holds 320,352 bytes of the 96,000,352 its header claims")
    sdir = _subject(tmp_path / "real")
    check_nifti_payload(sdir / "ct.nii.gz")  # a whole file passes
    plain = tmp_path / "plain.nii"
    nib.save(nib.load(sdir / "ct.nii.gz"), plain)
    plain.write_bytes(plain.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"plain\.nii holds .* truncated"):
        check_nifti_payload(plain, shown="plain.nii")


def test_garbage_file_is_refused(tmp_path):
    path = tmp_path / "s0001" / "ct.nii.gz"
    path.parent.mkdir(parents=True)
    path.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(DataError) as exc:
        load_ct(path)
    assert "cannot be read as NIfTI" in _one_line(exc)


def test_mask_shape_mismatch(tmp_path):
    """One mask on another grid: left out, its structure not annotated, the subject's other
    masks used (the whole subject was dropped); said in one line, kept with the entry."""
    sdir = _subject(tmp_path)
    _save(sdir / "segmentations" / "liver.nii.gz", np.zeros((16, 12, 9), np.uint8))
    subject = load_subject(sdir)
    line = (
        "s0001: mask shape (16, 12, 9) does not match CT shape (16, 12, 8) in "
        "s0001/segmentations/liver.nii.gz; resample the mask onto the CT grid (liver counts "
        "as not annotated until then)"
    )
    assert subject.unused_masks == [line] and line in subject.problems
    assert not subject.annotated[LABEL_OF["liver"]] and subject.annotated[LABEL_OF["spleen"]]
    assert "liver" in subject.not_annotated


def test_a_2d_or_4d_mask_is_left_out_like_one_on_another_grid(tmp_path):
    """A mask saved as one slice or as several frames cannot lie on the CT's grid: left out,
    its structure not annotated, the subject's other masks used (the whole subject failed)."""
    sdir = _subject(tmp_path)
    _save(sdir / "segmentations" / "liver.nii.gz", np.ones((16, 12), np.uint8))
    subject = load_subject(sdir)
    assert subject.unused_masks == [
        "s0001: mask shape (16, 12) (2D) does not match CT shape (16, 12, 8) in "
        "s0001/segmentations/liver.nii.gz; save the mask as one 3D volume on the CT grid "
        "(liver counts as not annotated until then)"
    ]
    assert not subject.annotated[LABEL_OF["liver"]] and subject.annotated[LABEL_OF["spleen"]]
    _save(sdir / "segmentations" / "liver.nii.gz", np.ones((16, 12, 8, 2), np.uint8))
    (line,) = load_subject(sdir).unused_masks
    assert "mask shape (16, 12, 8, 2) (4D) does not match" in line


def test_mask_affine_mismatch(tmp_path):
    sdir = _subject(tmp_path)
    shifted = AFFINE.copy()
    shifted[0, 3] = 4.0
    _save(sdir / "segmentations" / "liver.nii.gz", np.zeros((16, 12, 8), np.uint8), shifted)
    (line,) = load_subject(sdir).unused_masks
    assert "affine of s0001/segmentations/liver.nii.gz differs" in line and "4 mm" in line
    assert "\n" not in line


def test_rgb_or_complex_voxels_are_refused_in_one_line(tmp_path):
    """An RGB NIfTI (a record of three bytes per voxel) stopped a whole evaluation with numpy's
    traceback (found by a review); complex voxels are no labels or HU either."""
    rgb_type = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])
    for name, data in (("rgb", np.zeros((16, 12, 8), rgb_type)),
                       ("complex", np.zeros((16, 12, 8), np.complex64))):  # fmt: skip
        path = _save(tmp_path / f"{name}.nii.gz", data)
        for load in (load_label_volume, load_ct):
            with pytest.raises(DataError) as exc:
                load(path)
            kind = "RGB" if name == "rgb" else "complex64"
            assert _one_line(exc).endswith(f"{name}.nii.gz holds {kind} voxels, not one number "
                                           "each; save it as a grayscale (CT) or integer "
                                           "(labels) image")  # fmt: skip


def test_2d_image_refused_and_4d_singleton_squeezed(tmp_path):
    with pytest.raises(DataError) as exc:
        load_ct(_save(tmp_path / "flat" / "ct.nii.gz", np.zeros((16, 12), np.int16), AFFINE))
    assert "(2D); a 3D volume is expected" in _one_line(exc)
    with pytest.raises(DataError) as exc:
        load_ct(_save(tmp_path / "series" / "ct.nii.gz", np.zeros((4, 4, 4, 3), np.int16)))
    assert "(4D)" in _one_line(exc)
    ct = load_ct(_save(tmp_path / "single" / "ct.nii.gz", np.ones((4, 5, 6, 1), np.int16)))
    assert ct.array.shape == (4, 5, 6)


def test_a_header_without_usable_geometry_is_refused_in_one_line(tmp_path, capsys):
    """An sform with NaN or inf, a zero voxel size or two axes along one direction: no world
    geometry to label or measure by, so a one-line refusal (it was nibabel's traceback)."""
    import struct

    data = np.zeros((8, 8, 4), np.int16)
    srow_z = 312 + 8  # the header's srow_z[2], byte offset (sform_code 1)
    for tag, value in (("nan", float("nan")), ("inf", float("inf")), ("zero", 0.0)):
        img = nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0]))
        img.header["qform_code"], img.header["sform_code"] = 0, 1
        raw = tmp_path / f"{tag}.nii"
        nib.save(img, raw)
        header = bytearray(raw.read_bytes())
        header[srow_z : srow_z + 4] = struct.pack("<f", value)
        path = tmp_path / f"{tag}.nii.gz"
        path.write_bytes(gzip.compress(bytes(header)))
        with pytest.raises(DataError) as exc:
            load_ct(path)
        assert f"{tag}.nii.gz has no usable voxel-to-world geometry" in _one_line(exc)
    assert cli_main(["stats", "--ct", str(path), "--labels", str(path)]) == 2
    assert "no usable voxel-to-world geometry" in capsys.readouterr().err


def test_nan_ct_refused_or_filled_on_request(tmp_path):
    data = np.zeros((6, 6, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    path = _save(tmp_path / "s9" / "ct.nii.gz", data)
    with pytest.raises(DataError) as exc:
        load_ct(path)
    assert "holds 2 NaN/inf voxels" in _one_line(exc)
    filled = load_ct(path, allow_nan=True)
    assert filled.array.dtype == np.int16 and int((filled.array == -1024).sum()) == 2


@pytest.mark.parametrize(
    "mask_values,dtype", [((0, 255), np.uint8), ((0.0, 1.0), np.float32), ((0, 1), np.int16)]
)
def test_masks_stored_as_0_255_or_float_are_binarised(tmp_path, mask_values, dtype):
    sdir = _subject(tmp_path)
    mask = np.full((16, 12, 8), mask_values[0], dtype=dtype)
    mask[0:2, 0:3, 0:4] = mask_values[1]
    _save(sdir / "segmentations" / "kidney_left.nii.gz", mask)
    subject = load_subject(sdir)
    assert subject.mask_voxels[LABEL_OF["kidney_left"]] == 2 * 3 * 4
    assert int((subject.labels == LABEL_OF["kidney_left"]).sum()) == 24


def test_empty_folder_and_missing_folder(tmp_path):
    with pytest.raises(DataError) as exc:
        open_dataset(tmp_path)
    assert "holds no subject folder" in _one_line(exc) and "demo-data" in str(exc.value)
    with pytest.raises(DataError) as exc:
        open_dataset(tmp_path / "nope")
    assert "does not exist" in _one_line(exc)


def test_subject_without_segmentations_is_reported_not_fatal(tmp_path):
    _subject(tmp_path, "s0001")
    sdir = _subject(tmp_path, "s0002")
    shutil.rmtree(sdir / "segmentations")
    index = open_dataset(tmp_path)
    assert index.subjects == ["s0001", "s0002"]
    assert any("s0002: no segmentations/" in p for p in index.problems)
    subject = load_subject(sdir)
    assert subject.annotated[1:].sum() == 0 and subject.labels.max() == 0


def test_unknown_structure_names_reported(tmp_path):
    sdir = _subject(tmp_path)
    _save(sdir / "segmentations" / "liver_tumour.nii.gz", np.zeros((16, 12, 8), np.uint8))
    for name in ("colon.NII.GZ", "spleen.nrrd", "aorta.nii.gz.bak", ".DS_Store", "README.txt"):
        (sdir / "segmentations" / name).write_bytes(b"x")  # another case or format: not a mask
    (sdir / "segmentations" / "qc").mkdir()  # a README or a folder without masks: not said
    subject = load_subject(sdir)
    (problem,) = [p for p in subject.problems if "segmentations:" in p]
    assert problem == (
        f"{sdir.name}/segmentations: 4 files ignored, not named as a known structure's mask "
        "(aorta.nii.gz.bak, colon.NII.GZ, liver_tumour.nii.gz, spleen.nrrd); name masks "
        "<structure>.nii.gz with TotalSegmentator v2 names"
    )
    assert subject.present == ["liver"]
    # masks one folder too deep, and other image formats, are said too
    _save(
        sdir / "segmentations" / "segmentations" / "stomach.nii.gz", np.zeros((16, 12, 8), np.uint8)
    )
    (sdir / "segmentations" / "aorta.mgz").write_bytes(b"x")
    (problem,) = [p for p in load_subject(sdir).problems if "segmentations:" in p]
    assert problem.startswith(f"{sdir.name}/segmentations: 6 files ignored")
    assert "aorta.mgz" in problem


def test_overlapping_masks_are_named(tmp_path):
    """A gallbladder mask wholly inside the liver's vanished from the labels (the liver's value
    is higher) and from coverage, said only as "N voxels belong to more than one mask"."""
    sdir = _subject(tmp_path)
    gallbladder = np.zeros((16, 12, 8), np.uint8)
    gallbladder[5:7, 4:6, 3:5] = 1  # 8 voxels, all inside the liver (4:8, 3:9, 2:6)
    _save(sdir / "segmentations" / "gallbladder.nii.gz", gallbladder)
    subject = load_subject(sdir)
    assert subject.overlap_voxels == 8 and not (subject.labels == 4).any()  # gallbladder: 4
    assert (
        f"{sdir.name}: 8 voxels belong to more than one mask (gallbladder / liver 8); the "
        "higher label value was kept" in subject.problems
    )


def test_a_stray_file_added_or_removed_after_prepare_is_said_or_forgotten(tmp_path):
    """The entry's problems name the ignored files: a prepared subject that gains one (or loses
    it) is prepared again, so `ctseg info` and Home say it (or no longer do)."""
    sdir = _subject(tmp_path / "data")
    cache = tmp_path / "cache"
    assert not [p for p in open_cached(sdir.parent, sdir.name, cache).meta["problems"]]
    stray = sdir / "segmentations" / "Liver_corrected.nii.gz"
    _save(stray, np.zeros((16, 12, 8), np.uint8))
    (problem,) = open_cached(sdir.parent, sdir.name, cache).meta["problems"]
    assert "(Liver_corrected.nii.gz)" in problem
    stray.unlink()
    assert not open_cached(sdir.parent, sdir.name, cache).meta["problems"]


def test_meta_csv_with_bom_unknown_ids_and_bad_split(tmp_path):
    _subject(tmp_path, "s0001")
    _subject(tmp_path, "s0002")
    (tmp_path / "meta.csv").write_bytes(
        "image_id;age;split\ns0001;50;train\ns0002;60;test\ns0999;70;val\n".encode("utf-8-sig")
    )
    index = open_dataset(tmp_path)
    assert index.splits == {"s0001": "train", "s0002": "test"}
    assert any("s0999" in p for p in index.problems)
    (tmp_path / "meta.csv").write_text("image_id;split\ns0001;training\n")
    with pytest.raises(DataError) as exc:
        open_dataset(tmp_path)
    assert "split 'training'; use one of train, val, test" in _one_line(exc)
    # Excel's "CSV" on Windows (cp1252): one line naming the file, not a UnicodeDecodeError
    (tmp_path / "meta.csv").write_bytes("image_id;note;split\ns0001;café;train\n".encode("cp1252"))
    with pytest.raises(DataError) as exc:
        open_dataset(tmp_path)
    assert _one_line(exc) == (
        f"{tmp_path / 'meta.csv'} is not UTF-8 text (byte 0xe9 at 29); save it as UTF-8 "
        "(Excel: CSV UTF-8)"
    )


def test_meta_csv_with_a_header_only_or_other_ids_gives_seeded_splits_said_so(tmp_path):
    """A header alone was refused as having no 'image_id' and 'split' columns (it has them),
    and a meta.csv naming none of the subjects was reported as their split's source."""
    from ctseg_core.data.dataset_root import seeded_split

    for sid in ("s0001", "s0002", "s0003"):
        _subject(tmp_path, sid)
    seeded = seeded_split(["s0001", "s0002", "s0003"], 0)
    (tmp_path / "meta.csv").write_text("image_id;split\n")
    index = open_dataset(tmp_path)
    assert index.splits == seeded and index.split_source == "seeded"
    assert "meta.csv lists no subject (a header only); all get a seeded split" in index.problems
    (tmp_path / "meta.csv").write_text("image_id;split\ns0999;train\n")
    index = open_dataset(tmp_path)
    assert index.splits == seeded and index.split_source == "seeded"
    assert any("split for none of the subjects" in p for p in index.problems)
    (tmp_path / "meta.csv").write_text("id;fold\n")
    with pytest.raises(
        DataError, match=r"no 'image_id' and 'split' columns \(found \['id', 'fold'\]\)"
    ):
        open_dataset(tmp_path)


def test_label_volume_values_above_117_refused(tmp_path):
    data = np.zeros((4, 4, 4), np.int16)
    data[0, 0, 0] = 130
    with pytest.raises(DataError) as exc:
        load_label_volume(_save(tmp_path / "pred.nii.gz", data))
    assert "label values 0..130; expected 0..117" in _one_line(exc)


def test_info_lists_problem_subjects_and_carries_on(tmp_path, capsys):
    data = tmp_path / "data"
    _subject(data, "s0001")
    bad = _subject(data, "s0002")
    _save(bad / "segmentations" / "liver.nii.gz", np.zeros((3, 3, 3), np.uint8))
    before = sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*"))
    status = cli_main(
        ["info", "--data", str(data), "--cache", str(tmp_path / "c"), "--workers", "1"]
    )
    out = capsys.readouterr().out
    assert status == 0  # one mask left out is a problem said, not a subject failed
    assert "s0001" in out and "s0002" in out and "mask shape (3, 3, 3) does not match" in out
    # nothing in the dataset folder was written
    assert sorted((p, p.stat().st_mtime_ns) for p in data.rglob("*")) == before


def test_info_json_exits_1_when_a_subject_failed(tmp_path, capsys):
    data = tmp_path / "data"
    _subject(data, "s0001")
    bad = _subject(data, "s0002")
    (bad / "segmentations" / "liver.nii.gz").write_bytes(gzip.compress(b"not a nifti" * 10))
    argv = ["info", "--data", str(data), "--cache", str(tmp_path / "c"), "--workers", "1"]
    assert cli_main([*argv, "--json"]) == 1  # as without --json: a script sees the failure
    summary = json.loads(capsys.readouterr().out)
    assert summary["failed"] == ["s0002"] and len(summary["subjects"]) == 1
    _save(bad / "segmentations" / "liver.nii.gz", np.zeros((16, 12, 8), np.uint8))
    assert cli_main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == []


def test_cli_missing_dataset_exits_2_with_one_line(tmp_path, capsys):
    assert cli_main(["info", "--data", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dataset folder") and "\n" not in err


def test_changed_source_is_rebuilt_and_interrupted_build_not_trusted(tmp_path):
    data = tmp_path / "data"
    sdir = _subject(data)
    cache = tmp_path / "cache"
    first = open_cached(data, "s0001", cache)
    assert first.voxel_counts[LABEL_OF["liver"]] == 4 * 6 * 4
    # a half-written entry (no meta.json) is ignored and replaced
    leftovers = first.folder.parent / ".tmp-crashed"
    leftovers.mkdir()
    (leftovers / "ct.npy").write_bytes(b"partial")
    mask = np.zeros((16, 12, 8), np.uint8)
    mask[4:6, 3:9, 2:6] = 1
    _save(sdir / "segmentations" / "liver.nii.gz", mask)
    second = open_cached(data, "s0001", cache)
    assert second.folder != first.folder and not first.folder.exists()
    assert second.voxel_counts[LABEL_OF["liver"]] == 2 * 6 * 4
    report = prepare_dataset(data, cache, workers=1)
    assert report.reused == ["s0001"]


_OPEN_FILES_SCRIPT = """
import os, resource, sys
from ctseg_core.config import DataConfig, ModelConfig, RunConfig
from ctseg_core.data.slices import SliceDataset
from ctseg_core.errors import CtsegError, DataError
low = len(os.listdir("/proc/self/fd")) + 6  # fewer than two per subject on top
hard = low if sys.argv[2] == "hard" else resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
config = RunConfig(DataConfig(data_root=sys.argv[1], target_size=(64, 64)),
                   ModelConfig(features=[4, 8, 16, 32], bottleneck=32))
try:
    dataset = SliceDataset(config, "all")
    for i in range(len(dataset)):  # every subject's two memory maps open at once
        dataset[i]
except DataError as exc:
    print("DataError:", exc)
else:
    print("read", len(dataset.subjects), resource.getrlimit(resource.RLIMIT_NOFILE)[0] > low)
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
@pytest.mark.parametrize("limit", ["soft", "hard"])
def test_a_dataset_needing_more_open_files_raises_the_limit_or_says_how(limit, phantom_root):
    """Every cached subject keeps two memory maps (two open files): the full dataset needs
    more than the 1,024 many systems allow by default."""
    import subprocess
    import sys

    prepare_dataset(phantom_root, workers=1)  # the subprocess only opens the cache
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_FILES_SCRIPT, str(phantom_root), limit],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    if limit == "soft":  # raised up to the hard limit, and every slice was read
        assert done.stdout.split() == ["read", "6", "True"]
    else:
        assert "split 'all'" in done.stdout and "ulimit -n" in done.stdout


_BOTH_SPLITS_SCRIPT = """
import os, resource, sys
from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.data.dataset_root import open_dataset
from ctseg_core.errors import CtsegError
from ctseg_core.training.trainer import Trainer
index = open_dataset(sys.argv[1])
largest = max(len(index.subjects_in("train")), len(index.subjects_in("val")))
# room for either split's two maps per subject, not for both splits'
low = len(os.listdir("/proc/self/fd")) + 2 * largest + 64 + 1
resource.setrlimit(resource.RLIMIT_NOFILE, (low, low))
config = RunConfig(DataConfig(data_root=sys.argv[1], target_size=(64, 64)),
                   ModelConfig(features=[4, 8, 16, 32], bottleneck=32),
                   TrainConfig(epochs=1, steps_per_epoch=1, device="cpu"))
try:
    Trainer(config, checkpoints_root=sys.argv[2]).run()
except CtsegError as exc:
    print("refused:", exc)
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_training_reserves_open_files_for_both_splits_before_it_starts(phantom_root, tmp_path):
    """The training set's CT maps open lazily in the first epoch, after the validation set has
    taken its files: a limit checked split by split let the full dataset fail at epoch's end."""
    import subprocess
    import sys

    prepare_dataset(phantom_root, workers=1)
    done = subprocess.run(
        [sys.executable, "-c", _BOTH_SPLITS_SCRIPT, str(phantom_root), str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused: the train and val splits of" in done.stdout, done.stdout
    assert "ulimit -n" in done.stdout


def test_a_cache_inside_the_dataset_or_on_a_file_is_refused(phantom_root, tmp_path):
    from ctseg_core.data.cache import open_cached
    from ctseg_core.data.prepare import prepare_dataset
    from ctseg_core.errors import ConfigError

    with pytest.raises(ConfigError, match="lies inside the dataset"):
        prepare_dataset(phantom_root, phantom_root / "cache")
    with pytest.raises(ConfigError, match="lies inside the dataset"):
        open_cached(phantom_root, "s0000", phantom_root)
    assert not (phantom_root / "cache").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file; give a folder"):
        prepare_dataset(phantom_root, tmp_path / "file")
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        prepare_dataset(phantom_root, tmp_path / "cache", workers=-3)


def test_paths_of_the_wrong_kind_get_errors_that_say_so(s0000_root, tmp_path):
    from ctseg_core.data.dataset_root import open_dataset
    from ctseg_core.data.volume import read_image
    from ctseg_core.models.checkpoint import load_checkpoint

    with pytest.raises(DataError, match="is a file; give the dataset folder"):
        open_dataset(s0000_root / "s0000" / "ct.nii.gz")
    with pytest.raises(DataError, match="is one subject; give the dataset folder above it"):
        open_dataset(s0000_root / "s0000")
    with pytest.raises(DataError, match=r"is a folder; give a \.nii\.gz file"):
        read_image(s0000_root / "s0000")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pth").write_bytes(b"")
    with pytest.raises(CtsegError, match=r"is a folder; give a checkpoint file: .*best\.pth"):
        load_checkpoint(tmp_path / "run")


def test_two_files_for_one_ct_or_one_structure_and_a_subject_in_two_splits_are_refused(
    tmp_path,
):
    """Which file is the mask, which split holds the subject? A guess trains on one and lets
    edits to the other pass unseen (and a subject in two splits can leak into validation): the
    subject, or the meta.csv, is refused in one line naming both."""
    from ctseg_core.data.dataset_root import read_meta_csv

    root = tmp_path / "data"
    sub = _subject(root, "s0001")
    _subject(root, "s0002")
    mask = sub / "segmentations" / "liver.nii.gz"
    shutil.copy(mask, sub / "segmentations" / "liver.nii")
    with pytest.raises(DataError) as exc:
        load_subject(sub)
    assert "holds both liver.nii and liver.nii.gz; keep one file per structure" in _one_line(exc)
    report = prepare_dataset(root, tmp_path / "cache")
    assert "keep one file per structure" in report.failed["s0001"] and "s0002" in report.built
    (sub / "segmentations" / "liver.nii").unlink()
    shutil.copy(sub / "ct.nii.gz", sub / "ct.nii")
    with pytest.raises(DataError) as exc:
        load_subject(sub)
    assert "holds both ct.nii.gz and ct.nii; keep one CT" in _one_line(exc)
    meta = root / "meta.csv"
    meta.write_text("image_id;split\ns0001;train\ns0002;val\ns0001;train\n")
    assert read_meta_csv(meta) == {"s0001": "train", "s0002": "val"}  # a repeated row is fine
    meta.write_text("image_id;split\ns0001;train\ns0002;val\ns0001;test\n")
    with pytest.raises(DataError) as exc:
        read_meta_csv(meta)
    assert "lists subject s0001 in both train and test; keep one row per subject" in _one_line(exc)


def test_a_build_left_by_a_killed_prepare_is_removed_by_the_next_one(tmp_path):
    """A prepare killed mid-build (out of memory) left its ``.tmp-`` folder forever (10 MB a
    subject on real data); the next build of the subject removes one hours old, and leaves a
    fresh one (another process may be building it now)."""
    import os
    import time

    from ctseg_core.data.cache import STALE_BUILD_S, entry_dir

    root = tmp_path / "data"
    _subject(root, "s0001")
    folder = entry_dir(tmp_path / "cache", root, "s0001")
    stale, fresh = folder / ".tmp-abc-killed", folder / ".tmp-def-running"
    for left in (stale, fresh):
        left.mkdir(parents=True)
        (left / "ct.npy").write_bytes(b"x" * 1000)
    old = time.time() - STALE_BUILD_S - 60
    os.utime(stale, (old, old))
    report = prepare_dataset(root, tmp_path / "cache")
    assert report.built == ["s0001"]
    assert not stale.exists() and fresh.exists()


def test_an_entry_prepared_again_while_a_reader_holds_it_unopened_gives_one_line(tmp_path):
    """A long run opens its subjects' arrays when it first uses them; a mask re-saved and
    prepared again by another process (another run, the dashboard) removed its entry: the
    reader's next use named a bare .npy file."""
    import os
    import time

    root = tmp_path / "data"
    _subject(root, "s0001")
    held = open_cached(root, "s0001", tmp_path / "cache")  # arrays not opened yet
    mask = next((root / "s0001" / "segmentations").iterdir())
    later = time.time_ns() + 10**9
    os.utime(mask, ns=(later, later))
    again = open_cached(root, "s0001", tmp_path / "cache")
    assert again.folder != held.folder and not held.folder.exists()
    with pytest.raises(DataError) as exc:
        _ = held.ct
    assert _one_line(exc).startswith("s0001: its prepared files (")
    assert "were prepared again while this read them; start again" in str(exc.value)
    assert again.ct.shape == again.labels.shape


def test_a_full_cache_disk_stops_the_prepare_with_one_line(tmp_path, monkeypatch):
    """It failed every subject with a bare OSError (1,227 lines on the full dataset), naming
    neither the cache nor a fix; no half-built entry is left. numpy's own short write on a full
    disk carries no errno ("N requested and M written"), the write of a new file one."""
    import errno
    import shutil
    from collections import namedtuple

    for sid in ("s0001", "s0002", "s0003"):
        _subject(tmp_path / "data", sid)
    real_save, real_usage = np.save, shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    for failure in (OSError("1536 requested and 512 written"),
                    OSError(errno.ENOSPC, "No space left on device")):  # fmt: skip

        def full(path, array, *args, failure=failure, **kwargs):  # a disk with 1 kB left
            if str(path).endswith("ct.npy"):
                raise failure
            return real_save(path, array, *args, **kwargs)

        monkeypatch.setattr(np, "save", full)
        monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1024, 1024))
        with pytest.raises(DataError) as exc:
            prepare_dataset(tmp_path / "data", tmp_path / "cache", workers=1)
        assert _one_line(exc).startswith(
            f"no space left for the preprocessing cache {tmp_path / 'cache'} (0 MB free, "
            "preparing s0001); free space there, or give another cache folder"
        )
        assert not [p for p in (tmp_path / "cache").rglob("*.npy")]
    # a short write with room to spare is no full disk: each subject fails alone, said
    monkeypatch.setattr(shutil, "disk_usage", real_usage)
    monkeypatch.setattr(np, "save", lambda path, array, *a, **k: (_ for _ in ()).throw(
        OSError("1536 requested and 512 written")))  # fmt: skip
    report = prepare_dataset(tmp_path / "data", tmp_path / "cache", workers=1)
    assert sorted(report.failed) == ["s0001", "s0002", "s0003"]
    assert report.failed["s0002"] == "s0002: OSError: 1536 requested and 512 written"


def test_payload_check_refuses_huge_header_extensions_before_nibabel_reads_them(tmp_path):
    """A 0.3 MB upload whose header extension unpacks to 300 MB of zeros: nibabel reads the
    extensions whole before the size checks (~313 MB for one small file); refused from the raw
    header. A file with a small extension passes."""
    import resource
    import struct

    from ctseg_core.data.image_limits import check_nifti_payload

    def write(path, extension_bytes, vox_offset=None):
        header = nib.Nifti1Header()
        header.set_data_shape((4, 4, 4))
        header.set_data_dtype(np.int16)
        header.set_sform(np.eye(4), 1)
        header["vox_offset"] = vox_offset or 352 + extension_bytes
        with gzip.open(path, "wb", compresslevel=9) as f:
            f.write(header.binaryblock + b"\x01\x00\x00\x00")  # one extension follows
            f.write(struct.pack("<ii", extension_bytes, 4))  # its size, code 4 (AFNI)
            left = extension_bytes - 8
            while left > 0:
                f.write(b"\0" * min(left, 1 << 20))
                left -= 1 << 20
            f.write(np.zeros(64, np.int16).tobytes())

    big = tmp_path / "big.nii.gz"
    write(big, 300 << 20)
    assert big.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError) as exc:
        check_nifti_payload(big, shown="upload.nii.gz")
    assert _one_line(exc).startswith("upload.nii.gz holds 300 MB of header extensions")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KB
    # vox_offset leaves 16 bytes, the extension's own size claims 200 MB: nibabel reads that
    claims = tmp_path / "claims.nii.gz"
    write(claims, 200 << 20, vox_offset=368)
    with pytest.raises(DataError) as exc:
        check_nifti_payload(claims, shown="upload.nii.gz")
    assert _one_line(exc).startswith("upload.nii.gz holds 200 MB of header extensions")
    small = tmp_path / "small.nii.gz"
    write(small, 1 << 10)
    check_nifti_payload(small)


def _two_subjects(tmp_path: Path, split: str, predicted: list[str]) -> tuple[Path, Path]:
    """(dataset root, predictions folder): s0001 and s0002 of ``split`` with liver and spleen
    masks, and a prediction of each labelling ``predicted`` where their masks are."""
    root = tmp_path / "data"
    for sid in ("s0001", "s0002"):
        sdir = _subject(root, sid)
        spleen = np.zeros((16, 12, 8), dtype=np.uint8)
        spleen[10:14, 3:9, 2:6] = 1
        _save(sdir / "segmentations" / "spleen.nii.gz", spleen)
    (root / "meta.csv").write_text(f"image_id;split\ns0001;{split}\ns0002;{split}\n")
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    boxes = {"liver": (slice(4, 8), slice(3, 9), slice(2, 6)),
             "spleen": (slice(10, 14), slice(3, 9), slice(2, 6))}  # fmt: skip
    for sid in ("s0001", "s0002"):
        labels = np.zeros((16, 12, 8), dtype=np.uint8)
        for name in predicted:
            labels[boxes[name]] = LABEL_OF[name]
        _save(predictions / f"{sid}.nii.gz", labels)
    return root, predictions


def test_a_subject_with_one_mask_on_another_grid_is_scored_and_trained_on_the_rest(tmp_path):
    """A review's case: one structure's mask downsampled dropped the subject from evaluate (and
    from training); now the subject is scored on its other structures, and the mask left out
    is said in the evaluation's notes and in ``ctseg info``'s problems."""
    from ctseg_core.data.summary import summarize_dataset
    from ctseg_core.evaluation.evaluate import evaluate_predictions

    root, predictions = _two_subjects(tmp_path, "val", ["liver", "spleen"])
    _save(root / "s0002" / "segmentations" / "liver.nii.gz", np.zeros((8, 6, 4), np.uint8),
          np.diag([4.0, 4.0, 8.0, 1.0]))  # fmt: skip
    results = evaluate_predictions(root, "val", predictions, tmp_path / "out", report=False,
                                   cache_dir=tmp_path / "cache")  # fmt: skip
    scored = results.set_index(["subject", "structure"])["dice"]
    assert scored[("s0001", "liver")] == 1.0 and scored[("s0002", "spleen")] == 1.0
    assert ("s0002", "liver") not in scored.index  # not annotated: not scored
    (note,) = [n for n in results.attrs["notes"] if "s0002/segmentations/liver.nii.gz" in n]
    assert note.startswith("s0002: mask shape (8, 6, 4) does not match CT shape (16, 12, 8)")
    summary = summarize_dataset(root, tmp_path / "cache")
    assert summary["failed"] == [] and note in summary["problems"]


def test_a_subject_whose_masks_are_all_on_another_grid_is_skipped_saying_so(tmp_path, capsys):
    """Masks exported at another resolution: every one on another grid. One line for the
    subject (not one per mask), and in an evaluation it is skipped with that line (exit 1),
    not scored as "nothing annotated (no mask file)"; alone, the one-line refusal names it."""
    from ctseg_core.data.summary import summarize_dataset

    root, predictions = _two_subjects(tmp_path, "test", ["liver"])
    for name in ("liver", "spleen"):  # s0001's at half the resolution
        _save(root / "s0001" / "segmentations" / f"{name}.nii.gz", np.zeros((8, 6, 4), np.uint8),
              np.diag([4.0, 4.0, 8.0, 1.0]))  # fmt: skip
    cache = tmp_path / "cache"
    (line,) = summarize_dataset(root, cache)["problems"]
    assert line.startswith(
        "s0001: 2 masks are on another grid than the CT (spleen, liver), counted as not "
        "annotated until they are resampled onto it; the first: mask shape (8, 6, 4)"
    )
    argv = ["evaluate", "--data", str(root), "--split", "test", "--predictions",
            str(predictions), "--cache", str(cache)]  # fmt: skip
    assert cli_main([*argv, "--out", str(tmp_path / "both"), "--meshes", "1"]) == 1
    skipped = (tmp_path / "both" / "skipped_test.csv").read_text()
    assert "s0001" in skipped and "2 masks are on another grid" in skipped
    assert "  - s0001: 2 masks are on another grid" in capsys.readouterr().err  # named once
    # its report pages are not written (it took the only mesh slot)
    assert [p.name for p in (tmp_path / "both").glob("3d_*")] == ["3d_s0002.html"]
    assert cli_main([*argv, "--subjects", "s0001", "--out", str(tmp_path / "one")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "s0001: 2 masks are on another grid than the CT" in err
    assert "no mask file" not in err
