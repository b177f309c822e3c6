"""Validation of a volumetric model on whole validation volumes: tiles, loss, one confusion pass.

Each validation subject, resampled to the run's spacing (``data.volumes``), is cut into
``data.patch_size`` tiles placed as the sliding window places them with an overlap of 0
(``inference.windows.window_starts``: the fewest windows, spread evenly from edge to edge, so
neighbours share a few voxels where the size is not a multiple of the patch). A volume smaller
than a patch along an axis is padded there (the run's ``data.padding``, ``data.patches.pad_value``;
labels: background), centred as the sliding window and the patch sampler centre it (the
network sees a short volume in validation as it does in training and inference), and the
padding is never scored. Every voxel is scored once, by the tile whose centre is nearest along
each axis (its "own" part), and the counts of all tiles go into one (subject, reference, prediction)
confusion table; Dice follows from it as in 2D validation (``validation.dice_from_confusions``,
pooled over subjects where a structure is annotated). The validation loss is the mean over tiles
of the loss on each tile's real voxels.

No Gaussian weighting and no overlap here: validation tracks training, each epoch, cheaply;
``ctseg evaluate`` scores the final model through the real inference path on the CT's own grid.
Under torchrun each rank validates every world-th subject and the counts are summed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch

from ..config import RunConfig
from ..data.patches import PatchDataset, pad_value
from ..data.slices import normalize_hu
from ..inference.windows import window_starts
from ..labels import NUM_LABELS
from ..models.head import predicted_labels
from ..nosync import count_values
from .losses import LossFn, annotated_rows
from .validation import learned_values, validation_metrics


@dataclass(frozen=True)
class Tile:
    """One model input. ``start`` (x, y, z): the subject's first voxel in the window; ``pad``:
    the padding voxels before it (> 0 only along an axis shorter than the patch), so window
    voxel ``i`` holds volume voxel ``start + i - pad``; ``real``: how many voxels along each
    axis are the volume's (from ``pad`` on; the rest is padding); ``own``: the voxels the tile
    scores, as (lo, hi) per axis in window coordinates."""

    subject: int
    start: tuple[int, int, int]
    own: tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
    real: tuple[int, int, int]
    pad: tuple[int, int, int] = (0, 0, 0)


def axis_tiles(size: int, patch: int) -> list[tuple[int, int, int, int]]:
    """Along an axis of ``size`` voxels: (start, own_lo, own_hi, pad) per window, own_* in
    window coordinates (volume voxel start + i - pad at window voxel i); the owned ranges cover
    0..size-1 exactly once (a window owns up to the midpoint of its overlap with each
    neighbour). An axis shorter than the patch: one window, the volume centred in it (``pad``
    = (patch - size) // 2, as ``inference.patches`` pads)."""
    if size < patch:
        pad = (patch - size) // 2
        return [(0, pad, pad + size, pad)]
    starts = window_starts(size, patch, 0.0)
    out = []
    for i, start in enumerate(starts):
        lo = 0 if i == 0 else (start + starts[i - 1] + patch) // 2
        hi = (
            min(size, start + patch)
            if i == len(starts) - 1
            else (starts[i + 1] + start + patch) // 2
        )
        out.append((start, lo - start, hi - start, 0))
    return out


def volume_tiles(subject: int, shape_xyz, patch_xyz) -> list[Tile]:
    """The tiles of one volume of ``shape_xyz`` voxels (see the module doc)."""
    shape, patch = [int(n) for n in shape_xyz], [int(p) for p in patch_xyz]
    per_axis = [axis_tiles(n, p) for n, p in zip(shape, patch, strict=True)]
    tiles = []
    for tx, ty, tz in itertools.product(*per_axis):
        start = (tx[0], ty[0], tz[0])
        real = tuple(min(p, n - s) for p, n, s in zip(patch, shape, start, strict=True))
        own = ((tx[1], tx[2]), (ty[1], ty[2]), (tz[1], tz[2]))
        tiles.append(Tile(subject, start, own, real, (tx[3], ty[3], tz[3])))
    return tiles


def read_tile(volume: np.ndarray, tile: Tile, patch, fill) -> np.ndarray:
    """The ``patch``-sized window of ``tile`` (X, Y, Z) from ``volume``: its real voxels at
    ``tile.pad``, ``fill`` around them."""
    window = tuple(slice(s, s + n) for s, n in zip(tile.start, tile.real, strict=True))
    part = np.asarray(volume[window])
    if part.shape == tuple(patch):
        return part
    out = np.full(tuple(patch), fill, dtype=volume.dtype)
    out[tuple(slice(p, p + n) for p, n in zip(tile.pad, tile.real, strict=True))] = part
    return out


class VolumeValidation:
    """Validates a volumetric model each epoch (module doc); ``len()`` is the number of batches
    this rank runs. ``keep`` (subject index, z) slices are kept as predicted for the sample
    figure (``kept``: (subject, z) -> (X, Y) uint8 label values of the last validation)."""

    def __init__(
        self,
        dataset: PatchDataset,
        config: RunConfig,
        rank: int = 0,
        world: int = 1,
        keep: list[tuple[int, int]] = (),
    ):
        self.dataset, self.config = dataset, config
        self.patch = tuple(int(p) for p in config.data.patch_size)
        self.batch = max(1, int(config.data.batch_size))
        mine = range(rank, len(dataset.subjects), world)
        self.tiles = [
            t for s in mine for t in volume_tiles(s, dataset.subjects[s].shape_xyz, self.patch)
        ]
        self.keep = list(keep)
        self.kept: dict[tuple[int, int], np.ndarray] = {}

    def __len__(self) -> int:
        return -(-len(self.tiles) // self.batch)

    def _batch(self, tiles: list[Tile]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, px, py, pz) normalised CT and (B, px, py, pz) uint8 labels of ``tiles``."""
        subjects = self.dataset.subjects
        data = self.config.data
        image = torch.full((len(tiles), 1, *self.patch), pad_value(data), dtype=torch.float32)
        for b, t in enumerate(tiles):  # normalised first, padded after (data.patches)
            window = tuple(slice(s, s + n) for s, n in zip(t.start, t.real, strict=True))
            real = torch.from_numpy(np.array(subjects[t.subject].ct[window]))
            inside = (slice(p, p + n) for p, n in zip(t.pad, t.real, strict=True))
            image[(b, 0, *inside)] = normalize_hu(real, data.hu_window)
        labels = np.stack([read_tile(subjects[t.subject].labels, t, self.patch, 0) for t in tiles])
        return image, torch.from_numpy(labels)

    def _keep_slices(self, tile: Tile, predicted: torch.Tensor) -> None:
        """Copy the owned part of ``predicted`` (px, py, pz) into the kept figure slices."""
        (x0, x1), (y0, y1), (z0, z1) = tile.own
        (sx, sy, sz), (px, py, pz) = tile.start, tile.pad
        for s, z in self.keep:
            w = z - sz + pz  # the slice's z in the window
            if s != tile.subject or not z0 <= w < z1:
                continue
            if (s, z) not in self.kept:
                self.kept[(s, z)] = np.zeros(self.dataset.subjects[s].shape_xyz[:2], np.uint8)
            part = predicted[x0:x1, y0:y1, w].cpu().numpy().astype(np.uint8)
            self.kept[(s, z)][sx + x0 - px : sx + x1 - px, sy + y0 - py : sy + y1 - py] = part

    @torch.no_grad()
    def run(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        device: torch.device,
        autocast: AbstractContextManager,
        channels_last: bool,
        stop_check: Callable[[], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict:
        """{"val_loss", "val_dice_mean", "val_dice": {name: dice or None}}, as 2D validation."""
        cfg = self.config
        model.eval()
        n_subjects = len(self.dataset.subjects)
        counts = torch.zeros(n_subjects * NUM_LABELS**2, dtype=torch.int64, device=device)
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # (sum, tiles)
        lut = torch.from_numpy(self.dataset.lut).long().to(device)
        keep = learned_values(cfg, device)
        annotated = self.dataset.annotated_classes()
        self.kept = {}
        total = len(self)
        if progress is not None:
            progress(0, total)
        for done, first in enumerate(range(0, len(self.tiles), self.batch), start=1):
            if stop_check is not None:
                stop_check()
            tiles = self.tiles[first : first + self.batch]
            image, labels = self._batch(tiles)
            image = image.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True).long()
            if channels_last:
                image = image.contiguous(memory_format=torch.channels_last_3d)
            with autocast:
                logits = model(image)
            predicted = predicted_labels(logits, cfg)  # (B, px, py, pz) label values
            subjects = torch.tensor([t.subject for t in tiles])
            rows = annotated_rows(annotated, subjects, device)
            for b, tile in enumerate(tiles):
                # the loss on the real voxels only: the padding is never scored
                real = tuple(slice(p, p + n) for p, n in zip(tile.pad, tile.real, strict=True))
                row = None if rows is None else rows[b : b + 1]
                tile_logits = logits[(slice(b, b + 1), slice(None), *real)].float()
                loss = loss_fn(tile_logits, lut[labels[(slice(b, b + 1), *real)]], row)
                loss_sum[0] += loss.double()
                loss_sum[1] += 1
                own = tuple(slice(lo, hi) for lo, hi in tile.own)
                ref, pred = keep[labels[b][own]], predicted[b][own]
                index = (tile.subject * NUM_LABELS + ref) * NUM_LABELS + pred
                counts += count_values(index, len(counts))
                self._keep_slices(tile, predicted[b])
            if progress is not None:
                progress(done, total)
        model.train()
        return validation_metrics(counts, loss_sum, self.dataset.annotated, cfg)
