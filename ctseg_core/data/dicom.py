"""DICOM series input through SimpleITK's series reader (GDCM sorts slices; we never hand-sort).

The result is a NIfTI image in world RAS+ coordinates, as dcm2niix/dicom2nifti would write it,
so the rest of the library treats a DICOM folder exactly like a ``ct.nii.gz``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

# SimpleITK works in LPS+ world coordinates, NIfTI in RAS+.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def list_series(folder: str | Path) -> dict[str, list[str]]:
    """Series instance UID -> sorted file names of that series, for every series in ``folder``."""
    import SimpleITK as sitk

    folder = str(folder)
    reader = sitk.ImageSeriesReader()
    # ITK prints "No Series were found" itself for a folder without DICOM; the caller says it
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return {
            uid: list(reader.GetGDCMSeriesFileNames(folder, uid))
            for uid in reader.GetGDCMSeriesIDs(folder)
        }
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def read_dicom_series(folder: str | Path) -> nib.Nifti1Image:
    """Read the CT series in ``folder`` as an int16 NIfTI image (HU, RAS+ affine).

    When the folder holds several series the largest is read and the choice is logged (the
    other UIDs with their slice counts). Raises DataError when there is no DICOM series.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; give a folder of .dcm files of one CT series")
    series = list_series(folder)
    if not series:
        nifti = sorted(folder.glob("*.nii.gz")) + sorted(folder.glob("*.nii"))
        hint = f"; for a NIfTI CT give the file ({nifti[0]})" if nifti else ""
        raise DataError(
            f"{folder} holds no readable DICOM series; give a folder of CT .dcm files{hint}"
        )
    uid = max(series, key=lambda u: len(series[u]))
    if len(series) > 1:
        others = ", ".join(f"{u} ({len(f)} files)" for u, f in series.items() if u != uid)
        log.warning(
            "%s holds %d series; reading the largest, %s (%d files); others: %s",
            folder, len(series), uid, len(series[uid]), others,
        )  # fmt: skip
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(series[uid])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DataError(f"{folder}: DICOM series {uid} cannot be read ({first_line})") from None
    data_zyx = sitk.GetArrayFromImage(image)  # (Z, Y, X): numpy order is reversed in SimpleITK
    data = np.ascontiguousarray(data_zyx.transpose(2, 1, 0))
    if np.issubdtype(data.dtype, np.floating):
        data = np.rint(data)
    data = np.clip(data, -32768, 32767).astype(np.int16)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    spacing = np.array(image.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ np.array(image.GetOrigin())
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img
