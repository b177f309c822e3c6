"""Predict page with a zipped DICOM series: what reading said is on the page, by upload name."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from dicom_kit import write_series  # tests/dicom_kit.py (tests/ is on sys.path via conftest)
from markdown_kit import as_shown

pytestmark = pytest.mark.timeout(300)


def _zipped(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"series/{path.name}")
    return buffer.getvalue()


def _predict(at, data: bytes, resample: bool = False):
    at.file_uploader(key="ctseg_predict_ct_upload").set_value(("scan.zip", data, "application/zip"))
    at.run()
    at.checkbox(key="ctseg_predict_resample_uneven").set_value(resample)
    at.button(key="ctseg_predict_go").click()
    at.run(timeout=120)
    return at


def test_predict_page_names_left_out_files_and_refuses_or_resamples_a_gap(
    app_env, tiny_run, new_app, tmp_path
):
    files = write_series(tmp_path / "s", np.arange(10) * 2.0)
    files[4].write_bytes(files[4].read_bytes()[:300])
    data = _zipped(tmp_path / "s")
    at = new_app("predict")
    at.run()
    _predict(at, data)
    errors = [as_shown(e.value) for e in at.error]  # shown as plain text: escaped
    assert len(errors) == 1 and "a 4 mm gap between the slices at 6 and 10 mm" in errors[0]
    assert "scan.zip" in errors[0] and "ctseg-predict-" not in errors[0]
    # the page's own checkbox, not the CLI's flag
    assert (
        'tick "Resample a DICOM series with missing slices or uneven spacing" above' in (errors[0])
    )
    assert "--resample-uneven" not in errors[0]
    _predict(at, data, resample=True)
    assert not at.error and not at.exception
    warnings = [as_shown(w.value) for w in at.warning]
    assert any("left out 1 file" in w and "IM0005.dcm" in w for w in warnings), warnings
    assert any("resampled, as asked, onto a uniform 2 mm grid of 10" in w for w in warnings)
    assert all("ctseg-predict-" not in w for w in warnings)
    # what reading said is named by the upload (the model's domain notes follow it)
    read = [w for w in warnings if "left out" in w or "resampled" in w]
    assert len(read) == 2 and all(w.startswith("scan.zip") for w in read)
    assert at.session_state["ctseg_predict_result"]["labels_zxy"].shape == (10, 8, 8)


def test_a_file_of_a_zipped_upload_is_named_as_in_the_zip():
    """A NIfTI inside a zipped upload: the advice named the zip itself, and lost its '('."""
    from dashboard.app_pages.predict import _named

    text = (
        "/tmp/ctseg-predict-ab12/ct/dicom holds no readable DICOM series; give a folder of CT "
        ".dcm files; for a NIfTI CT give the file (/tmp/ctseg-predict-ab12/ct/dicom/"
        "00000_scan.nii.gz)"
    )
    assert _named(text, "upload.zip") == (
        "upload.zip holds no readable DICOM series; give a folder of CT .dcm files; for a NIfTI "
        "CT give the file (scan.nii.gz (in upload.zip))"
    )
    # names with spaces and parentheses (a copy's "IM (1).dcm") stay whole
    member = "/tmp/ctseg-predict-ab12/ct/dicom/00012_IM (1).dcm"
    assert _named(f"left out {member}, {member}: damaged", "s.zip") == (
        "left out IM (1).dcm (in s.zip), IM (1).dcm (in s.zip): damaged"
    )
