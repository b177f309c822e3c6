"""Whole-CT prediction: one predictor for a checkpoint or an ensemble, with optional TTA.

The predictor loads the checkpoints and checks that they agree; how a CT is cut into model inputs
and put back together is a strategy (``inference.strategies``), named by the model's registry
entry: batches of axial slices for a 2D or 2.5D model, sliding-window patches for a volumetric
one (``batch_slices`` is then patches per forward pass). Scores are averaged over test-time augmentations and members; the volume is
held as uint8 labels, never as a 117-channel float volume, and memory is bounded by one batch.
Writing back onto the CT's original grid is :mod:`.files`' job (:func:`predict_file`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.volume import Volume
from ..device import free_bytes, host_free_bytes, resolve_device
from ..errors import ConfigError, CtsegError
from ..labels import is_structure, value_of
from ..models.registry import model_spec
from .strategies import STRATEGIES

log = logging.getLogger(__name__)


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


def _dims(shape_xyz: Sequence[int]) -> str:
    return " x ".join(str(int(s)) for s in shape_xyz)


def settings_for_3d(overlap: float, body_crop: bool) -> str:
    """The sliding-window settings given other than their defaults, said when a model that does
    not use them is run ("overlap 0.8 and no body crop"; "" for none)."""
    given = [f"overlap {overlap:g}"] if overlap != 0.5 else []
    return " and ".join(given + ([] if body_crop else ["no body crop"]))


def _fitting_batch(need: Callable[[int], int], batch: int, limit: int) -> int | None:
    """The largest of ``batch``, ``batch // 2``, .. 1 whose ``need(batch)`` bytes fit
    ``limit``; None when not even 1 does."""
    while batch > 1 and need(batch) > limit:
        batch //= 2
    return batch if need(batch) <= limit else None


class Predictor:
    """Loaded checkpoints (an ensemble of one or more) ready to label CT volumes.

    All checkpoints must predict the same structures (ConfigError otherwise); they may differ in
    target size, HU window and context slices (each gets its own preprocessing). ``tta``: models
    trained with left/right mirroring are also run on the mirrored slices (scores flipped back
    and left/right label channels swapped with ``lr_swap_lut``); other models on two slightly
    shifted copies, because mirroring a model that never saw a mirrored body would mislabel sides.
    ``device`` "auto" runs on a GPU when there is one (the dashboard's server included).
    ``overlap``: the share of a patch that neighbouring windows share (volumetric models).
    ``body_crop``: volumetric models label only the box around the body, at least a patch wide
    (``inference.body_box``; the rest is background); False: the whole CT, as nnU-Net does.
    """

    def __init__(self, checkpoints: Sequence[str | Path], device: str | torch.device = "auto",
                 batch_slices: int = 8, tta: bool = False, overlap: float = 0.5,
                 body_crop: bool = True) -> None:  # fmt: skip
        from ..models.checkpoint import load_model

        if isinstance(checkpoints, str | Path):
            checkpoints = [checkpoints]
        if not checkpoints:
            raise ConfigError("no checkpoint given; pass at least one .pth file")
        if batch_slices < 1:
            raise ConfigError(f"batch_slices must be >= 1, got {batch_slices}")
        if not 0.0 <= overlap <= 0.9:  # 0.9 already runs ~125x the windows of 0.5
            raise ConfigError(f"overlap must be in [0, 0.9] (nnU-Net's is 0.5), got {overlap}")
        self.overlap = float(overlap)
        self.body_crop = bool(body_crop)
        #: (x, y, z) slices of the canonical CT the last ``predict`` labelled (the body's box);
        #: None: all of it
        self.last_box: tuple[slice, ...] | None = None
        self.device = resolve_device(device)
        self.batch_slices, self.tta = int(batch_slices), bool(tta)
        self.members: list[_Member] = []
        for path in checkpoints:
            model, config = load_model(path, device=self.device)
            member = _Member(Path(path), model, config)
            # in any order: every member's scores are read by label value
            if self.members and set(config.data.structures) != set(self.structures):
                differ = sorted(set(config.data.structures) ^ set(self.structures))
                raise ConfigError(
                    f"{member.path} predicts other structures than "
                    f"{self.members[0].path} ({', '.join(differ[:5])}); an ensemble needs "
                    "checkpoints trained on the same structures"
                )
            if self.members and config.output_mode != self.members[0].config.output_mode:
                # a softmax's probabilities share one sum, sigmoids are each voted at 0.5:
                # their mean has no meaning a user would expect, so it is not taken silently
                raise ConfigError(
                    f"{member.path} outputs {config.output_mode} scores and "
                    f"{self.members[0].path} {self.members[0].config.output_mode}; an ensemble "
                    "needs checkpoints with the same output: predict with each alone instead"
                )
            unknown = [s for s in config.data.structures if not is_structure(s)]
            if unknown:
                raise ConfigError(f"{member.path} predicts unknown structures {unknown[:5]}")
            self.members.append(member)
        self.active = sorted({0, *(value_of(s) for s in self.structures)})  # label values
        kinds = {m.path: model_spec(m.config.model.name).inference for m in self.members}
        if len(set(kinds.values())) > 1:
            named = ", ".join(
                f"{p} is {'3D' if k == 'patches' else '2D'}" for p, k in kinds.items()
            )
            raise ConfigError(f"{named}: an ensemble needs checkpoints of one kind")
        kind = next(iter(kinds.values()))
        self.strategy = STRATEGIES[kind](self)
        #: settings given that these models do not use, to be said beside their results
        self.notes: list[str] = []
        if (unused := settings_for_3d(overlap, body_crop)) and kind == "slices":
            self.notes.append(
                f"{unused}: for 3D models only, and {self.members[0].path} is 2D; not used"
            )

    @property
    def structures(self) -> list[str]:
        return list(self.members[0].config.data.structures)

    def estimate_bytes(self, shape_xyz: Sequence[int], batch_slices: int | None = None,
                       spacing_mm: Sequence[float] | None = None) -> int:  # fmt: skip
        """Peak memory (bytes) of labelling a CT of ``shape_xyz`` (voxel size ``spacing_mm``,
        which a volumetric model resamples), as the strategy estimates it."""
        batch = int(batch_slices or self.batch_slices)
        return self.strategy.estimate_bytes(shape_xyz, batch, spacing_mm)

    def check_memory(self, shape_xyz: Sequence[int], limit_bytes: int | None = None,
                     spacing_mm: Sequence[float] | None = None,
                     device_limit_bytes: int | None = None) -> int:  # fmt: skip
        """The batch size that fits: the whole estimate within ``limit_bytes`` (default 80 % of
        the host's available memory) and, on a GPU, its part there within
        ``device_limit_bytes`` (default 90 % of the GPU's free memory; checked on any device
        when given).

        Lowers the batch down to 1 where needed. A volumetric model whose score sums do not fit
        the GPU keeps them in host memory (``PatchStrategy.host_sums``: slower, nnU-Net's
        fallback too). Raises CtsegError with the size and the limit when even one slice or
        patch at a time does not fit.
        """
        limit = int(limit_bytes if limit_bytes is not None else 0.8 * host_free_bytes())
        if hasattr(self.strategy, "host_sums"):
            self.strategy.host_sums = False
        batch = _fitting_batch(
            lambda b: self.estimate_bytes(shape_xyz, b, spacing_mm), self.batch_slices, limit
        )
        if batch is None:
            need = self.estimate_bytes(shape_xyz, 1, spacing_mm)
            raise CtsegError(
                f"a CT of {_dims(shape_xyz)} voxels needs about {_gb(need)} to predict, more "
                f"than the {_gb(limit)} memory limit; crop or resample the CT, or use a machine "
                "with more memory"
            )
        if self.device.type == "cuda" or device_limit_bytes is not None:
            batch = self._check_device_memory(shape_xyz, batch, spacing_mm, device_limit_bytes)
        if batch < self.batch_slices:
            log.info("batch lowered to %d to stay within the memory limits", batch)
        return batch

    def _check_device_memory(self, shape_xyz: Sequence[int], batch: int,
                             spacing_mm: Sequence[float] | None,
                             limit_bytes: int | None) -> int:  # fmt: skip
        """The batch (at most ``batch``) whose part on the GPU fits, the score sums there if
        they fit at all, else in host memory; CtsegError when neither does."""
        limit = int(limit_bytes if limit_bytes is not None else 0.9 * free_bytes(self.device))
        strategy = self.strategy
        for host_sums in (False, True) if hasattr(strategy, "host_sums") else (None,):
            if host_sums is not None:
                strategy.host_sums = host_sums
            fits = _fitting_batch(
                lambda b: strategy.device_bytes(shape_xyz, b, spacing_mm), batch, limit
            )
            if fits is not None:
                return fits
        need = strategy.device_bytes(shape_xyz, 1, spacing_mm)
        what = "the network on one patch" if host_sums else f"a CT of {_dims(shape_xyz)} voxels"
        raise CtsegError(
            f"{what} needs about {_gb(need)} of {self.device} memory, more than the "
            f"{_gb(limit)} it can spare now; free the GPU, or predict on the CPU (--device cpu)"
        )

    def predict(self, ct: Volume | np.ndarray, progress: Callable[[int, int, str], None] | None = None,
                memory_limit_bytes: int | None = None,
                spacing_mm: Sequence[float] | None = None) -> np.ndarray:  # fmt: skip
        """Label a canonical CT: (X, Y, Z) int16 HU (a Volume or an array) -> (X, Y, Z) uint8.

        Values are label values 0..117 (only those of the model's structures occur).
        ``spacing_mm``: the voxel size of an array (a Volume has its own); a volumetric model
        needs it to resample. ``progress(done, total, "slices" or "patches")`` after each batch.
        """
        ct_xyz = ct.array if isinstance(ct, Volume) else np.asarray(ct)
        if isinstance(ct, Volume):
            spacing_mm = ct.spacing_mm
        if ct_xyz.ndim != 3:
            raise CtsegError(f"the CT has shape {ct_xyz.shape}; a 3D (X, Y, Z) volume is expected")
        if spacing_mm is not None and not all(
            math.isfinite(float(s)) and float(s) > 0 for s in spacing_mm
        ):
            raise CtsegError(
                f"the CT's voxel spacing {tuple(spacing_mm)} mm must be > 0 and finite"
            )
        if np.issubdtype(ct_xyz.dtype, np.floating) and not np.isfinite(ct_xyz).all():
            bad = int(ct_xyz.size - np.isfinite(ct_xyz).sum())
            raise CtsegError(
                f"the CT holds {bad} NaN/inf voxels; replace them (data.volume.load_ct(path, "
                "allow_nan=True) reads them as air, -1024 HU)"
            )
        batch = self.check_memory(ct_xyz.shape, memory_limit_bytes, spacing_mm)
        self.last_box = None
        for _ in range(2):
            if getattr(self.strategy, "host_sums", False):
                log.warning(
                    "the score sums of a CT of %s voxels do not fit %s's free memory: kept in "
                    "host memory (slower)", _dims(ct_xyz.shape), self.device,
                )  # fmt: skip
            try:
                return self.strategy.label(ct_xyz, batch, progress, spacing_mm)
            except torch.cuda.OutOfMemoryError:  # the estimate was short, or others took memory
                pass  # handled out of the clause, whose frames hold the GPU tensors
            torch.cuda.empty_cache()
            if getattr(self.strategy, "host_sums", True):
                raise CtsegError(
                    f"{self.device} ran out of memory labelling a CT of {_dims(ct_xyz.shape)} "
                    f"voxels, {batch} at a time; free the GPU, lower --batch-slices, or predict "
                    "on the CPU (--device cpu)"
                )
            self.strategy.host_sums = True  # as nnU-Net falls back
        raise AssertionError("a second pass has its score sums in host memory")


def predict_volume(
    ct: Volume,
    checkpoints: Sequence[str | Path],
    batch_slices: int = 8,
    tta: bool = False,
    device: str | torch.device = "auto",
    progress: Callable[[int, int, str], None] | None = None,
    memory_limit_bytes: int | None = None,
    body_crop: bool = True,
) -> np.ndarray:
    """Label a canonical CT with one checkpoint or an ensemble: (X, Y, Z) uint8 values 0..117.

    See :class:`Predictor` (load once, predict many) for TTA, ensemble and ``body_crop``
    details. Raises CtsegError when the CT would not fit in memory (the estimate and the limit
    in the message).
    """
    predictor = Predictor(checkpoints, device=device, batch_slices=batch_slices, tta=tta,
                          body_crop=body_crop)  # fmt: skip
    return predictor.predict(ct, progress=progress, memory_limit_bytes=memory_limit_bytes)
