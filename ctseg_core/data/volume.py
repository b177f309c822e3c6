"""Reading CT images and masks into the canonical RAS+ orientation, and writing back to the original grid.

Inside the library every array is in nibabel's closest-canonical orientation (RAS+, axes x, y, z):
an axial slice is ``array[:, :, z]`` with shape (X, Y). Outputs go back onto the source image's own
grid with :func:`from_canonical`, so they overlay in 3D Slicer and ITK-SNAP.
"""

from __future__ import annotations

import gzip
import math
import os
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError

#: voxel-to-world matrices closer than this (mm, and unitless for rotations) count as the same grid
AFFINE_TOLERANCE = 1e-3
#: the most voxels one image may claim (a 1024 x 1024 x 1024 grid; a 512 x 512 whole-body CT has
#: ~1500 slices); a damaged or hostile header would otherwise make the reader allocate it
DEFAULT_MAX_VOXELS = 1 << 30
MAX_VOXELS_ENV = "CTSEG_MAX_VOXELS"


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

    @property
    def orientation(self) -> str:
        """Axis codes of the file on disk, e.g. 'LPS'."""
        return "".join(nib.aff2axcodes(self.original_affine))


def _short(path: Path) -> str:
    """Path as users know it: the last three parts (subject/segmentations/file)."""
    return "/".join(Path(path).parts[-3:])


