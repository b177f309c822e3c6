"""DICOM series input: each slice read with SimpleITK (GDCM decodes it), stacked by its position.

As dcm2niix and 3D Slicer's DICOM module do, the slices are ordered along the slice normal by
ImagePositionPatient and the stack is checked before it becomes a volume:

- files that cannot be read (truncated, damaged, not DICOM) are left out and named in a warning;
- a position stored twice is kept once when both files hold the same pixels, refused otherwise;
- missing slices or uneven spacing (a gap off the median step by over 1 %, or slices whose
  gaps add up to a drift of over 10 % of a step off the even grid from the first slice to the
  last) are refused with the positions and the gap in mm, unless ``resample_uneven``: then the
  slices are interpolated onto a uniform grid, with a warning;
- slices of different size, orientation or pixel spacing, and sheared stacks (gantry tilt), are
  refused, as are geometry tags missing or impossible (a zero or non-unit orientation, pixels of
  0 mm), which SimpleITK would replace by identity or 1 mm;
- colour images (screenshots, reports) and localizers alone are refused as not a CT volume;
- a single slice is read with a note of the thickness it is given.

HU are stored value x slope + intercept, whatever the photometric interpretation (MONOCHROME1
included) and per frame in an enhanced file (``dicom_pixels``, ``dicom_frames``).

The result is a NIfTI image in world RAS+ coordinates, as dcm2niix/dicom2nifti would write it,
so the rest of the library treats a DICOM folder exactly like a ``ct.nii.gz``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from ..fileio import cannot_read, is_dir, read_error
from .dicom_frames import nifti_from_lps, read_volume_file
from .dicom_header import SliceHeader, folder_files, list_series, read_header, series_name
from .dicom_pixels import read_pixels
from .dicom_spacing import SAME_POSITION_MM, count_text, uniform_stack
from .image_limits import max_voxels

log = logging.getLogger(__name__)

#: the photometric interpretations of a CT image (greyscale, one sample a pixel)
_GREYSCALE = ("MONOCHROME1", "MONOCHROME2")


def _names(paths, limit: int = 5) -> str:
    names = [Path(p).name for p in paths]
    return ", ".join(names[:limit]) + (
        f" and {len(names) - limit} more" if len(names) > limit else ""
    )


def _check_alike(folder: Path, name: str, slices: list[SliceHeader]) -> None:
    """Refuse a series whose slices differ in size, orientation or pixel spacing."""
    kinds: dict[tuple, int] = {}
    for s in slices:
        key = (s.size, tuple(np.round(np.r_[s.row, s.col], 3)), tuple(np.round(s.spacing, 3)))
        kinds[key] = kinds.get(key, 0) + 1
    if len(kinds) > 1:
        shown = "; ".join(
            f"{n} of {k[0][0]} x {k[0][1]} pixels, {k[2][0]:g} x {k[2][1]:g} mm, "
            f"orientation {' '.join(f'{v:g}' for v in k[1])}"
            for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])[:3]
        )
        raise DataError(
            f"{folder}: {name} mixes slices of different size, pixel spacing or orientation "
            f"({shown}); export the CT's axial slices alone into the folder"
        )


def _stack(folder: Path, name: str, slices: list[SliceHeader], normal, unreadable: list[Path]):
    """Sort ``slices`` along ``normal``, merge duplicate positions, read the pixels.

    Returns the (X, Y, Z) int16 stack and the slices read, in stack order. Files whose pixels
    cannot be read are appended to ``unreadable``.
    """
    along = np.array([float(s.position @ normal) for s in slices])
    groups: list[list[int]] = []
    for i in np.argsort(along, kind="stable"):
        if groups and along[i] - along[groups[-1][0]] <= SAME_POSITION_MM:
            groups[-1].append(int(i))
        else:
            groups.append([int(i)])
    cols, rows = slices[0].size[:2]
    if cols * rows * len(groups) > max_voxels():
        raise DataError(
            f"{folder}: {name} has {len(groups)} slices of {cols} x {rows} pixels, over the "
            f"limit of {max_voxels():,} voxels (CTSEG_MAX_VOXELS); give one CT series"
        )
    stack = np.empty((cols, rows, len(groups)), dtype=np.int16)
    kept: list[SliceHeader] = []
    duplicates = 0
    for group in groups:
        first: SliceHeader | None = None
        for i in group:
            pixels = read_pixels(slices[i].path, slices[i].photometric)
            if pixels is None or pixels.shape != (cols, rows):
                unreadable.append(slices[i].path)
            elif first is None:
                first = slices[i]
                stack[:, :, len(kept)] = pixels
                kept.append(first)
            elif np.array_equal(pixels, stack[:, :, len(kept) - 1]):
                duplicates += 1
            else:
                raise DataError(
                    f"{folder}: {name} holds two different slices at the same position "
                    f"({along[i]:.4g} mm: {first.path.name} and {slices[i].path.name}), e.g. two "
                    "phases or reconstructions; put each in its own folder"
                )
    if duplicates:
        log.warning(
            "%s: %s stores %s twice with identical pixels; each was read once",
            folder, name, count_text(duplicates, "slice position"),
        )  # fmt: skip
    return stack[:, :, : len(kept)], kept


def _kind(headers: list[SliceHeader | None]) -> str:
    """'a localizer' or 'a secondary capture' for such a series (by its first readable file)."""
    return next((h.kind for h in headers if h is not None), "")


def _frames(headers: list[SliceHeader | None]) -> int:
    """The slices of a series: each file's frames, 1 for a file that cannot be read."""
    return sum(h.size[2] if h is not None else 1 for h in headers)


