"""Small CT series written with pydicom (uncompressed, 8 x 8 pixels), for the DICOM reader tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def slice_pixels(k: int, rows: int = 8, cols: int = 8) -> np.ndarray:
    """(rows, cols) int16 stored values of slice ``k``: distinct per slice and per pixel."""
    return (np.arange(rows * cols, dtype=np.int16).reshape(rows, cols) * 3 + 100 * k).astype(
        np.int16
    )


def write_slice(
    path: Path,
    z_mm: float,
    pixels: np.ndarray,
    *,
    series_uid: str = "1.2.826.0.1.3680043.8.498.100",
    sop_uid: str,
    description: str = "CT Abdomen 2.0",
    number: int = 3,
    origin_xy: tuple[float, float] = (-10.0, -20.0),
    pixel_spacing: tuple[float, float] = (0.5, 0.75),
    thickness: float = 2.0,
    photometric: str = "MONOCHROME2",
    tags: dict | None = None,
) -> None:
    """One axial CT slice at ``z_mm`` (LPS), HU = stored - 1024; ``tags``: attributes set last
    (None deletes one), e.g. a bad ``ImageOrientationPatient`` or ``ImageType``."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.Modality = "CT"
    ds.PatientID = "test"
    ds.SeriesDescription = description
    ds.SeriesNumber = number
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [origin_xy[0], origin_xy[1], z_mm]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = list(pixel_spacing)  # row spacing (y), column spacing (x)
    ds.SliceThickness = thickness
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    for name, value in (tags or {}).items():
        if value is None:
            delattr(ds, name)
        else:
            setattr(ds, name, value)
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)


def write_series(folder: Path, z_mm, *, start: int = 1, pixels_of=None, **kwargs) -> list[Path]:
    """Slices at the positions ``z_mm``, one file each, numbered from ``start`` (``IM0001.dcm``,
    SOPInstanceUID ``<series>.1``, ...).

    ``pixels_of(i)`` gives the stored pixels of file i (default: ``slice_pixels(i)``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = kwargs.get("series_uid", "1.2.826.0.1.3680043.8.498.100")
    paths = []
    for i, z in enumerate(z_mm):
        path = folder / f"IM{start + i:04d}.dcm"
        pixels = pixels_of(i) if pixels_of else slice_pixels(i)
        write_slice(path, float(z), pixels, sop_uid=f"{series_uid}.{start + i}", **kwargs)
        paths.append(path)
    return paths


def write_multiframe(
    path: Path,
    z_mm,
    rows: int = 6,
    cols: int = 6,
    drift_mm: float = 0.0,
    instance: int = 1,
    *,
    rescales=None,
    orientations=None,
    leave_out: tuple[str, ...] = (),
    photometric: str = "MONOCHROME2",
    series_uid: str = "1.2.826.0.1.9",
) -> None:
    """One enhanced (multi-frame) CT file: frame k at z_mm[k] (LPS, axial, 0.5 mm pixels), its
    stored values 1024 + 10 k (HU 10 k), each frame's position in its functional groups;
    ``drift_mm``: frame k also moved k x that along y (a gantry tilt); ``instance``: the file's
    number in a series of such files. ``rescales`` / ``orientations``: (slope, intercept) / the
    six ImageOrientationPatient values of each frame, in its own group instead of the shared
    one; ``leave_out``: shared groups not written (e.g. "PixelMeasuresSequence")."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2.1"  # enhanced CT
    meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.90{instance}"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.StudyInstanceUID = "1.2.826.0.1.1"
    ds.FrameOfReferenceUID, ds.Modality, ds.PatientID = "1.2.826.0.1.2", "CT", "t"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber, ds.InstanceNumber = 9, instance
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, len(z_mm)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    measures, orientation, values = Dataset(), Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 2.0
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    values.RescaleIntercept, values.RescaleSlope, values.RescaleType = -1024, 1, "HU"
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    if orientations is None:
        shared.PlaneOrientationSequence = Sequence([orientation])
    if rescales is None:
        shared.PixelValueTransformationSequence = Sequence([values])
    for name in leave_out:
        delattr(shared, name)
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k, z in enumerate(z_mm):
        frame, position = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, k * drift_mm, float(z)]
        frame.PlanePositionSequence = Sequence([position])
        if orientations is not None:
            own = Dataset()
            own.ImageOrientationPatient = list(orientations[k])
            frame.PlaneOrientationSequence = Sequence([own])
        if rescales is not None:
            own = Dataset()
            own.RescaleSlope, own.RescaleIntercept, own.RescaleType = *rescales[k], "HU"
            frame.PixelValueTransformationSequence = Sequence([own])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    stored = [np.full((rows, cols), 1024 + 10 * k, np.int16) for k in range(len(z_mm))]
    ds.PixelData = np.stack(stored).tobytes()
    pydicom.dcmwrite(str(path), ds, enforce_file_format=True)
