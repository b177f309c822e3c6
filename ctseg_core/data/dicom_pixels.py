"""The pixels of one DICOM slice file as int16 HU (``dicom.read_dicom_series`` stacks them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_pixels(path: Path) -> np.ndarray | None:
    """(X, Y) int16 HU of one slice file (rescale applied, rounded, clipped), or None."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        return None
    data = sitk.GetArrayFromImage(image)  # (1, rows, cols)
    data = data.reshape(data.shape[-2:]).T
    if np.issubdtype(data.dtype, np.floating):
        data = np.rint(data)
    return np.clip(data, -32768, 32767).astype(np.int16)
