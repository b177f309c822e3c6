"""Whole-CT prediction: batched axial slices, optional TTA and ensembles, memory bounded by a batch.

A CT (canonical (X, Y, Z) int16 HU) is cut into batches of axial slices (with their 2.5D context
when the model was trained so), each batch is normalised and resized to the model's target size,
scored (``label_scores``: (B, 118, h, w) per label value), averaged over test-time augmentations
and checkpoints, brought back to the CT's in-plane size and turned into labels with an argmax.
Only one batch of scores exists at a time; the volume itself is held as uint8 labels, never as
a 117-channel float volume. Writing back onto the CT's original grid is :mod:`.predict_io`'s job
(:func:`predict_file`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data.slices import context_indices, normalize_hu, resize_batch
from ..data.volume import Volume
from ..device import resolve_device
from ..errors import ConfigError, CtsegError
from ..labels import LABEL_OF, NUM_LABELS, lr_swap_lut
from ..models.head import label_scores

log = logging.getLogger(__name__)

#: channels upsampled to the CT's size at once (bounds the largest float buffer)
_UPSAMPLE_CHANNELS = 16
#: TTA shifts (pixels at the model's resolution) for models trained without left/right mirroring
_TTA_SHIFTS = ((2, 2), (-2, -2))


def available_memory_bytes() -> int:
    """Memory the process can use now: MemAvailable of /proc/meminfo, else physical memory."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass
class _Member:
    """One checkpoint of the ensemble and its preprocessing."""

    path: Path
    model: torch.nn.Module
    config: object  # RunConfig

    @property
    def target_size(self) -> tuple[int, int]:
        return tuple(int(s) for s in self.config.data.target_size)

    @property
    def context(self) -> int:
        return int(self.config.data.context_slices)


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