def max_voxels() -> int:
    """The voxel limit of one image: ``$CTSEG_MAX_VOXELS`` ("inf": none) or
    ``DEFAULT_MAX_VOXELS``."""
    raw = os.environ.get(MAX_VOXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = float(raw)
        return sys.maxsize if value == math.inf else max(1, int(value))
    except (ValueError, OverflowError):
        raise DataError(
            f"{MAX_VOXELS_ENV}={raw!r} is not a number; set it to a voxel count"
        ) from None


def _check_claimed_size(path: Path, header) -> int:
    """Refuse a header that claims more voxels than ``max_voxels()``; return its data bytes.

    Reading allocates what the header claims before any voxel arrives, so this runs on the
    header alone.
    """
    shape = tuple(int(n) for n in header.get_data_shape())
    voxels = math.prod(shape)
    nbytes = voxels * np.dtype(header.get_data_dtype()).itemsize
    if voxels > max_voxels():
        raise DataError(
            f"{_short(path)} claims a {' x '.join(map(str, shape))} grid ({voxels:,} voxels, "
            f"{nbytes / 2**30:.1f} GB), over the limit of {max_voxels():,} voxels: a damaged "
            f"header? (a real image this large needs {MAX_VOXELS_ENV} raised)"
        )
    return nbytes


def check_nifti_payload(path: str | Path, shown: str | None = None) -> None:
    """Check that a NIfTI file holds as many voxel bytes as its header claims, streaming.

    For files from untrusted hands (an upload): a 72-byte .nii.gz can claim gigabytes, which
    reading would allocate before failing. Decompresses in 16 MB chunks and keeps none of it.
    ``shown``: the name used in messages (default the path). Raises DataError.
    """
    path = Path(path)
    shown = shown or _short(path)
    try:
        img = nib.load(str(path))
        needed = int(getattr(img.dataobj, "offset", 0)) + _check_claimed_size(path, img.header)
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        have = 0
        with opener(path, "rb") as stream:
            while have < needed and (chunk := stream.read(min(16 << 20, needed - have))):
                have += len(chunk)
    except DataError as exc:
        raise DataError(str(exc).replace(_short(path), shown, 1)) from None
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(
            f"{shown} cannot be read as NIfTI ({type(exc).__name__}: {exc}); re-export the file"
        ) from None
    if have < needed:
        raise DataError(
            f"{shown} holds {have:,} bytes of the {needed:,} its header claims: the file is "
            "truncated or its header damaged; re-export it"
        )


def read_image(path: str | Path) -> nib.Nifti1Image:
    """Open a NIfTI file with clear errors; squeeze a trailing singleton 4th axis; return 3D image.

    Raises DataError for a missing, corrupt or truncated file, a header claiming more than
    ``max_voxels()`` voxels, a file larger than free memory, a 2D image, or a true 4D series.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a .nii.gz file")
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path or the dataset layout")
    claimed = "?"
    try:
        img = nib.load(str(path))
        claimed = f"{_check_claimed_size(path, img.header) / 2**30:.1f} GB"
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
        raise DataError(
            f"{_short(path)} has shape {data.shape} ({data.ndim}D); a 3D volume is expected: "
            "export one 3D CT (split 4D series, stack 2D slices)"
        )
    return nib.Nifti1Image(data, img.affine)


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


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis from a (4, 4) affine."""
    return tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


def load_ct(path: str | Path, *, allow_nan: bool = False) -> Volume:
    """Load a CT (NIfTI file or DICOM series folder) as int16 Hounsfield units, canonical.

    Float CTs are rounded to int16 (after the NIfTI scl_slope/inter). Values are clipped to the
    int16 range. NaN or inf voxels raise DataError unless ``allow_nan``, then they become -1024 HU.
    """
    path = Path(path)
    if path.is_dir():
        from .dicom import read_dicom_series

        img = read_dicom_series(path)
    else:
        img = read_image(path)
    data = np.asanyarray(img.dataobj)
    if np.issubdtype(data.dtype, np.floating):
        bad = ~np.isfinite(data)
        if bad.any():
            if not allow_nan:
                raise DataError(
                    f"{_short(path)} holds {int(bad.sum())} NaN/inf voxels; replace them "
                    "(e.g. with -1024 HU, air) and save the CT again"
                )
            data = np.where(bad, -1024, data)
        data = np.rint(data)
    data = np.clip(data, -32768, 32767).astype(np.int16, copy=False)
    array, affine = to_canonical(data, img.affine)
    return Volume(array, affine, spacing_of(affine), img.affine.copy(), data.shape, path)


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


def _mask_from_data(data: np.ndarray) -> np.ndarray:
    """Binary mask from 0/1, 0/255, bool or float (> 0.5) voxels."""
    if data.dtype == np.bool_:
        return data
    if np.issubdtype(data.dtype, np.floating):
        return data > 0.5
    return data > 0


def check_same_grid(path: Path, shape, affine, ref_shape, ref_affine, what: str = "CT") -> None:
    """Raise DataError when an image's grid (shape or affine) differs from its reference's."""
    if tuple(shape) != tuple(ref_shape):
        raise DataError(
            f"mask shape {tuple(shape)} does not match {what} shape {tuple(ref_shape)} in "
            f"{_short(path)}; resample the mask onto the {what} grid"
        )
    if not np.allclose(affine, ref_affine, atol=AFFINE_TOLERANCE):
        raise DataError(
            f"affine of {_short(path)} differs from the {what}'s (max difference "
            f"{np.abs(np.asarray(affine) - ref_affine).max():.3g} mm); resample the mask onto the {what} grid"
        )


def load_mask(path: str | Path, ct: Volume) -> np.ndarray:
    """Load one structure mask on ``ct``'s grid as a canonical (X, Y, Z) bool array.

    Raises DataError when its shape or affine differs from the CT's.
    """
    path = Path(path)
    img = read_image(path)
    data = np.asanyarray(img.dataobj)
    check_same_grid(path, data.shape, img.affine, ct.original_shape, ct.original_affine)
    array, _ = to_canonical(_mask_from_data(data), img.affine)
    return array


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
    return Volume(array, affine, spacing_of(affine), img.affine.copy(), data.shape, path)


def save_on_original_grid(array: np.ndarray, volume: Volume, target: str | Path) -> None:
    """Write a canonical (X, Y, Z) array as NIfTI on ``volume``'s original grid, atomically."""
    from ..fileio import atomic_save_nifti

    data = from_canonical(array, volume.original_affine)
    img = nib.Nifti1Image(data, volume.original_affine)
    img.set_qform(volume.original_affine, code=1)
    img.set_sform(volume.original_affine, code=1)
    atomic_save_nifti(img, target)
