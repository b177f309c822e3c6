"""Unpacking a zip of one DICOM series from untrusted hands, with limits a zip bomb cannot pass.

A 17 MB zip can hold gigabytes of zeros. Before anything is written, the sizes the zip declares
are checked: in total against what a series within the voxel limit can need
(``series_byte_limit``), and per member and in total against ``MAX_RATIO`` (uncompressed over
compressed). Members are then copied in 1 MB chunks (never read whole), counting the bytes that
really come out, since a header can lie: a member that unpacks to more than it declares, or the
real bytes passing a limit, stop the unpacking with one line. Nothing here imports streamlit.
"""

from __future__ import annotations

import copy
import io
import zipfile
from pathlib import Path

from ..errors import DataError
from .image_limits import MAX_VOXELS_ENV, max_voxels

#: uncompressed over compressed size above which a zip is refused (a DICOM CT series deflates
#: about 2-5:1; a zip bomb of zeros about 1000:1)
MAX_RATIO = 100
#: members and totals below this size are not held to MAX_RATIO (a small blank file packs well)
RATIO_GRACE_BYTES = 1 << 20
#: the DICOM headers of a series beside its voxels (a few KB a file, a few thousand files)
HEADER_ALLOWANCE_BYTES = 256 << 20
CHUNK_BYTES = 1 << 20


def series_byte_limit() -> int:
    """The most bytes a zipped DICOM series may unpack to: its voxels at 2 bytes (int16 CT) up
    to ``max_voxels()``, plus ``HEADER_ALLOWANCE_BYTES`` (2.25 GiB at the default limit)."""
    return 2 * max_voxels() + HEADER_ALLOWANCE_BYTES


#: the bytes of a member's name kept (with the ``<number>_`` prefix under 255, the common limit)
MAX_NAME_BYTES = 200


def unpack_zip_flat(
    data: bytes,
    target: Path,
    shown: str,
    *,
    max_bytes: int | None = None,
    max_ratio: float = MAX_RATIO,
) -> list[Path]:
    """Unpack the zip in ``data`` into ``target`` flat (member folders dropped: nothing lands
    outside ``target``); returns the written files, named ``<number>_<name>``.

    Hidden files ('.DS_Store', '._x'), folders and a DICOMDIR are skipped; a name over
    ``MAX_NAME_BYTES`` keeps its end. ``shown``: the zip's name in
    messages; ``max_bytes``: default ``series_byte_limit()``. Raises DataError (one line) for a
    damaged zip, an encrypted member, or one over the size or ratio limits; files already
    written stay in ``target`` (the caller owns that folder and removes it).
    """
    limit = series_byte_limit() if max_bytes is None else max_bytes
    target.mkdir(parents=True, exist_ok=True)
    packed = max(len(data), 1)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            _check_declared(members, packed, shown, limit, max_ratio)
            written: list[Path] = []
            total = 0
            for number, member in enumerate(members):
                base = Path(member.filename.replace("\\", "/")).name
                if not base or base.startswith(".") or base.upper() == "DICOMDIR":
                    continue  # a CD's index, no image (unpacked, its new name hid what it is)
                # a name near the file system's 255 bytes: its end kept (the .dcm, a number)
                base = base.encode("utf-8")[-MAX_NAME_BYTES:].decode("utf-8", "ignore")
                if member.flag_bits & 0x1:
                    raise DataError(
                        f"{shown}: {base} is encrypted; zip the DICOM series without a password"
                    )
                path = target / f"{number:05d}_{base}"
                total = _copy_member(archive, member, path, total, packed, shown, limit, max_ratio)
                written.append(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise DataError(
            f"{shown} is not a readable zip file ({exc}); zip the DICOM series folder again"
        ) from None
    if not written:
        raise DataError(f"{shown} holds no files; zip the folder of one DICOM series")
    return written


def _too_large(shown: str, nbytes: int, limit: int) -> DataError:
    return DataError(
        f"{shown} unpacks to {nbytes / 2**20:,.0f} MB or more, over the {limit / 2**20:,.0f} MB "
        f"a DICOM series within the voxel limit needs ({MAX_VOXELS_ENV}={max_voxels():,}); "
        "zip one DICOM series only"
    )


def _too_packed(shown: str, what: str, ratio: float, max_ratio: float) -> DataError:
    return DataError(
        f"{shown}: {what} unpacks {ratio:,.0f} times larger than it is packed (the limit is "
        f"{max_ratio:g}; a DICOM series packs 2-5 times): a zip bomb? zip the series files only"
    )


def _check_declared(members, packed: int, shown: str, limit: int, max_ratio: float) -> None:
    """Refuse on the sizes the zip declares, before anything is written."""
    declared = sum(m.file_size for m in members)
    if declared > limit:
        raise _too_large(shown, declared, limit)
    for m in members:
        if m.file_size > RATIO_GRACE_BYTES and m.file_size > max_ratio * max(m.compress_size, 1):
            name = Path(m.filename).name
            raise _too_packed(shown, name, m.file_size / max(m.compress_size, 1), max_ratio)
    if declared > RATIO_GRACE_BYTES and declared > max_ratio * packed:
        raise _too_packed(shown, "the zip", declared / packed, max_ratio)


def _copy_member(archive, member, path: Path, total: int, packed: int, shown: str, limit: int,
                 max_ratio: float) -> int:  # fmt: skip
    """Stream one member to ``path`` counting the real bytes; returns the new running total.

    The member is opened as if it declared all the bytes left under ``limit`` (and one more),
    so a stream holding more than its header says shows it: zipfile would cut it at the
    declared size unseen.
    """
    probe = copy.copy(member)
    probe.file_size = max(member.file_size, limit - total) + 1
    name = Path(member.filename).name
    size = 0
    with archive.open(probe) as src, open(path, "wb") as dst:
        while chunk := src.read(CHUNK_BYTES):
            size += len(chunk)
            total += len(chunk)
            if size > member.file_size:
                raise DataError(
                    f"{shown}: {name} unpacks to more than the {member.file_size:,} bytes its "
                    "header declares (a damaged or forged zip); zip the DICOM series again"
                )
            if total > limit:
                raise _too_large(shown, total, limit)
            if total > RATIO_GRACE_BYTES and total > max_ratio * packed:
                raise _too_packed(shown, "the zip", total / packed, max_ratio)
            dst.write(chunk)
    if size != member.file_size:
        raise DataError(
            f"{shown}: {name} holds {size:,} of the {member.file_size:,} bytes its header "
            "declares (a truncated or damaged zip); zip the DICOM series again"
        )
    return total