class Predictor:
    """Loaded checkpoints (an ensemble of one or more) ready to label CT volumes.

    All checkpoints must predict the same structures (ConfigError otherwise); they may differ in
    target size, HU window and context slices (each gets its own preprocessing). ``tta``: models
    trained with left/right mirroring are also run on the mirrored slices (scores flipped back
    and left/right label channels swapped with ``lr_swap_lut``); other models on two slightly
    shifted copies, because mirroring a model that never saw a mirrored body would mislabel sides.
    ``device`` "auto" runs on a GPU when there is one (the dashboard's server included).
    """

    def __init__(self, checkpoints: Sequence[str | Path], device: str | torch.device = "auto",
                 batch_slices: int = 8, tta: bool = False) -> None:  # fmt: skip
        from ..models.checkpoint import load_model

        if isinstance(checkpoints, str | Path):
            checkpoints = [checkpoints]
        if not checkpoints:
            raise ConfigError("no checkpoint given; pass at least one .pth file")
        if batch_slices < 1:
            raise ConfigError(f"batch_slices must be >= 1, got {batch_slices}")
        self.device = resolve_device(device)
        self.batch_slices, self.tta = int(batch_slices), bool(tta)
        self.members: list[_Member] = []
        for path in checkpoints:
            model, config = load_model(path, device=self.device)
            member = _Member(Path(path), model, config)
            if self.members and list(config.data.structures) != self.structures:
                raise ConfigError(
                    f"{member.path} predicts other structures than "
                    f"{self.members[0].path}; an ensemble needs checkpoints trained on the "
                    "same structures"
                )
            unknown = [s for s in config.data.structures if s not in LABEL_OF]
            if unknown:
                raise ConfigError(f"{member.path} predicts unknown structures {unknown[:5]}")
            self.members.append(member)
        # Scores of all members are averaged at the largest target size.
        self.work_size = tuple(max(m.target_size[i] for m in self.members) for i in range(2))
        self.active = sorted({0, *(LABEL_OF[s] for s in self.structures)})  # label values

    @property
    def structures(self) -> list[str]:
        return list(self.members[0].config.data.structures)

    def _augmentations(self, member: _Member) -> list[str]:
        if not self.tta:
            return ["identity"]
        if getattr(member.config.data, "mirror", False):
            return ["identity", "mirror"]
        return ["identity", *(f"shift{i}" for i in range(len(_TTA_SHIFTS)))]

    def estimate_bytes(self, shape_xyz: Sequence[int], batch_slices: int | None = None) -> int:
        """Peak memory (bytes) of labelling a CT of ``shape_xyz``, an estimate.

        Volume terms: the int16 CT and the uint8 labels (plus a copy of each for reorientation).
        Batch terms: the scores at the working size (one, plus accumulator and resize buffer),
        the upsampling buffer at the CT's size and the model's activations (about six float
        maps of the first U-Net level per slice).
        """
        x, y, z = (int(s) for s in shape_xyz)
        b = int(batch_slices or self.batch_slices)
        h, w = self.work_size
        n_active = len(self.active)
        volume = x * y * z * (2 + 2 + 1 + 1)
        scores = 3 * b * NUM_LABELS * h * w * 4
        upsample = 2 * b * min(_UPSAMPLE_CHANNELS, n_active) * x * y * 4 + 2 * b * x * y * 4
        width = max(int(m.config.model.features[0]) for m in self.members)
        context = max(m.context for m in self.members)
        activations = b * h * w * 4 * (6 * width + 2 * context)
        return volume + scores + upsample + activations

    def check_memory(self, shape_xyz: Sequence[int], limit_bytes: int | None = None) -> int:
        """The batch size that fits ``limit_bytes`` (default 80 % of available memory).

        Lowers the batch down to 1 slice when needed; raises CtsegError with the size and the
        limit when even one slice at a time does not fit.
        """
        limit = int(limit_bytes if limit_bytes is not None else 0.8 * available_memory_bytes())
        batch = self.batch_slices
        while batch > 1 and self.estimate_bytes(shape_xyz, batch) > limit:
            batch //= 2
        need = self.estimate_bytes(shape_xyz, batch)
        if need > limit:
            dims = " x ".join(str(int(s)) for s in shape_xyz)
            raise CtsegError(
                f"a CT of {dims} voxels needs about {_gb(need)} to predict, more than the "
                f"{_gb(limit)} memory limit; crop or resample the CT, or use a machine with more memory"
            )
        if batch < self.batch_slices:
            log.info("batch lowered to %d slices to stay within %s", batch, _gb(limit))
        return batch

    @torch.inference_mode()
    def _batch_scores(self, ct_xyz: np.ndarray, zs: list[int]) -> torch.Tensor:
        """(B, A, h, w) float32 scores of the active label values, averaged over TTA and members."""
        total, count = None, 0
        num_slices = ct_xyz.shape[2]
        for member in self.members:
            index = [i for z in zs for i in context_indices(z, num_slices, member.context)]
            stack = np.ascontiguousarray(np.moveaxis(ct_xyz[:, :, index], 2, 0))  # (B*C, X, Y)
            x = torch.from_numpy(stack).reshape(len(zs), member.context, *stack.shape[1:])
            x = normalize_hu(x, member.config.data.hu_window)
            x = resize_batch(x, member.target_size).to(self.device)
            for aug in self._augmentations(member):
                scores = self._scores(member, x, aug)
                if scores.shape[-2:] != self.work_size:
                    scores = F.interpolate(scores, size=self.work_size, mode="bilinear",
                                           align_corners=False)  # fmt: skip
                scores = scores[:, self.active]
                total = scores if total is None else total.add_(scores)
                count += 1
        return total.div_(count)

    def _scores(self, member: _Member, x: torch.Tensor, aug: str) -> torch.Tensor:
        if aug == "identity":
            return label_scores(member.model(x), member.config)
        if aug == "mirror":
            # H is the canonical x axis (patient left/right): flip, score, flip back, and give
            # each left/right label the score its mirror partner got.
            scores = label_scores(member.model(torch.flip(x, dims=[2])), member.config)
            lut = torch.from_numpy(lr_swap_lut().astype(np.int64)).to(scores.device)
            return torch.flip(scores, dims=[2])[:, lut]
        dh, dw = _TTA_SHIFTS[int(aug.removeprefix("shift"))]
        scores = label_scores(member.model(torch.roll(x, (dh, dw), dims=(2, 3))), member.config)
        return torch.roll(scores, (-dh, -dw), dims=(2, 3))

    def _to_labels(self, scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(B, A, h, w) scores -> (B, X, Y) uint8 label values at the CT's in-plane size.

        Scores are upsampled a few channels at a time with a running maximum, so the largest
        buffer is (B, 16, X, Y) floats, not (B, 118, X, Y).
        """
        active = torch.tensor(self.active, dtype=torch.int64, device=scores.device)
        if tuple(scores.shape[-2:]) == size:
            return active[scores.argmax(dim=1)].to(torch.uint8).cpu().numpy()
        best_value = best_index = None
        for start in range(0, scores.shape[1], _UPSAMPLE_CHANNELS):
            chunk = F.interpolate(scores[:, start : start + _UPSAMPLE_CHANNELS], size=size,
                                  mode="bilinear", align_corners=False)  # fmt: skip
            value, index = chunk.max(dim=1)
            index += start
            if best_value is None:
                best_value, best_index = value, index
            else:
                better = value > best_value  # ties keep the lower label value, as argmax does
                best_value = torch.where(better, value, best_value)
                best_index = torch.where(better, index, best_index)
        return active[best_index].to(torch.uint8).cpu().numpy()

    def predict(self, ct: Volume | np.ndarray, progress: Callable[[int, int, str], None] | None = None,
                memory_limit_bytes: int | None = None) -> np.ndarray:  # fmt: skip
        """Label a canonical CT: (X, Y, Z) int16 HU (a Volume or an array) -> (X, Y, Z) uint8.

        Values are label values 0..117 (only those of the model's structures occur).
        ``progress(done_slices, total_slices, "slices")`` after each batch.
        """
        ct_xyz = ct.array if isinstance(ct, Volume) else np.asarray(ct)
        if ct_xyz.ndim != 3:
            raise CtsegError(f"the CT has shape {ct_xyz.shape}; a 3D (X, Y, Z) volume is expected")
        batch = self.check_memory(ct_xyz.shape, memory_limit_bytes)
        x_size, y_size, num_slices = ct_xyz.shape
        labels = np.zeros(ct_xyz.shape, dtype=np.uint8)
        for start in range(0, num_slices, batch):
            zs = list(range(start, min(start + batch, num_slices)))
            scores = self._batch_scores(ct_xyz, zs)
            labels[:, :, zs[0] : zs[-1] + 1] = np.moveaxis(
                self._to_labels(scores, (x_size, y_size)), 0, 2
            )
            del scores
            if progress:
                progress(zs[-1] + 1, num_slices, "slices")
        return labels


def predict_volume(
    ct: Volume,
    checkpoints: Sequence[str | Path],
    batch_slices: int = 8,
    tta: bool = False,
    device: str | torch.device = "auto",
    progress: Callable[[int, int, str], None] | None = None,
    memory_limit_bytes: int | None = None,
) -> np.ndarray:
    """Label a canonical CT with one checkpoint or an ensemble: (X, Y, Z) uint8 values 0..117.

    See :class:`Predictor` (load once, predict many) for TTA and ensemble details. Raises
    CtsegError when the CT would not fit in memory (the estimate and the limit in the message).
    """
    predictor = Predictor(checkpoints, device=device, batch_slices=batch_slices, tta=tta)
    return predictor.predict(ct, progress=progress, memory_limit_bytes=memory_limit_bytes)
