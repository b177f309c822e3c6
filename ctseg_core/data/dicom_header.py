"""The headers of a DICOM folder: its series (``list_series``), a series' name as users know it
(``series_name``) and each file's slice geometry (``read_header``), read by SimpleITK (GDCM)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..fileio import is_file
from .dicom_frames import frame_groups


@dataclass
class SliceHeader:
    """The header of one slice file: position (LPS, mm), row and column directions, pixel size."""

    path: Path
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    row: np.ndarray  # (3,) direction of increasing column index (array x)
    col: np.ndarray  # (3,) direction of increasing row index (array y)
    spacing: tuple[float, float]  # (x, y) mm
    size: tuple[int, int, int]  # (columns, rows, frames)
    thickness: float
    missing: tuple[str, ...] = ()  # geometry tags the file lacks (SimpleITK fills in defaults)
    #: a geometry tag whose value SimpleITK would replace by a default, said as 'its
    #: PixelSpacing is 0\0 (...)'; '' when sound
    bad: str = ""
    photometric: str = "MONOCHROME2"  # PhotometricInterpretation
    samples: int = 1  # SamplesPerPixel: 3 for a colour image
    kind: str = ""  # '' for a CT image; 'a localizer' or 'a secondary capture' else
    acquisition: str = ""  # AcquisitionNumber as stored ('' when absent)


#: SOP classes of enhanced CT (and legacy converted): geometry in functional groups, not on top
_ENHANCED_CT = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
#: SOP classes of secondary captures (screenshots, reports; 1.2.840.10008.5.1.4.1.1.7.x)
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: how far off unit length, or off a right angle (as a cosine), an orientation may be: scanners
#: store it to a few decimals
_UNIT_TOLERANCE = 1e-2
#: the tags a slice's geometry comes from; without one SimpleITK assumes identity, 0 or 1 mm
_GEOMETRY_TAGS = {
    "0020|0032": "ImagePositionPatient",
    "0020|0037": "ImageOrientationPatient",
    "0028|0030": "PixelSpacing",
}


def list_series(folder: str | Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Series instance UID -> sorted file paths of that series, for every series in ``folder``;
    and file name -> why SimpleITK cannot read it, for files left out of the listing where a
    reason is known ('' where not).

    GDCM gives up on the whole folder at one file it cannot read (an enhanced file without its
    orientation throws a many-line RuntimeError): the files are then listed one by one, by
    their SeriesInstanceUID, and such files left out.
    """
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    # ITK prints "No Series were found" itself for a folder without DICOM; the caller says it
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return {
            uid: list(reader.GetGDCMSeriesFileNames(str(folder), uid))
            for uid in reader.GetGDCMSeriesIDs(str(folder))
        }, {}
    except RuntimeError:
        return _list_one_by_one(Path(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def folder_files(folder: Path) -> list[Path]:
    """The files of ``folder`` that may be DICOM slices (not hidden, not a DICOMDIR), sorted."""
    return [
        p
        for p in sorted(folder.iterdir())
        if is_file(p) and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
    ]


def _list_one_by_one(folder: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``list_series`` without GDCM's folder scan: each file's header read on its own."""
    import SimpleITK as sitk

    series: dict[str, list[str]] = {}
    reasons: dict[str, str] = {}
    for path in folder_files(folder):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            groups = frame_groups(path)
            reasons[path.name] = (
                f"an enhanced CT file that states no {' or '.join(groups.missing)}"
                if groups is not None and groups.missing
                else ""
            )
            continue
        series.setdefault(tag(reader, "0020|000e"), []).append(str(path))
    return series, reasons


def tag(reader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def series_name(first_file: str | Path, uid: str = "") -> str:
    """How a user knows a series: 'series 3 "CT Abdomen 2.0"' (SeriesNumber, SeriesDescription);
    the UID when the header has neither, '(unnamed series)' when it has no UID either."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first_file))
    try:
        reader.ReadImageInformation()
        number, description = tag(reader, "0020|0011"), tag(reader, "0008|103e")
    except RuntimeError:
        number = description = ""
    parts = [f"series {number}" if number else "", f'"{description}"' if description else ""]
    name = " ".join(p for p in parts if p)
    return name or (f"series {uid}" if uid else "(unnamed series)")


def read_header(path: Path) -> SliceHeader | None:
    """The slice header of one file, or None when SimpleITK cannot read it. An enhanced file's
    geometry, missing or bad, is checked in its functional groups (``frame_groups``)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    direction = np.array(reader.GetDirection()).reshape(3, 3)
    size = tuple(int(n) for n in reader.GetSize()) + (1,) * (3 - reader.GetDimension())
    try:
        thickness = float(tag(reader, "0018|0050") or 0.0)
    except ValueError:
        thickness = 0.0
    missing = tuple(name for key, name in _GEOMETRY_TAGS.items() if not tag(reader, key))
    bad = geometry_problem(tag(reader, "0020|0037"), tag(reader, "0028|0030"))
    sop_class = tag(reader, "0008|0016")
    if size[2] > 1 or sop_class in _ENHANCED_CT:
        # an enhanced file states its geometry in its functional groups, per frame
        groups = frame_groups(path)
        missing = groups.missing if groups is not None else ()
        thickness = groups.thickness if groups is not None else thickness
        bad = ""
        if groups is not None and not missing:
            bad = geometry_problem(*(
                "\\".join(f"{v:g}" for v in values[0])
                for values in (groups.orientations, groups.spacings)
            ))  # fmt: skip
    kind = ""
    if "LOCALIZER" in tag(reader, "0008|0008").upper():
        kind = "a localizer"
    elif sop_class.startswith(_SECONDARY_CAPTURE):
        kind = "a secondary capture"
    try:
        samples = int(tag(reader, "0028|0002") or 1)
    except ValueError:
        samples = 1
    return SliceHeader(path, np.array(reader.GetOrigin(), dtype=float), direction[:, 0],
                       direction[:, 1], tuple(reader.GetSpacing()[:2]), size[:3], thickness,
                       missing, bad, tag(reader, "0028|0004").upper() or "MONOCHROME2",
                       samples, kind, tag(reader, "0020|0012").strip())  # fmt: skip


def geometry_problem(orientation: str, spacing: str) -> str:
    """'' when ImageOrientationPatient (``orientation``, as stored: '1\\0\\0\\0\\1\\0') holds two
    unit vectors at right angles and PixelSpacing (``spacing``) two sizes over 0 mm, or either is
    absent (said elsewhere); else what is wrong, as 'its PixelSpacing is 0\\0 (...)'.

    SimpleITK replaces a zero or parallel orientation by identity, normalises one that is not
    unit, and a zero pixel size by 1 mm: each a guess of the geometry.
    """
    if orientation:
        numbers = _numbers(orientation)
        if len(numbers) != 6:
            return f"its ImageOrientationPatient is {orientation} (not 6 numbers)"
        row, col = np.array(numbers[:3]), np.array(numbers[3:])
        unit = max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(col) - 1))
        if not unit <= _UNIT_TOLERANCE or not abs(row @ col) <= _UNIT_TOLERANCE:
            return (
                f"its ImageOrientationPatient is {orientation} (the row and column directions "
                "must be unit vectors at right angles)"
            )
    if spacing:
        numbers = _numbers(spacing)
        if len(numbers) != 2 or not all(np.isfinite(v) and v > 0 for v in numbers):
            return f"its PixelSpacing is {spacing} (two pixel sizes over 0 mm)"
    return ""


def _numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split("\\")]
    except ValueError:
        return []
