"""The pixels of one DICOM slice file as int16 HU (``dicom.read_dicom_series`` stacks them).

A CT's HU are stored value x RescaleSlope + RescaleIntercept whatever its photometric
interpretation: MONOCHROME1 (white is low) says only how to display it. GDCM, which decodes
for SimpleITK, inverts MONOCHROME1 pixels before the rescale, so such a file is decoded from a
copy that says MONOCHROME2 (``decodable_copy``), its stored values untouched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def decodable_copy(path: Path, folder: Path, *, strip_rescale: bool = False) -> Path:
    """A copy of ``path`` in ``folder`` that says MONOCHROME2, so GDCM decodes it uninverted.

    The pixel data (compressed or not) is copied as stored. ``strip_rescale``: the rescale is
    set to slope 1, intercept 0 everywhere (top level and functional groups), so GDCM gives
    the stored values and the caller applies each frame's own rescale.
    """
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(str(path), force=True)  # as GDCM: a file without its preamble too
    ds.PhotometricInterpretation = "MONOCHROME2"
    if strip_rescale:
        for name in ("RescaleSlope", "RescaleIntercept"):
            if name in ds:
                delattr(ds, name)
        for frame in ds.get("PerFrameFunctionalGroupsSequence") or []:
            if "PixelValueTransformationSequence" in frame:
                del frame.PixelValueTransformationSequence
        shared = ds.get("SharedFunctionalGroupsSequence")
        if not shared:
            ds.SharedFunctionalGroupsSequence = Sequence([Dataset()])
        identity = Dataset()
        identity.RescaleSlope, identity.RescaleIntercept, identity.RescaleType = 1, 0, "US"
        ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence = Sequence([identity])
    if ds.preamble is None:  # a file without preamble and file meta: write both, as GDCM needs
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ImplicitVRLittleEndian

        ds.preamble = b"\0" * 128
        meta = ds.file_meta if getattr(ds, "file_meta", None) else FileMetaDataset()
        meta.setdefault("TransferSyntaxUID", ImplicitVRLittleEndian)
        for key, tag in (("MediaStorageSOPClassUID", "SOPClassUID"),
                         ("MediaStorageSOPInstanceUID", "SOPInstanceUID")):  # fmt: skip
            if tag in ds:  # an old ACR-NEMA file may state neither
                meta.setdefault(key, ds[tag].value)
        ds.file_meta = meta
    copy = folder / path.name
    ds.save_as(str(copy))
    return copy


def read_pixels(path: Path, photometric: str = "MONOCHROME2") -> np.ndarray | None:
    """(X, Y) int16 HU of one slice file (rescale applied, rounded, clipped), or None when it
    cannot be read; ``photometric``: its PhotometricInterpretation (MONOCHROME1 is decoded from
    a MONOCHROME2 copy, see the module's docstring)."""
    import tempfile

    import pydicom
    import SimpleITK as sitk

    try:
        if photometric != "MONOCHROME1":
            image = sitk.ReadImage(str(path))
        else:
            with tempfile.TemporaryDirectory(prefix="ctseg-dicom-") as tmp:
                image = sitk.ReadImage(str(decodable_copy(path, Path(tmp))))
    except (RuntimeError, OSError, pydicom.errors.InvalidDicomError):
        return None
    data = sitk.GetArrayFromImage(image)  # (1, rows, cols)
    data = data.reshape(data.shape[-2:]).T
    if np.issubdtype(data.dtype, np.floating):
        data = np.rint(data)
    return np.clip(data, -32768, 32767).astype(np.int16)
