"""A multi-frame (enhanced) DICOM CT in one file: read whole by SimpleITK, and only where its
frames lie evenly in storage order by their own positions (``check_frames``), in one orientation
and pixel spacing; what its functional groups state per frame is read by ``frame_groups``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from .dicom_pixels import decodable_copy

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


def read_volume_file(folder: Path, path: Path, photometric: str = "MONOCHROME2"):
    """A single multi-frame DICOM file, read whole by SimpleITK, as an int16 RAS+ NIfTI.

    Refused (DataError) where its frames differ in orientation or pixel spacing, or do not lie
    evenly in storage order (``check_frames``). Frames with rescales of their own are rescaled
    each by its own (GDCM applies the first frame's to all); MONOCHROME1 is decoded uninverted
    (``dicom_pixels``).
    """
    import tempfile

    import pydicom
    import SimpleITK as sitk

    groups = frame_groups(path)
    if groups is not None:
        _check_same(folder, path, groups.orientations, "orientation")
        _check_same(folder, path, groups.spacings, "pixel spacing (mm)")
    rescales = None if groups is None else groups.rescales
    own = rescales is not None and not np.all(rescales == rescales[0])
    try:
        if photometric == "MONOCHROME1" or own:
            with tempfile.TemporaryDirectory(prefix="ctseg-dicom-") as tmp:
                image = sitk.ReadImage(str(decodable_copy(path, Path(tmp), strip_rescale=own)))
        else:
            image = sitk.ReadImage(str(path))
    except (RuntimeError, OSError, pydicom.errors.InvalidDicomError) as exc:
        last = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
        raise DataError(f"{folder}: {path.name} cannot be read ({last})") from None
    data = sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # SimpleITK's numpy order is (Z, Y, X)
    if own:  # stored values: HU = stored x the frame's slope + its intercept
        data = data * rescales[:, 0] + rescales[:, 1]
    if np.issubdtype(data.dtype, np.floating):
        data = np.rint(data)
    data = np.ascontiguousarray(np.clip(data, -32768, 32767).astype(np.int16))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    positions = None if groups is None else groups.positions
    check_frames(folder, path, positions, data.shape[2], direction[:, 2], image.GetSpacing()[2])
    return nifti_from_lps(
        data, direction @ np.diag(image.GetSpacing()), np.array(image.GetOrigin())
    )


def _check_same(folder: Path, path: Path, values: np.ndarray | None, what: str) -> None:
    """DataError unless every frame's ``values`` (one row a frame) are the first frame's, to a
    thousandth: SimpleITK gives all frames the first frame's geometry."""
    if values is None or len(values) < 2:
        return
    off = np.abs(values - values[0]).max(axis=1)
    if off.max() > 1e-3:
        k = int(np.argmax(off > 1e-3))
        shown = [" ".join(f"{v:g}" for v in np.round(values[i], 4)) for i in (0, k)]
        raise DataError(
            f"{folder}: {path.name}'s frames differ in {what} (frame 1: {shown[0]}; frame "
            f"{k + 1}: {shown[1]}), which one volume cannot hold; export each as its own series"
        )


def check_frames(folder: Path, path: Path, positions, count: int, normal, step_mm: float) -> None:
    """DataError unless a multi-frame file's frames lie in storage order, ``step_mm`` apart
    along ``normal`` (LPS) and not sideways, by their own ``positions`` ((count, 3) LPS mm, or
    None where not every frame states one): SimpleITK stacks them as stored at one step, and a
    missing, uneven, unsorted or tilted frame would be put where it is not."""
    if count < 2:
        return
    if positions is None:
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


@dataclass
class FrameGroups:
    """What an enhanced file's functional groups state, one row a frame in storage order; None
    where not every frame states it (per frame, or shared by all)."""

    positions: np.ndarray | None  # (frames, 3) ImagePositionPatient, LPS mm
    orientations: np.ndarray | None  # (frames, 6) ImageOrientationPatient
    spacings: np.ndarray | None  # (frames, 2) PixelSpacing (row, column) mm
    rescales: np.ndarray | None  # (frames, 2) RescaleSlope, RescaleIntercept
    thickness: float  # SliceThickness of the first frame, mm; 0 when not stated
    missing: tuple[str, ...]  # the geometry sequences some frame lacks, named for users


#: functional group -> (attribute, how many values, the name a message gives it)
_GROUPS = {
    "PlanePositionSequence": ("ImagePositionPatient", 3, "PlanePositionSequence (position)"),
    "PlaneOrientationSequence": (
        "ImageOrientationPatient",
        6,
        "PlaneOrientationSequence (orientation)",
    ),
    "PixelMeasuresSequence": ("PixelSpacing", 2, "PixelMeasuresSequence (pixel spacing)"),
}


def frame_groups(path: Path) -> FrameGroups | None:
    """The per-frame geometry and rescale of an enhanced DICOM file (pydicom, header only);
    None when it cannot be read or has no functional groups (a classic file)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (OSError, ValueError, pydicom.errors.InvalidDicomError):
        return None
    frames = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    if not frames:
        return None

    def item(frame, sequence: str):
        for group in (frame, shared):  # a frame's own group overrides the shared one
            if group is not None and group.get(sequence):
                return group.get(sequence)[0]
        return None

    def values(sequence: str, attribute: str, count: int) -> np.ndarray | None:
        rows = []
        for frame in frames:
            found = item(frame, sequence)
            value = None if found is None else found.get(attribute)
            value = [value] if count == 1 and value is not None else value  # one value, no list
            try:
                row = [float(v) for v in value]
            except (TypeError, ValueError):
                return None
            if len(row) != count:
                return None
            rows.append(row)
        return np.array(rows)

    geometry = {s: values(s, a, n) for s, (a, n, _) in _GROUPS.items()}
    slopes = values("PixelValueTransformationSequence", "RescaleSlope", 1)
    intercepts = values("PixelValueTransformationSequence", "RescaleIntercept", 1)
    rescales = None if slopes is None or intercepts is None else np.c_[slopes, intercepts]
    measures = item(frames[0], "PixelMeasuresSequence")
    try:
        thickness = float(measures.get("SliceThickness") or 0.0)
    except (AttributeError, TypeError, ValueError):
        thickness = 0.0
    missing = tuple(_GROUPS[s][2] for s, v in geometry.items() if v is None)
    return FrameGroups(geometry["PlanePositionSequence"], geometry["PlaneOrientationSequence"],
                       geometry["PixelMeasuresSequence"], rescales, thickness, missing)  # fmt: skip
