"""Uploaded CTs and checkpoints: accepted kinds, flat zip extraction, clear refusals."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from ctseg_core.errors import DataError
from dashboard.helpers.uploads import (
    ct_kind,
    result_stem,
    save_checkpoint_upload,
    save_ct_upload,
    upload_label,
)


@pytest.mark.parametrize(
    ("name", "kind"),
    [("ct.nii.gz", "nifti"), ("CT.NII", "nifti"), ("series.zip", "dicom-zip")],
)
def test_ct_kinds_by_name(name, kind):
    assert ct_kind(name) == kind


@pytest.mark.parametrize("name", ["ct.mha", "notes.txt", "ct.gz", "model.pth"])
def test_other_files_are_refused_with_the_accepted_kinds(name):
    with pytest.raises(DataError, match=r"\.nii or \.nii\.gz.*\.zip"):
        ct_kind(name)


def test_zip_is_unpacked_flat_inside_the_folder(tmp_path):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("series/IM0001.dcm", b"a")
        archive.writestr("../../escape.dcm", b"b")
        archive.writestr("series/.DS_Store", b"c")
    folder = save_ct_upload("series.zip", buffer.getvalue(), tmp_path / "up")
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["00000_IM0001.dcm", "00001_escape.dcm"]
    assert not (tmp_path / "escape.dcm").exists()
    assert not (tmp_path / "up" / "upload.zip").exists()


def test_broken_zip_and_empty_zip_are_refused(tmp_path):
    with pytest.raises(DataError, match="not a readable zip"):
        save_ct_upload("x.zip", b"not a zip", tmp_path / "a")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w"):
        pass
    with pytest.raises(DataError, match="holds no files"):
        save_ct_upload("y.zip", buffer.getvalue(), tmp_path / "b")


def test_checkpoint_upload_needs_a_pth_name(tmp_path):
    assert save_checkpoint_upload("m.pth", b"x", tmp_path).read_bytes() == b"x"
    with pytest.raises(DataError, match=r"\.pth"):
        save_checkpoint_upload("m.pkl", b"x", tmp_path)


def test_a_zipped_real_dicom_series_loads_as_the_ct(tmp_path):
    """The Predict page's path for a .zip: unpack flat, then the library reads the series."""
    from ctseg_core.data.volume import load_ct

    series = (
        Path(__file__).resolve().parents[2].parent / "shared" / "data" / "extra" / "dicom_s0001"
    )
    if not series.is_dir():
        pytest.skip("../shared/data/extra/dicom_s0001 is not available")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(series.iterdir()):
            archive.write(path, f"export/series1/{path.name}")
    folder = save_ct_upload("s0001_dicom.zip", buffer.getvalue(), tmp_path)
    ct = load_ct(folder)
    assert ct.array.shape == (512, 512, 20)
    assert ct.spacing_mm == pytest.approx((0.977, 0.977, 2.0), abs=0.01)
    assert ct.array.dtype.kind == "i" and ct.array.min() < -500 < 500 < ct.array.max()


@pytest.mark.parametrize(
    ("name", "label", "stem"),
    [
        ("ct.nii.gz", "ct.nii.gz", "ct"),
        ("/tmp/outside/pwn.nii.gz", "pwn.nii.gz", "pwn"),
        ("../rev/victim.nii", "victim.nii", "victim"),
        ("..\\..\\win.zip", "win.zip", "win"),
        ("s 01$(rm).nii.gz", "s_01__rm_.nii.gz", "s_01__rm_"),
        ("..", "upload", "upload"),
        ("", "upload", "upload"),
        (".nii.gz", "nii.gz", "nii.gz"),
        ("best.pth", "best.pth", "best"),
    ],
)
def test_upload_names_never_make_a_path(name, label, stem):
    # a client sends any name it likes; results are named from its last part only
    assert upload_label(name) == label
    assert result_stem(name) == stem
    assert "/" not in label and "\\" not in label and not label.startswith(".")


def test_hostile_names_are_saved_inside_the_folder(tmp_path, s0000_root):
    data = (s0000_root / "s0000" / "ct.nii.gz").read_bytes()
    saved = save_ct_upload("../../escaped.nii.gz", data, tmp_path / "ct")
    assert saved.parent == tmp_path / "ct"
    checkpoint = save_checkpoint_upload("/tmp/x/../best.pth", b"x", tmp_path / "checkpoint")
    assert checkpoint == tmp_path / "checkpoint" / "best.pth"
    assert sorted(p.name for p in tmp_path.rglob("*")) == [
        "best.pth", "checkpoint", "ct", "upload.nii.gz"
    ]  # fmt: skip


def test_an_upload_claiming_more_than_it_holds_is_refused_with_its_name(tmp_path):
    import gzip

    import nibabel as nib
    import numpy as np

    header = nib.Nifti1Header()
    header.set_data_shape((512, 512, 400))  # 200 MB claimed in a few hundred bytes
    header.set_data_dtype(np.int16)
    data = gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 1024)
    with pytest.raises(DataError, match=r"^ct\.nii\.gz holds 1,376 bytes of the 209,715,200 "):
        save_ct_upload("dir/ct.nii.gz", data, tmp_path)


def test_an_upload_whose_voxels_would_take_too_much_memory_is_refused(tmp_path, monkeypatch):
    """A gzip of uniform float64 voxels is ~1000x smaller than its voxels: the bytes it would
    take once read are limited as an int16 grid of CTSEG_MAX_VOXELS voxels would be."""
    import gzip

    import nibabel as nib
    import numpy as np

    monkeypatch.setenv("CTSEG_MAX_VOXELS", str(64**3))  # 0.5 MB as int16
    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.float64), np.eye(4)), path)
    data = path.read_bytes()
    assert len(data) < 10_000 and len(gzip.decompress(data)) > 2_000_000
    with pytest.raises(DataError, match=r"^flat\.nii\.gz would take 0\.0 GB once read \(float64\)"):
        save_ct_upload("flat.nii.gz", data, tmp_path / "up")
    as_int16 = tmp_path / "int16.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 64), np.int16), np.eye(4)), as_int16)
    save_ct_upload("int16.nii.gz", as_int16.read_bytes(), tmp_path / "ok")  # the same grid fits
