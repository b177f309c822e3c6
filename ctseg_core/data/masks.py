"""Reading structure masks onto their CT's grid (canonical RAS+ bool arrays), and saying how
masks of values other than 0 and 1 were read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError, GridMismatch, NotAVolume
from .geometry_notes import warn_once
from .image_limits import short_path as _short
from .volume import AFFINE_TOLERANCE, Volume, read_image, to_canonical


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


def mask_values_note(data: np.ndarray, path: Path) -> str | None:
    """One line saying how a mask holding values other than 0 and 1 was read, or None.

    bool, 0/1 and 0/255 (a common binary export) masks say nothing.
    """
    if data.dtype == np.bool_ or data.size == 0:
        return None
    if np.issubdtype(data.dtype, np.floating):
        if np.all((data == 0) | (data == 1)):
            return None
        finite = data[np.isfinite(data)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        nan = f", {data.size - finite.size} NaN/inf" if finite.size < data.size else ""
        return (
            f"{_short(path)} is a mask of non-binary values ({low:g}..{high:g}{nan}); voxels "
            "above 0.5 were read as the structure. Save the mask as 0/1 integers"
        )
    low, high = int(data.min()), int(data.max())
    if low >= 0 and (high <= 1 or (high == 255 and not np.any((data != 0) & (data != 255)))):
        return None
    values = np.unique(data)
    shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
    return (
        f"{_short(path)} is a mask holding the values {shown} (not only 0 and 1); every voxel "
        "above 0 was read as the structure. Save the mask as 0/1"
    )


def load_mask(path: str | Path, ct: Volume, notes: list[str] | None = None) -> np.ndarray:
    """Load one structure mask on ``ct``'s grid as a canonical (X, Y, Z) bool array.

    Raises GridMismatch (a DataError) when its shape or affine differs from the CT's (a 2D or
    4D mask too), unless it holds the CT's voxels in another axis order (the same grid once both
    are reordered to RAS); DataError for a file that cannot be read as a mask. A mask holding
    values other than 0 and 1 is read as "above 0" (floats: "above 0.5"), warned once per file
    and said in ``notes``.
    """
    path = Path(path)
    try:
        img = read_image(path)
    except NotAVolume as exc:  # a slice or a series of frames cannot lie on the CT's grid
        raise GridMismatch(
            f"mask shape {exc.shape} ({len(exc.shape)}D) does not match CT shape "
            f"{tuple(ct.original_shape)} in {_short(path)}; save the mask as one 3D volume on "
            "the CT grid"
        ) from None
    data = np.asanyarray(img.dataobj)
    mask = _mask_from_data(data)
    try:
        check_same_grid(path, data.shape, img.affine, ct.original_shape, ct.original_affine)
        # the CT's own reordering: near 45 degrees two affines within the grid tolerance could
        # pick different axis orders, and the mask would land on other voxels than the CT's
        array = to_canonical(mask, ct.original_affine)[0]
    except DataError as exc:  # stored in another axis order (LPS beside a RAS CT), same voxels?
        array, canonical = to_canonical(mask, img.affine)
        if array.shape != ct.array.shape or not np.allclose(
            canonical, ct.affine, atol=AFFINE_TOLERANCE
        ):
            raise GridMismatch(str(exc)) from None
    note = mask_values_note(data, path)
    if note:
        warn_once(path, "mask values", note)
        if notes is not None:
            notes.append(note)
    return array