def _series_text(name: str, headers: list[SliceHeader | None]) -> str:
    """'series 9 (40 frames in 1 file)', 'series 3 "CT" (10 files)', '... (1 file, a localizer)'."""
    files, frames, kind = len(headers), _frames(headers), _kind(headers)
    count = count_text(files, "file")
    if frames != files:
        count = f"{count_text(frames, 'frame')} in {count}"
    return f"{name} ({count}{', ' + kind if kind else ''})"


def _check_ct_image(folder: Path, name: str, slices: list[SliceHeader]) -> None:
    """Refuse a series of colour images (a screenshot, a report) or of localizers alone."""
    colour = next((s for s in slices if s.samples != 1 or s.photometric not in _GREYSCALE), None)
    if colour is not None:
        raise DataError(
            f"{folder}: {name} is not a CT image series: {colour.path.name} holds "
            f"{colour.photometric} pixels ({count_text(colour.samples, 'sample')} each), as a "
            "screenshot or report does; give the folder of the CT series"
        )
    if slices and all(s.kind == "a localizer" for s in slices):
        raise DataError(
            f"{folder}: {name} is a localizer (ImageType LOCALIZER, the planning scan), not a "
            "CT volume; give the folder of the CT series"
        )


def _acquisition(s: SliceHeader) -> str:
    """Which acquisition a slice is of, for a message: 'acquisition 1' ('01', '+1', '1.0' and
    '1' alike: an IS value), or 'the slices without AcquisitionNumber'."""
    number = s.acquisition.strip()
    same = re.fullmatch(r"\+?0*(\d+?)(?:\.0*)?", number) if number.isascii() else None
    number = same.group(1) if same else number
    return f"acquisition {number}" if number else "the slices without AcquisitionNumber"


def _check_acquisitions_apart(folder: Path, name: str, slices: list[SliceHeader], normal) -> None:
    """Refuse two acquisitions (AcquisitionNumber) of one series whose slices interleave along
    ``normal``: a repeat or another phase would stack into one volume at a fraction of the slice
    step (or be blended by ``--resample-uneven``).

    "Interleave": two or more slices of each lie within the range they share, positions both
    hold left out (``_stack`` reads identical ones once and refuses different ones). Table
    positions of a step-and-shoot scan side by side, or overlapping at their edges by one
    off-grid slice each (then uneven spacing, said later), are one volume.
    """
    positions: dict[str, list[float]] = {}
    for s in slices:
        positions.setdefault(_acquisition(s), []).append(float(s.position @ normal))
    if len(positions) < 2:
        return
    along = {k: np.asarray(v) for k, v in positions.items()}
    spans = sorted((float(v.min()), float(v.max()), k) for k, v in along.items())
    for j, (start, stop, second) in enumerate(spans):
        for _, end, first in spans[:j]:
            low, high = start, min(end, stop)  # the range they share
            if high - low <= SAME_POSITION_MM:
                continue
            inside = [
                [z for z in along[k] if low - SAME_POSITION_MM <= z <= high + SAME_POSITION_MM
                 and np.abs(along[other] - z).min() > SAME_POSITION_MM]
                for k, other in ((first, second), (second, first))
            ]  # fmt: skip
            if min(map(len, inside)) >= 2:
                raise DataError(
                    f"{folder}: {name} holds two acquisitions whose slices interleave, {first} "
                    f"and {second} ({low:.4g} to {high:.4g} mm along the slice normal), e.g. a "
                    "repeat or another phase; put each acquisition's files in its own folder"
                )


