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


def _zipped_series_loads(tmp_path, series: Path):
    """The Predict page's path for a .zip: unpack flat, then the library reads the series."""
    from ctseg_core.data.volume import load_ct

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(series.iterdir()):
            archive.write(path, f"export/series1/{path.name}")
    folder = save_ct_upload("s0001_dicom.zip", buffer.getvalue(), tmp_path)
    ct = load_ct(folder)
    assert ct.array.dtype.kind == "i" and ct.array.min() < -500 < 500 < ct.array.max()
    return ct


def test_a_zipped_dicom_series_of_real_slices_loads_as_the_ct(tmp_path, derived_dicom):
    """s0000's slices as a DICOM series (tests/conftest.py: LPS, 1.5 x 2.0 x 2.5 mm)."""
    ct = _zipped_series_loads(tmp_path, derived_dicom)
    assert ct.array.shape == (122, 101, 20)
    assert ct.spacing_mm == pytest.approx((1.5, 2.0, 2.5), abs=0.01)


def test_a_zipped_real_dicom_series_loads_as_the_ct(tmp_path, shared_extra):
    """The real scanner series of ../shared (optional, skipped without it)."""
    ct = _zipped_series_loads(tmp_path, shared_extra / "dicom_s0001")
    assert ct.array.shape == (512, 512, 20)
    assert ct.spacing_mm == pytest.approx((0.977, 0.977, 2.0), abs=0.01)


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


def _zip(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _written(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("members", "said"),
    [
        ({"IM1.dcm": bytes(8 << 20)}, r"IM1\.dcm unpacks [\d,]+ times larger than it is packed"),
        ({f"IM{i}.dcm": bytes(512 << 10) for i in range(16)}, r"the zip unpacks [\d,]+ times"),
    ],
    ids=["one-member", "many-small-members"],
)
def test_a_zip_of_zeros_is_refused_on_its_ratio_before_anything_is_written(tmp_path, members, said):
    data = _zip(members)
    assert len(data) < 64 << 10  # 8 MB of zeros in a few KB
    with pytest.raises(DataError, match=r"^bomb\.zip: " + said) as err:
        save_ct_upload("bomb.zip", data, tmp_path / "up")
    assert "limit is 100" in str(err.value) and "\n" not in str(err.value)
    assert _written(tmp_path) == 0


def test_a_zip_larger_than_a_series_within_the_voxel_limit_is_refused(tmp_path, monkeypatch):
    """The cap follows CTSEG_MAX_VOXELS: int16 voxels plus an allowance for the headers."""
    import os

    from ctseg_core.data import zip_series

    monkeypatch.setenv("CTSEG_MAX_VOXELS", str(1 << 20))  # 2 MB of int16 voxels
    monkeypatch.setattr(zip_series, "HEADER_ALLOWANCE_BYTES", 0)
    assert zip_series.series_byte_limit() == 2 << 20
    noise = os.urandom(3 << 20)  # does not pack: the ratio is no help here
    data = _zip({"a.dcm": noise[: 1 << 20], "b.dcm": noise[1 << 20 :]}, zipfile.ZIP_STORED)
    with pytest.raises(DataError, match=r"^big\.zip unpacks to 3 MB or more, over the 2 MB "):
        save_ct_upload("big.zip", data, tmp_path / "up")
    assert _written(tmp_path) == 0  # refused on the declared sizes, before writing
    fits = _zip({"a.dcm": noise[: 1 << 20]}, zipfile.ZIP_STORED)
    folder = save_ct_upload("fits.zip", fits, tmp_path / "ok")
    assert [p.read_bytes() == noise[: 1 << 20] for p in folder.iterdir()] == [True]


def test_a_zip_whose_header_understates_a_member_is_refused(tmp_path):
    """Its central directory and local header declare 1,000 bytes (with their CRC) while the
    stream holds 6 MB: zipfile cut it at 1,000 bytes unseen; the real bytes are counted now."""
    import struct
    import zlib

    data = bytearray(_zip({"IM1.dcm": bytes(6 << 20)}))
    crc = zlib.crc32(bytes(1000))
    for signature, crc_at in ((b"PK\x03\x04", 14), (b"PK\x01\x02", 16)):
        start = data.index(signature)
        struct.pack_into("<I", data, start + crc_at, crc)
        struct.pack_into("<I", data, start + crc_at + 8, 1000)  # uncompressed size
    with pytest.raises(DataError, match=r"^liar\.zip: IM1\.dcm unpacks to more than the 1,000 "):
        save_ct_upload("liar.zip", bytes(data), tmp_path / "up")
    assert _written(tmp_path) == 0


def test_a_zip_member_is_unpacked_in_chunks_never_whole(tmp_path):
    """Each member was read whole into memory before it was written (3.9 GiB of zeros took the
    server from 1.1 to 9 GB); now the copy holds about a megabyte at a time."""
    import os
    import tracemalloc

    payload = os.urandom(24 << 20)
    data = _zip({"IM1.dcm": payload}, zipfile.ZIP_STORED)
    tracemalloc.start()
    try:
        folder = save_ct_upload("big.zip", data, tmp_path / "up")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [p.stat().st_size for p in folder.iterdir()] == [24 << 20]
    assert peak < 6 << 20, f"{peak / 2**20:.1f} MB held while unpacking a 24 MB member"
