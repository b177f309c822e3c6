"""Limits on what an image file may make ctseg allocate, checked before its voxels are read.

A NIfTI header states the grid and the voxel type; nibabel allocates what it states before any
voxel arrives. A damaged or hostile file (a 72-byte .nii.gz can claim 3.5 GB; a few MB of gzip of
uniform float64 voxels unpack to gigabytes) is refused here with one line naming the file.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from ..settings import max_voxels

MAX_VOXELS_ENV = "CTSEG_MAX_VOXELS"  # named in messages; read in ctseg_core.settings


def short_path(path: Path) -> str:
    """Path as users know it: the last three parts (subject/segmentations/file)."""
    return "/".join(Path(path).parts[-3:])


def check_claimed_size(path: Path, header) -> int:
    """Refuse a header that claims more voxels than ``max_voxels()``; return its data bytes.

    Reading allocates what the header claims before any voxel arrives, so this runs on the
    header alone.
    """
    shape = tuple(int(n) for n in header.get_data_shape())
    voxels = math.prod(shape)
    nbytes = voxels * np.dtype(header.get_data_dtype()).itemsize
    if voxels > max_voxels():
        raise DataError(
            f"{short_path(path)} claims a {' x '.join(map(str, shape))} grid ({voxels:,} voxels, "
            f"{nbytes / 2**30:.1f} GB), over the limit of {max_voxels():,} voxels: a damaged "
            f"header? (a real image this large needs {MAX_VOXELS_ENV} raised)"
        )
    return nbytes


def _check_memory_size(path: Path, img) -> None:
    """Refuse an image whose voxels would take more than an int16 grid of ``max_voxels()``
    once read: float64 voxels of a few MB of gzip can unpack to gigabytes (values scaled by
    scl_slope/inter are read as float64 too)."""
    proxy = img.dataobj
    scaled = getattr(proxy, "slope", 1.0) != 1.0 or getattr(proxy, "inter", 0.0) != 0.0
    itemsize = 8 if scaled else np.dtype(img.header.get_data_dtype()).itemsize
    nbytes = math.prod(int(n) for n in img.header.get_data_shape()) * itemsize
    limit = 2 * max_voxels()
    if nbytes > limit:
        raise DataError(
            f"{short_path(path)} would take {nbytes / 2**30:.1f} GB once read "
            f"({img.header.get_data_dtype()}{', scaled' if scaled else ''}), over the "
            f"{limit / 2**30:.1f} GB of an int16 grid at {MAX_VOXELS_ENV}: save it as int16 HU"
        )


def check_nifti_payload(path: str | Path, shown: str | None = None) -> None:
    """Check that a NIfTI file holds as many voxel bytes as its header claims, streaming, and
    that its voxels take no more memory than an int16 grid of ``max_voxels()``.

    For files from untrusted hands (an upload): a 72-byte .nii.gz can claim gigabytes, which
    reading would allocate before failing. Decompresses in 16 MB chunks and keeps none of it.
    ``shown``: the name used in messages (default the path). Raises DataError.
    """
    path = Path(path)
    shown = shown or short_path(path)
    try:
        _check_extensions(path)  # nibabel reads them whole before any other check
        img = nib.load(str(path))
        on_disk = check_claimed_size(path, img.header)
        _check_memory_size(path, img)
        needed = int(getattr(img.dataobj, "offset", 0)) + on_disk
        opener = gzip.open if path.name.lower().endswith(".gz") else open
        have = 0
        with opener(path, "rb") as stream:
            while have < needed and (chunk := stream.read(min(16 << 20, needed - have))):
                have += len(chunk)
    except DataError as exc:
        raise DataError(str(exc).replace(short_path(path), shown, 1)) from None
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise DataError(
            f"{shown} cannot be read as NIfTI ({type(exc).__name__}: {exc}); re-export the file"
        ) from None
    if have < needed:
        raise DataError(
            f"{shown} holds {have:,} bytes of the {needed:,} its header claims: the file is "
            "truncated or its header damaged; re-export it"
        )


#: header extensions larger than this (bytes) before the voxels are refused in an upload: a
#: 300 KB .nii.gz can hold a 300 MB extension of zeros, which nibabel reads into memory
MAX_EXTENSION_BYTES = 16 << 20


def _check_extensions(path: Path) -> None:
    """DataError when a NIfTI-1 file's voxels start more than ``MAX_EXTENSION_BYTES`` after its
    header (``vox_offset``), read from the raw header before nibabel parses the extensions."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        raw = stream.read(348)
    if len(raw) < 348:
        return  # nibabel's own error names what is wrong
    for order in "<>":
        if struct.unpack(f"{order}i", raw[:4])[0] == 348:  # sizeof_hdr: NIfTI-1, this byte order
            offset = struct.unpack(f"{order}f", raw[108:112])[0]  # vox_offset
            if offset - 352 > MAX_EXTENSION_BYTES:
                raise DataError(
                    f"{short_path(path)} holds {offset / 2**20:.0f} MB of header extensions "
                    "before its voxels; re-export it without them (e.g. nibabel, 3D Slicer)"
                )
