"""A multi-frame (enhanced) DICOM CT in one file: read whole by SimpleITK, and only where its
frames lie evenly in storage order by their own positions (``check_frames``)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError

#: SimpleITK works in LPS+ world coordinates, NIfTI in RAS+
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def nifti_from_lps(
    data: np.ndarray, axes_lps: np.ndarray, origin_lps: np.ndarray
) -> nib.Nifti1Image:
    """An int16 (X, Y, Z) array on LPS axes (3, 3: one column per array axis, mm) as RAS+ NIfTI."""
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ axes_lps
    affine[:3, 3] = LPS_TO_RAS @ origin_lps
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return img


def read_volume_file(folder: Path, path: Path) -> nib.Nifti1Image:
    """A single multi-frame DICOM file, read whole by SimpleITK."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DataError(f"{folder}: {path.name} cannot be read ({last})") from None
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # SimpleITK's numpy order is (Z, Y, X)
    if np.issubdtype(data.dtype, np.floating):
        data = np.rint(data)
    data = np.ascontiguousarray(np.clip(data, -32768, 32767).astype(np.int16))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    check_frames(folder, path, data.shape[2], direction[:, 2], image.GetSpacing()[2])
    return nifti_from_lps(
        data, direction @ np.diag(image.GetSpacing()), np.array(image.GetOrigin())
    )


def check_frames(folder: Path, path: Path, count: int, normal, step_mm: float) -> None:
    """DataError unless a multi-frame file's frames lie in storage order, ``step_mm`` apart
    along ``normal`` (LPS) and not sideways, by their own positions: SimpleITK stacks them as
    stored at one step, and a missing, uneven, unsorted or tilted frame would be put where it
    is not."""
    import pydicom

    if count < 2:
        return
    try:
        header = pydicom.dcmread(str(path), stop_before_pixels=True)
        frames = header.get("PerFrameFunctionalGroupsSequence") or []
        positions = np.array(
            [[float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient] for f in frames]
        )
    except (AttributeError, IndexError, TypeError, ValueError, pydicom.errors.InvalidDicomError):
        positions = np.zeros((0, 3))
    fix = "convert it with dcm2niix and give the .nii.gz"
    if len(positions) != count:
        raise DataError(
            f"{folder}: {path.name} is a multi-frame file whose {count} frames do not each state "
            f"their position, so their spacing cannot be checked; {fix}"
        )
    normal = np.asarray(normal, dtype=np.float64)
    moves = np.diff(positions, axis=0)
    steps = moves @ normal
    drift = np.linalg.norm(moves - steps[:, None] * normal, axis=1)  # across the slices
    if drift.max() > 0.01 * abs(step_mm) + 1e-3:
        raise DataError(
            f"{folder}: {path.name}'s frames move up to {drift.max():.2f} mm sideways from one "
            f"to the next (a gantry tilt), which a stack of frames cannot hold; {fix}, which "
            "corrects the tilt"
        )
    if not np.allclose(steps, step_mm, rtol=0.01, atol=1e-3):
        shown = ", ".join(f"{v:g}" for v in np.round(steps[:8], 3))
        even = np.allclose(steps, steps[0], rtol=0.01, atol=1e-3)
        why = (
            f"where the reader stacks them {step_mm:g} mm apart"
            if even
            else "not evenly (a missing, uneven or unsorted frame)"
        )
        raise DataError(
            f"{folder}: {path.name}'s frames are {shown} mm apart in storage order, {why}; {fix}"
        )