def _check_not_sheared(folder: Path, name: str, slices: list[SliceHeader], normal) -> None:
    """Refuse slices whose positions drift in-plane along the stack (a gantry tilt)."""
    offsets = np.array([s.position for s in slices]) - slices[0].position
    along = offsets @ normal
    drift = np.linalg.norm(offsets - np.outer(along, normal), axis=1)
    extent = float(along.max() - along.min())
    if extent > 0 and drift.max() > max(SAME_POSITION_MM, 1e-3 * extent):
        tilt = np.degrees(np.arctan(drift.max() / extent))
        raise DataError(
            f"{folder}: {name} is sheared: its slices shift {drift.max():.3g} mm in-plane over "
            f"{extent:.4g} mm (a gantry tilt of about {tilt:.2g} degrees); convert it with "
            "dcm2niix, which corrects the tilt, and give the .nii.gz"
        )


#: extensions of files an export leaves beside its slices (notes, thumbnails, indexes): one
#: that cannot be opened is left out with the others that are no DICOM, not refused
NOT_SLICES = {".txt", ".xml", ".json", ".csv", ".pdf", ".jpg", ".jpeg", ".png", ".bmp", ".db",
              ".ini", ".md", ".htm", ".html", ".log", ".nii", ".gz", ".zip"}  # fmt: skip


def _readable_files(folder: Path) -> list[Path]:
    """``folder_files(folder)``; DataError when ``folder``, or a file in it that may be a
    slice, cannot be opened (no permission, a stale mount): left out as "damaged", a slice
    would become a gap, and the fix would be wrong."""
    try:
        files = folder_files(folder)
    except OSError as exc:
        raise DataError(cannot_read(str(folder), exc, folder)) from None
    maybe_slices = [path for path in files if path.suffix.lower() not in NOT_SLICES]
    failed = [(path, exc) for path in maybe_slices if (exc := read_error(path))]
    if failed:
        path, exc = failed[0]
        more = f" and {count_text(len(failed) - 1, 'other file')}" if len(failed) > 1 else ""
        raise DataError(cannot_read(f"{folder}: {path.name}{more}", exc, path))
    return files


