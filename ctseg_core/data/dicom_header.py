"""The headers of a DICOM folder: its series (``list_series``), a series' name as users know it
(``series_name``) and each file's slice geometry (``read_header``), read by SimpleITK (GDCM)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


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


#: SOP classes of enhanced CT (and legacy converted): geometry in functional groups, not on top
_ENHANCED_CT = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
#: the tags a slice's geometry comes from; without one SimpleITK assumes identity, 0 or 1 mm
_GEOMETRY_TAGS = {
    "0020|0032": "ImagePositionPatient",
    "0020|0037": "ImageOrientationPatient",
    "0028|0030": "PixelSpacing",
}


def list_series(folder: str | Path) -> dict[str, list[str]]:
    """Series instance UID -> sorted file names of that series, for every series in ``folder``."""
    import SimpleITK as sitk

    folder = str(folder)
    reader = sitk.ImageSeriesReader()
    # ITK prints "No Series were found" itself for a folder without DICOM; the caller says it
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return {
            uid: list(reader.GetGDCMSeriesFileNames(folder, uid))
            for uid in reader.GetGDCMSeriesIDs(folder)
        }
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


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
    """The slice header of one file, or None when SimpleITK cannot read it."""
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
    if size[2] > 1 or tag(reader, "0008|0016") in _ENHANCED_CT:
        missing = ()  # an enhanced file states them in its functional groups, per frame
    return SliceHeader(path, np.array(reader.GetOrigin(), dtype=float), direction[:, 0],
                  direction[:, 1], tuple(reader.GetSpacing()[:2]), size[:3],
                  thickness, missing)  # fmt: skip
