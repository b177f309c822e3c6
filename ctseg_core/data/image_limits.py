"""Limits on what an image file may make ctseg allocate, checked before its voxels are read.

A NIfTI header states the grid and the voxel type; nibabel allocates what it states before any
voxel arrives. A damaged or hostile file (a 72-byte .nii.gz can claim 3.5 GB; a few MB of gzip of
uniform float64 voxels unpack to gigabytes) is refused here with one line naming the file.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from ..fileio import cannot_read, read_error
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
    if exc := read_error(path):
        raise DataError(cannot_read(shown, exc, path))
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


#: header extensions larger than this (bytes) are refused in an upload: a 300 KB .nii.gz can
#: hold a 300 MB extension of zeros, which nibabel reads into memory before any other check
MAX_EXTENSION_BYTES = 16 << 20


def _check_extensions(path: Path) -> None:
    """DataError when a NIfTI file's header extensions come to more than ``MAX_EXTENSION_BYTES``,
    by its ``vox_offset`` and by each extension's own size (nibabel trusts either), streaming
    from the raw bytes before nibabel parses them. NIfTI-1 and NIfTI-2, either byte order."""
    try:
        header = raw_header(path)
        size, offset = int(header["sizeof_hdr"]), float(header["vox_offset"])
    except Exception:  # not NIfTI: nibabel's own error names what is wrong
        return
    if size not in (348, 540):
        return
    order = header.endianness
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as stream:
        stream.seek(size)
        flag = stream.read(4)
        room = offset - size - 4  # what vox_offset leaves for extensions
        listed = 0  # what the extensions' own sizes claim, read as nibabel reads them
        while len(flag) == 4 and flag[0] and listed < max(room, 1) <= MAX_EXTENSION_BYTES:
            pair = stream.read(8)  # esize (these 8 bytes included), ecode
            esize = struct.unpack(f"{order}i", pair[:4])[0] if len(pair) == 8 else 0
            if esize < 8:
                break  # the end, or a malformed list nibabel refuses itself
            listed += esize
            if listed > MAX_EXTENSION_BYTES:
                break
            stream.seek(esize - 8, 1)
        total = max(room, listed)
    if total > MAX_EXTENSION_BYTES:
        raise DataError(
            f"{short_path(path)} holds {total / 2**20:.0f} MB of header extensions before its "
            "voxels; re-export it without them (e.g. nibabel, 3D Slicer)"
        )


def raw_header(path: Path):
    """The NIfTI header of ``path`` as written (nibabel's reader replaces a zero pixdim by 1),
    without its extensions (what follows the header is not read)."""
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as handle:
        raw = handle.read(540)
    nifti2 = raw[:4] in (b"\x1c\x02\x00\x00", b"\x00\x00\x02\x1c")  # sizeof_hdr 540
    header_class = nib.Nifti2Header if nifti2 else nib.Nifti1Header
    return header_class.from_fileobj(io.BytesIO(raw[: 540 if nifti2 else 348]), check=False)
