"""Reading CT images and label volumes into canonical RAS+, and writing back to their own grid.

Inside the library every array is in nibabel's closest-canonical orientation (RAS+, axes x, y, z):
an axial slice is ``array[:, :, z]`` with shape (X, Y). Outputs go back onto the source image's own
grid with :func:`from_canonical`, so they overlay in 3D Slicer and ITK-SNAP.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError, NotAVolume
from ..fileio import cannot_read, is_dir, is_file, read_error
from .geometry_notes import geometry_notes, pixdim_disagrees, spacing_of
from .image_limits import check_claimed_size, raw_header
from .image_limits import short_path as _short

log = logging.getLogger(__name__)

#: voxel-to-world matrices closer than this (mm, and unitless for rotations) count as the same grid
AFFINE_TOLERANCE = 1e-3


@dataclass
class Volume:
    """One image in canonical orientation.

    array: (X, Y, Z) in RAS+ axis order; dtype as loaded (CT int16 HU, masks uint8).
    affine: (4, 4) voxel -> world (mm) of ``array``.
    spacing_mm: (3,) voxel size along x, y, z of ``array``.
    original_affine / original_shape: the grid of the file on disk (used to write results back).
    """

    array: np.ndarray
    affine: np.ndarray
    spacing_mm: tuple[float, float, float]
    original_affine: np.ndarray
    original_shape: tuple[int, ...]
    path: Path | None = None
    #: (qform_code, sform_code) of the file on disk, given back to outputs on its grid (NIfTI:
    #: 1 scanner, 2 aligned, 0 unset); DICOM and volumes without a file: scanner
    xform_codes: tuple[int, int] = (1, 1)
    #: what was assumed while reading (a NIfTI without orientation or voxel size), one line each
    notes: list[str] = field(default_factory=list)
    #: the file's qform where it disagrees with the sform read as ``original_affine``: outputs
    #: on its grid keep both, so a viewer that takes the qform (ITK) overlays them as the CT
    original_qform: np.ndarray | None = None
    #: the file's NIfTI ``xyzt_units`` byte (spatial and time unit), given back to outputs on
    #: its grid: ITK scales pixdim by the unit, so labels in another unit than the CT's would
    #: not overlay it; 0 (unknown, read as mm) for DICOM and volumes without a file
    xyzt_units: int = 0

    @property
    def orientation(self) -> str:
        """Axis codes of the file on disk, e.g. 'LPS'."""
        return "".join(nib.aff2axcodes(self.original_affine))


def read_image(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file with clear errors; squeeze a trailing singleton 4th axis; return 3D image.

    Raises DataError for a missing, corrupt or truncated file, a header claiming more than
    ``max_voxels()`` voxels, a file larger than free memory, a 2D image, a true 4D series, or
    an affine with NaN, inf or a zero voxel size (no geometry to label or measure by).
    """
    path = Path(path)
    # first: is_dir() raises where a folder on the way may not be entered; nibabel would say
    # "Could not read file" for an unreadable one, which is not the fix
    if exc := read_error(path):  # the whole path: the folder to chmod may be any of it
        raise DataError(cannot_read(str(path), exc, path))
    if is_dir(path):
        raise DataError(f"{path} is a folder; give a .nii.gz file")
    if not is_file(path):
        raise DataError(f"{path} does not exist; check the path or the dataset layout")
    claimed = "?"
    try:
        img = nib.load(str(path))
        claimed = f"{check_claimed_size(path, img.header) / 2**30:.1f} GB"
        # Touch the data now: truncated gzip streams only fail when the voxels are read.
        data = np.asanyarray(img.dataobj)
    except MemoryError:
        raise DataError(
            f"{_short(path)} does not fit in this machine's free memory ({claimed} of voxels); "
            "read it on a machine with more memory"
        ) from None
    except (
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        gzip.BadGzipFile,
        nib.filebasedimages.ImageFileError,
    ) as exc:
        raise DataError(
            f"{_short(path)} cannot be read as NIfTI ({type(exc).__name__}: {exc}); "
            "re-export or re-download the file"
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise NotAVolume(
            f"{_short(path)} has shape {data.shape} ({data.ndim}D); a 3D volume is expected: "
            "export one 3D CT (split 4D series, stack 2D slices)",
            tuple(data.shape),
        )
    if data.dtype.kind not in "biuf":  # RGB (a record per voxel) or complex: not one number
        kind = "RGB" if data.dtype.fields else str(data.dtype)
        raise DataError(
            f"{_short(path)} holds {kind} voxels, not one number each; save it as a grayscale "
            "(CT) or integer (labels) image"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(
            f"{_short(path)} has no usable voxel-to-world geometry (its affine "
            f"{np.round(affine[:3, :3], 4).tolist()} holds NaN, inf or a zero voxel size); "
            "fix its header's sform/qform and pixdim, e.g. re-export it from 3D Slicer"
        )
    out = nib.Nifti1Image(data, img.affine)
    out.header["xyzt_units"] = _xyzt_units(img)  # what the affine's numbers are in
    # the file's own transforms and codes (a new image would state sform "aligned", qform unset)
    try:
        out.set_qform(img.get_qform(), code=int(img.header["qform_code"]))
    except (nib.spatialimages.HeaderDataError, ValueError):  # NaN or inf in pixdim
        if int(img.header["qform_code"]) == 0:  # an unused qform: the sform is all we read
            out.set_sform(img.affine, code=int(img.header["sform_code"]))
            return out
        raise DataError(
            f"{_short(path)}'s qform cannot be built from its pixdim "
            f"{np.asarray(img.header['pixdim'][1:4]).tolist()}; write finite voxel sizes into "
            "its pixdim, e.g. re-export it from 3D Slicer"
        ) from None
    out.set_sform(img.affine, code=int(img.header["sform_code"]))
    return out


def _canonical_transform(affine: np.ndarray) -> np.ndarray:
    """Orientation transform (nibabel ornt) from the file's axes to RAS+."""
    return nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
    )


def to_canonical(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder a (X, Y, Z) array on ``affine`` into RAS+; return (array, canonical affine).

    Pure axis permutations and flips (no resampling), as nibabel's ``as_closest_canonical``.
    """
    ornt = _canonical_transform(affine)
    array = nib.orientations.apply_orientation(data, ornt)
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    return np.ascontiguousarray(array), new_affine


def from_canonical(array: np.ndarray, original_affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_canonical`: put a canonical (X, Y, Z) array back on the file's grid."""
    ornt = nib.orientations.ornt_transform(
        nib.orientations.axcodes2ornt(("R", "A", "S")),
        nib.orientations.io_orientation(original_affine),
    )
    return np.ascontiguousarray(nib.orientations.apply_orientation(array, ornt))


def load_ct(path: str | Path, *, allow_nan: bool = False, resample_uneven: bool = False) -> Volume:
    """Load a CT (NIfTI file or DICOM series folder) as int16 Hounsfield units, canonical.

    Float CTs are rounded to int16 (after the NIfTI scl_slope/inter). Values are clipped to the
    int16 range. NaN or inf voxels raise DataError unless ``allow_nan``, then they become -1024 HU.
    A DICOM series with missing slices or uneven spacing raises DataError unless
    ``resample_uneven`` (see :func:`ctseg_core.data.dicom.read_dicom_series`).
    """
    path = Path(path)
    try:
        is_folder = is_dir(path)
    except OSError as exc:  # a folder on the way this user may not enter
        raise DataError(cannot_read(str(path), exc, path)) from None
    if is_folder:
        from .dicom import read_dicom_series

        img = read_dicom_series(path, resample_uneven=resample_uneven)
    else:
        img = read_image(path)
    data = np.asanyarray(img.dataobj)
    if np.issubdtype(data.dtype, np.floating):
        data = _float_to_hu(data, path, allow_nan)
    else:
        data = np.clip(data, -32768, 32767).astype(np.int16, copy=False)
    array, affine = to_canonical(data, img.affine)
    codes = int(img.header["qform_code"]), int(img.header["sform_code"])  # as on disk
    qform = img.get_qform() if min(codes) > 0 and not is_folder else img.affine
    qform = None if np.allclose(qform, img.affine, atol=1e-3) else qform
    header = None if is_folder else _raw_header_or_none(path)  # read once for both
    notes = geometry_notes(path, img, qform, header)
    if qform is None and header is not None and _pixdim_kept(header, img):
        # an sform alone over another pixdim (in mm): outputs keep the file's pixdim (its
        # unused qform), so ITK, which takes pixdim there, overlays them on the CT
        try:
            qform = img.get_qform()
        except (nib.spatialimages.HeaderDataError, ValueError):  # a pixdim it cannot hold
            qform = None
    return Volume(array, affine, spacing_of(affine), img.affine.copy(), data.shape, path,
                  _xform_codes(img), notes, qform, _xyzt_units(img))  # fmt: skip


def _raw_header_or_none(path: Path):
    """The file's header as written (``raw_header``); None where it cannot be parsed (the file
    was read once already: such a header says nothing more)."""
    try:
        return raw_header(path)
    except Exception:
        return None


def _pixdim_kept(header, img) -> bool:
    """Whether outputs on this NIfTI's grid keep its pixdim apart from its sform
    (``pixdim_disagrees``, with pixdim in mm or no unit as ITK would read it again); ``header``
    the file's raw header."""
    unit = header.get_xyzt_units()[0]
    return unit in ("mm", "unknown") and pixdim_disagrees(header, img.affine)


def _float_to_hu(data: np.ndarray, path: Path, allow_nan: bool) -> np.ndarray:
    """(X, Y, Z) float voxels -> int16 HU, rounded and clipped 16 slices at a time (whole-volume
    temporaries would take several times a float64 CT's size)."""
    out = np.empty(data.shape, dtype=np.int16)
    bad_total = 0
    for z in range(0, data.shape[2], 16):
        part = data[:, :, z : z + 16]
        bad = ~np.isfinite(part)
        if bad.any():
            bad_total += int(bad.sum())
            part = np.where(bad, -1024, part)
        out[:, :, z : z + 16] = np.clip(np.rint(part), -32768, 32767)
    if bad_total and not allow_nan:
        raise DataError(
            f"{_short(path)} holds {bad_total} NaN/inf voxels; replace them "
            "(e.g. with -1024 HU, air) and save the CT again"
        )
    return out


def hu_problem(ct_hu: np.ndarray, name: str = "the CT") -> str | None:
    """A one-line warning when ``ct_hu`` does not look like a CT in Hounsfield units, or None.

    A CT shows air near -1000 HU around or inside the body and bone above +200; a mask (0/1),
    an MR or PET image or a CT saved without its rescale slope shows neither. A model trained on
    HU then labels noise, so the caller shows this beside the result.
    """
    low, high = float(ct_hu.min()), float(ct_hu.max())
    if low > -500 or high - low < 500:
        return (
            f"{name} holds values {low:g}..{high:g}, which do not look like Hounsfield units "
            "(air near -1000, bone above +200): is it a CT? The labels below are likely wrong"
        )
    return None


def load_label_volume(path: str | Path, num_labels: int = 117) -> Volume:
    """Load a multilabel volume (0..num_labels) as canonical uint8.

    Raises DataError for negative or non-integer values and for values above ``num_labels``.
    """
    path = Path(path)
    img = read_image(path)
    data = np.asanyarray(img.dataobj)
    if np.issubdtype(data.dtype, np.floating) and (
        not np.all(np.isfinite(data)) or not np.array_equal(data, np.rint(data))
    ):
        raise DataError(
            f"{_short(path)} holds non-integer labels; save the labels as integers 0..{num_labels}"
        )
    lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
    if lo < 0 or hi > num_labels:
        raise DataError(
            f"{_short(path)} holds label values {lo}..{hi}; expected 0..{num_labels} "
            "(TotalSegmentator v2 order)"
        )
    array, affine = to_canonical(data.astype(np.uint8), img.affine)
    return Volume(array, affine, spacing_of(affine), img.affine.copy(), data.shape, path,
                  _xform_codes(img), geometry_notes(path, img), None, _xyzt_units(img))  # fmt: skip


def _xform_codes(img) -> tuple[int, int]:
    """(qform_code, sform_code) of a NIfTI image; (1, 1) when it has none (DICOM)."""
    header = getattr(img, "header", None)
    try:
        codes = int(header["qform_code"]), int(header["sform_code"])
    except (TypeError, KeyError, ValueError):
        return (1, 1)
    return codes if any(codes) else (1, 1)


def _xyzt_units(img) -> int:
    """The NIfTI ``xyzt_units`` byte of an image; 0 (unknown) where its header has none."""
    try:
        return int(img.header["xyzt_units"])
    except (TypeError, KeyError, ValueError):
        return 0


def save_on_original_grid(array: np.ndarray, volume: Volume, target: str | Path) -> None:
    """Write a canonical (X, Y, Z) array as NIfTI on ``volume``'s original grid, atomically,
    with the source file's qform/sform codes (a CT with only an "aligned" sform gives a label
    file with the same) and units (``Volume.xyzt_units``: a CT in microns, labels in microns)."""
    from ..fileio import atomic_save_nifti

    data = from_canonical(array, volume.original_affine)
    img = nib.Nifti1Image(data, volume.original_affine)
    qform_code, sform_code = volume.xform_codes
    qform = volume.original_qform if volume.original_qform is not None else volume.original_affine
    img.set_qform(qform, code=qform_code)
    img.set_sform(volume.original_affine, code=sform_code)
    img.header["xyzt_units"] = volume.xyzt_units
    atomic_save_nifti(img, target)
