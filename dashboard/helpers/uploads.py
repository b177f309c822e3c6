"""Uploaded files to disk: a CT (.nii, .nii.gz, or a .zip of one DICOM series) or a checkpoint."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath, PureWindowsPath

from ctseg_core.data.image_limits import check_nifti_payload
from ctseg_core.data.zip_series import unpack_zip_flat
from ctseg_core.errors import DataError

CT_SUFFIXES = (".nii.gz", ".nii", ".zip")


def ct_kind(name: str) -> str:
    """ "nifti" or "dicom-zip" from an upload's file name; DataError for anything else."""
    lower = name.lower()
    if lower.endswith((".nii.gz", ".nii")):
        return "nifti"
    if lower.endswith(".zip"):
        return "dicom-zip"
    raise DataError(
        f"{name} is not a CT this page reads; upload a .nii or .nii.gz file, or a .zip of one "
        "DICOM series"
    )


def upload_label(name: str) -> str:
    """An upload's name as safe to show and to build file names from: 'ct.nii.gz' for '../x/ct.nii.gz'.

    The browser sends the name as it likes (a client may send '/etc/x' or '..\\x'): only its last
    part is kept, and only letters, digits, '.', '_' and '-' (at most 120 characters).
    """
    base = PurePosixPath(PureWindowsPath(name).name).name
    return re.sub(r"[^\w.-]", "_", base).lstrip(".")[:120] or "upload"


def result_stem(name: str) -> str:
    """The stem for the files made from an upload: 'ct' for 'ct.nii.gz' (see upload_label)."""
    label = upload_label(name)
    for suffix in (*CT_SUFFIXES, ".pth", ".pt"):
        if label.lower().endswith(suffix) and len(label) > len(suffix):
            return label[: -len(suffix)]
    return label


def save_ct_upload(name: str, data: bytes, folder: Path) -> Path:
    """Write an uploaded CT under ``folder``; returns the NIfTI file or the DICOM folder to load.

    A zip is unpacked flat (member paths are dropped, so nothing lands outside ``folder``),
    streamed and within the limits of ``ctseg_core.data.zip_series`` (zip bombs are refused).
    """
    kind = ct_kind(name)
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "nifti":
        target = folder / ("upload.nii.gz" if name.lower().endswith(".gz") else "upload.nii")
        target.write_bytes(data)
        # before anything allocates what the header claims (72 bytes can claim gigabytes)
        check_nifti_payload(target, shown=upload_label(name))
        return target
    target = folder / "dicom"
    # streamed, with limits on size and compression ratio a zip bomb cannot pass
    unpack_zip_flat(data, target, upload_label(name))
    return target


def save_checkpoint_upload(name: str, data: bytes, folder: Path) -> Path:
    """Write an uploaded checkpoint (.pth/.pt) under ``folder``; it is loaded weights-only later."""
    if not name.lower().endswith((".pth", ".pt")):
        raise DataError(f"{name} is not a checkpoint; upload a .pth file written by ctseg")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / upload_label(name)  # its own folder: the name is the result's heading
    target.write_bytes(data)
    return target
