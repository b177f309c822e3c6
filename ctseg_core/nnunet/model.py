"""An nnU-Net model folder (or TotalSegmentator's five parts) as a ctseg predictor.

``NnunetPredictor(path).predict(ct)`` labels a canonical CT (``data.volume.Volume``, (X, Y, Z)
int16 HU) and returns canonical (X, Y, Z) labels in ctseg's values (``labels.LABEL_OF``) for
the model's TotalSegmentator v2 structures; with ``own_values=True`` in the model's own values
(its ``value_names``). The CT is given to the model in the axis order of the reader its plans
name, so the result is nnU-Net's for the same file: every reader hands over voxel axes reversed,
SimpleITKIO and NibabelIO the file's, (k, j, i), NibabelIOWithReorient those of the file
reoriented to RAS+, (z, y, x).
TotalSegmentator's models (``labels.is_totalsegmentator``) are given the CT in RAS+, as
TotalSegmentator gives it to them (``orientation`` "auto"; "canonical" / "file" force either).
For TotalSegmentator's parts, each part predicts on its own and they are combined in part order,
a later part's structure replacing an earlier one's on a voxel both claim.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.volume import Volume, from_canonical, spacing_of, to_canonical
from ..device import resolve_device
from ..errors import ConfigError, CtsegError
from ..fileio import is_dir
from ..labels import value_of
from .folder import read_model_folder
from .labels import (
    ctseg_names,
    is_totalsegmentator,
    other_names,
    totalseg_part_folders,
    value_names,
)
from .predict import LoadedModel, peak_bytes, predict_array

#: how a model is given the CT's axes: as its plans' reader hands them over, or always RAS+
ORIENTATIONS = ("auto", "file", "canonical")


def _to_reader(ct: Volume, reader: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """(1, *spatial) float32 image and its spacing (mm) in the reader's axis order.

    All three readers reverse the voxel axes (nnU-Net's own readers transpose (2, 1, 0) "to be
    consistent with SimpleITK"); they differ in whose axes: the file's, or RAS+ for
    NibabelIOWithReorient (ctseg's canonical order, as both reorient with ``io_orientation``).
    """
    if reader == "NibabelIOWithReorient":
        array, spacing = ct.array, tuple(ct.spacing_mm)
    elif reader in ("NibabelIO", "SimpleITKIO"):
        array = from_canonical(ct.array, ct.original_affine)
        spacing = tuple(spacing_of(ct.original_affine))
    else:
        raise ConfigError(f"plans.json image_reader_writer {reader!r} is not supported")
    return array.transpose(2, 1, 0)[None].astype(np.float32), tuple(float(s) for s in spacing[::-1])


def _from_reader(labels: np.ndarray, ct: Volume, reader: str) -> np.ndarray:
    """Labels in the reader's axis order (:func:`_to_reader`) -> canonical (X, Y, Z)."""
    labels = labels.transpose(2, 1, 0)
    if reader == "NibabelIOWithReorient":
        return np.ascontiguousarray(labels)
    return to_canonical(labels, ct.original_affine)[0]


class NnunetPredictor:
    """Loaded nnU-Net model folder(s) ready to label canonical CTs (see the module doc).

    ``path``: a model folder, or a results folder holding TotalSegmentator's Dataset291..295;
    ``folds`` / ``checkpoint``: as :func:`folder.read_model_folder`; ``tta``: mirroring on the
    axes the model allows (nnU-Net's default is on); ``orientation``: one of ORIENTATIONS (module
    doc)."""

    @property
    def mirrors(self) -> bool:
        """Whether predictions are mirrored: asked for (``tta``) and allowed on some axis by
        some model (an exported ctseg run, say, allows none)."""
        return self.tta and any(model.mirror_axes for model, _ in self.models)

    def __init__(self, path: str | Path, device: str = "auto", tta: bool = True,
                 folds: Sequence[int | str] | None = None,
                 checkpoint: str | None = None, orientation: str = "auto") -> None:  # fmt: skip
        if orientation not in ORIENTATIONS:
            raise ConfigError(f"orientation {orientation!r} is not one of {ORIENTATIONS}")
        self.path = Path(path).expanduser()
        self.device = resolve_device(device)
        self.tta = bool(tta)
        #: what a caller was asked and this model does not use, said beside its results
        self.notes: list[str] = []
        try:
            parts = totalseg_part_folders(self.path) if is_dir(self.path) else None
        except OSError:  # read_model_folder says why it cannot be read
            parts = None
        folders = parts or [self.path]
        self.models = []
        self._readers = []  # the axis order each model is given the CT in
        for folder in folders:
            read = read_model_folder(folder, list(folds) if folds else None, checkpoint)
            self.models.append(
                (LoadedModel.load(read, self.device), value_names(read.labels, folder))
            )
            canonical = orientation == "canonical" or (
                orientation == "auto" and is_totalsegmentator(folder)
            )
            self._readers.append("NibabelIOWithReorient" if canonical else read.config.reader)
        self.value_names: dict[int, str] = {}
        self._luts = []
        offset = 0
        known: set[str] = set()
        for _, names in self.models:
            lut = np.zeros(max(names) + 1, dtype=np.int64)
            own = np.zeros(max(names) + 1, dtype=np.int64)
            ctseg = ctseg_names(names)  # a merge (and its listed members): the merge's value
            for value, name in names.items():
                lut[value] = value_of(ctseg[value]) if value in ctseg else 0
                own[value] = value + offset
                self.value_names[value + offset] = name
            known |= set(ctseg.values())
            self._luts.append((lut, own))
            offset += max(names) if parts else 0
        self._structures = sorted(known, key=value_of)

    @property
    def structures(self) -> list[str]:
        """The model's TotalSegmentator v2 structures and merges (``labels.MERGES``), in
        ctseg's value order."""
        return list(self._structures)

    @property
    def other_labels(self) -> dict[int, str]:
        """Model value -> name of the labels that are no TotalSegmentator v2 structure nor
        merge."""
        return other_names(self.value_names)

    def estimate_bytes(self, shape_xyz: Sequence[int],
                       spacing_mm: Sequence[float] | None = None) -> int:  # fmt: skip
        """Estimated peak bytes of labelling a CT of ``shape_xyz`` voxels (``spacing_mm``; None:
        the model's own spacing): the largest part's :func:`predict.peak_bytes` (the parts run
        one after another) plus the reader's float32 image and the labels being combined (the
        int64 mapped values, the uint8 result and masks: 16 bytes a voxel)."""
        n = math.prod(int(s) for s in shape_xyz)
        reader_shape = tuple(int(s) for s in shape_xyz)[::-1]
        peak = 0
        for model, _ in self.models:
            config = model.folder.config
            if spacing_mm is None:  # the model's grid: its spacing in the reader's axis order
                own = (1.0,) * (3 - len(config.spacing_mm)) + tuple(config.spacing_mm)
                spacing = [own[b] for b in config.transpose_backward]
            else:
                spacing = [float(s) for s in spacing_mm][::-1]
            on_cpu = self.device.type == "cpu"
            peak = max(peak, peak_bytes(model, reader_shape, spacing, on_cpu))
        return 4 * n + peak + 16 * n

    def check_memory(self, shape_xyz: Sequence[int], limit_bytes: int | None = None,
                     spacing_mm: Sequence[float] | None = None) -> int:  # fmt: skip
        """``inference.Predictor``'s interface: 1 (nnU-Net's window is one patch at a time) when
        :meth:`estimate_bytes` fits ``limit_bytes`` (default 80 % of the available memory),
        else CtsegError in one line with the need and the limit."""
        from ..device import host_free_bytes

        limit = int(limit_bytes if limit_bytes is not None else 0.8 * host_free_bytes())
        need = self.estimate_bytes(shape_xyz, spacing_mm)
        if need > limit:
            dims = " x ".join(str(int(s)) for s in shape_xyz)
            raise CtsegError(
                f"a CT of {dims} voxels needs about {need / 2**30:.1f} GB to predict with "
                f"{self.path.name}, more than the {limit / 2**30:.1f} GB memory limit; crop or "
                "resample the CT, or use a machine with more memory"
            )
        return 1

    def predict(self, ct: Volume, progress: Callable[[int, int, str], None] | None = None,
                memory_limit_bytes: int | None = None, own_values: bool = False) -> np.ndarray:  # fmt: skip
        """Label a canonical CT: (X, Y, Z) uint8 ctseg values (``own_values``: the model's)."""
        if not isinstance(ct, Volume):
            raise ConfigError("an nnU-Net model needs the CT's grid: pass a Volume (load_ct)")
        self.check_memory(ct.array.shape, memory_limit_bytes, ct.spacing_mm)
        out = np.zeros(ct.array.shape, dtype=np.uint16 if own_values else np.uint8)
        for (model, _), (lut, own), reader in zip(
            self.models, self._luts, self._readers, strict=True
        ):
            image, spacing = _to_reader(ct, reader)
            labels = None
            # an out-of-memory error is said below, once its frames (GPU tensors) are freed
            with contextlib.suppress(torch.cuda.OutOfMemoryError):
                labels = predict_array(model, image, spacing, self.tta, progress)
            if labels is None:
                torch.cuda.empty_cache()
                raise CtsegError(
                    f"{self.device} ran out of memory running {model.folder.path.name}; free "
                    "the GPU, or predict on the CPU (--device cpu)"
                )
            labels = _from_reader(labels, ct, reader)
            mapped = (own if own_values else lut)[labels]
            out[labels > 0] = mapped[labels > 0]
        return out if own_values and out.max() > 255 else out.astype(np.uint8)