def read_dicom_series(folder: str | Path, *, resample_uneven: bool = False) -> nib.Nifti1Image:
    """Read the CT series in ``folder`` as an int16 NIfTI image (HU, RAS+ affine).

    When the folder holds several series the largest CT volume is read (by slices, frames
    counted; localizers and secondary captures last) and the choice is logged by the series'
    number and description. Unreadable files are left out with a warning, as is a file that
    makes GDCM's folder listing fail. Raises
    DataError when there is no DICOM series, for different pixels at one position, for slices
    of different geometry, and for missing slices or uneven spacing unless ``resample_uneven``
    (then the stack is interpolated onto a uniform grid of the median step, with a warning).
    """
    folder = Path(folder)
    if not is_dir(folder):
        raise DataError(f"{folder} is not a folder; give a folder of .dcm files of one CT series")
    in_folder = _readable_files(folder)
    series, reasons = list_series(folder)
    listed = {Path(f).name for files in series.values() for f in files}
    unreadable = [p for p in in_folder if p.name not in listed | set(reasons)]
    unreadable += [folder / f for f, why in reasons.items() if not why]
    if not series:
        nifti = sorted(folder.glob("*.nii.gz")) + sorted(folder.glob("*.nii"))
        hint = f"; for a NIfTI CT give the file ({nifti[0]})" if nifti else ""
        known = [f"{f} is {why}" for f, why in reasons.items() if why][:1]
        raise DataError(
            f"{folder} holds no readable DICOM series{''.join(f' ({k})' for k in known)}; "
            f"give a folder of CT .dcm files{hint}"
        )
    for file, why in reasons.items():
        if why:
            log.warning("%s: left out %s, %s, which SimpleITK cannot read", folder, file, why)
    headers = {u: [read_header(Path(f)) for f in files] for u, files in series.items()}
    # a CT volume before a localizer or screenshot, then the most slices (frames, not files)
    uid = max(series, key=lambda u: (not _kind(headers[u]), _frames(headers[u])))
    name = series_name(series[uid][0], uid)
    if len(series) > 1:
        others = ", ".join(
            _series_text(series_name(f[0], u), headers[u]) for u, f in series.items() if u != uid
        )
        log.warning(
            "%s holds %d series; reading the largest, %s; others: %s",
            folder, len(series), _series_text(name, headers[uid]), others,
        )  # fmt: skip
    slices: list[SliceHeader] = []
    for path, header in zip(map(Path, series[uid]), headers[uid], strict=True):
        if header is None:
            unreadable.append(path)
        else:
            slices.append(header)
    _check_ct_image(folder, name, slices)
    lacking = next((s for s in slices if s.missing or s.bad), None)
    if lacking is not None and lacking.missing:  # identity orientation or 1 mm would be guessed
        raise DataError(
            f"{folder}: {lacking.path.name} of {name} states no {' or '.join(lacking.missing)}, "
            "so its geometry is unknown; export the series again with it (a CT series has it)"
        )
    if lacking is not None:
        raise DataError(
            f"{folder}: {lacking.path.name} of {name} has an impossible geometry: {lacking.bad}, "
            "which SimpleITK would replace by a guess; export the series again"
        )
    if len(series[uid]) == 1 and slices and slices[0].size[2] > 1:
        cols, rows, frames = slices[0].size
        if cols * rows * frames > max_voxels():  # before its pixels are decoded
            raise DataError(
                f"{folder}: {name} has {frames} frames of {cols} x {rows} pixels, over the "
                f"limit of {max_voxels():,} voxels (CTSEG_MAX_VOXELS); give one CT series"
            )
        return read_volume_file(folder, slices[0].path, slices[0].photometric)
    if any(s.size[2] > 1 for s in slices):
        raise DataError(
            f"{folder}: {name} holds multi-frame files among others; convert it with dcm2niix "
            "and give the .nii.gz"
        )
    if slices:
        _check_alike(folder, name, slices)
        normal = np.cross(slices[0].row, slices[0].col)
        _check_not_sheared(folder, name, slices, normal)
        _check_acquisitions_apart(folder, name, slices, normal)
        stack, kept = _stack(folder, name, slices, normal, unreadable)
    if unreadable:
        log.warning(
            "%s: left out %s that cannot be read as DICOM (truncated, damaged or not DICOM): %s",
            folder, count_text(len(unreadable), "file"), _names(unreadable),
        )  # fmt: skip
    if not slices or not kept:
        raise DataError(
            f"{folder}: no file of {name} can be read ({_names(unreadable)}); "
            "copy or export the series again"
        )
    positions = np.array([s.position @ normal for s in kept])
    stack, step = uniform_stack(folder, name, stack, positions, len(unreadable), resample_uneven)
    if stack.shape[2] == 1:  # its depth, and so each voxel's volume, is the thickness alone
        if kept[0].thickness:
            log.warning(
                "%s: %s holds one slice; read as a volume one slice deep, %g mm thick (its "
                "SliceThickness)", folder, name, kept[0].thickness,
            )  # fmt: skip
        else:
            log.warning(
                "%s: %s holds one slice and states no SliceThickness; read as a volume one "
                "slice deep, 1 mm thick (a guess: volumes in ml scale with it)", folder, name,
            )  # fmt: skip
    step = step or kept[0].thickness or 1.0
    first = kept[0]
    axes = np.column_stack(
        [first.row * first.spacing[0], first.col * first.spacing[1], normal * step]
    )
    return nifti_from_lps(stack, axes, first.position)
