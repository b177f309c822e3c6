"""2D slices from the preprocessing cache: preprocessing shared with inference, dataset, sampler.

Axes: a cached axial slice is (X, Y) in canonical RAS+; a batch is (B, C, H, W) with H = X
(patient right -> left) and W = Y (posterior -> anterior); C holds the ``context_slices``
neighbouring slices (2.5D), the centre slice in the middle.

Intensities: ``normalize_hu`` clips HU to the window and maps it linearly onto [-1, 1]
(low -> -1, high -> 1). Training and inference must both use these functions.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..config import RunConfig
from ..errors import DataError
from ..fileio import atomic_path
from ..labels import (
    LABEL_OF,
    LR_PAIRS,
    NUM_LABELS,
    class_lut,
    member_values,
    members,
    merged_annotated,
    structure_groups,
    value_of,
)
from .cache import CachedSubject, open_cached, reserve_open_files
from .dataset_root import open_dataset
from .prepare import prepare_dataset

log = logging.getLogger(__name__)


def normalize_hu(ct_hu: torch.Tensor, hu_window: tuple[float, float]) -> torch.Tensor:
    """Clip HU to ``hu_window`` = (low, high) and scale linearly to [-1, 1]; returns float32.

    Works on any shape and dtype (int16 from the cache, float from a NIfTI); the input is left
    as it is (a float32 one was clipped and scaled in place).
    """
    low, high = float(hu_window[0]), float(hu_window[1])
    x = ct_hu.to(torch.float32, copy=True).clamp_(low, high)
    return x.sub_((low + high) / 2).mul_(2.0 / (high - low))


def resize_batch(x: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
    """Resize (B, C, H, W) to (B, C, *size): "bilinear" for images (antialiased when shrinking),
    "nearest" for label values (exact values kept, dtype kept). Same size: returned unchanged."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest-exact")
    shrink = x.shape[-2] > size[0] or x.shape[-1] > size[1]
    return F.interpolate(
        x.float(), size=size, mode="bilinear", align_corners=False, antialias=shrink
    )


def context_indices(z: int, num_slices: int, context_slices: int) -> list[int]:
    """Slice indices z - k .. z + k (k = context_slices // 2), clamped to 0..num_slices-1."""
    half = context_slices // 2
    return [min(max(z + offset, 0), num_slices - 1) for offset in range(-half, half + 1)]


PRESENCE_FILE = "slice_presence.npy"


def _slice_presence(subject: CachedSubject) -> np.ndarray:
    """(Z, 118) bool: which label values occur in each axial slice (one bincount per slice).

    Stored beside the cache entry (which is keyed by the source files, so it cannot go stale)
    when the cache is writable: a large dataset is scanned once, not at every start.
    """
    labels = subject.labels
    stored = subject.folder / PRESENCE_FILE
    try:
        presence = np.load(stored)
        if presence.shape == (labels.shape[0], NUM_LABELS) and presence.dtype == bool:
            return presence
    except (OSError, ValueError):
        pass
    presence = np.zeros((labels.shape[0], NUM_LABELS), dtype=bool)
    for z in range(labels.shape[0]):
        presence[z] = np.bincount(labels[z].ravel(), minlength=NUM_LABELS)[:NUM_LABELS] > 0
    try:
        with atomic_path(stored, suffix=".npy") as tmp:
            np.save(tmp, presence)
    except OSError as exc:  # a read-only cache still trains, it only rescans next time
        log.debug("could not store %s: %s", stored, exc)
    return presence


def labelled_subjects(
    config: RunConfig,
    split: str,
    progress: Callable[[int, int, str], None] | None = None,
    build: bool = True,
) -> tuple[list[str], list[CachedSubject]]:
    """(ids, cached subjects) of the subjects of ``split`` that have segmentations/, prepared
    into the cache first when ``build`` (else opened; DataError for one not prepared).

    A subject that fails to prepare is skipped with a warning; DataError when the split has no
    labelled subject or none could be prepared.
    """
    data = config.data
    index = open_dataset(Path(data.data_root), seed=data.seed)
    ids = [s for s in index.subjects_in(split) if (index.subject_dir(s) / "segmentations").is_dir()]
    if not ids:
        raise DataError(
            f"split {split!r} of {index.root} has no subject with segmentations/; "
            "fix meta.csv or add labelled subjects"
        )
    cache_dir = data.cache_dir or None
    reserve_open_files(len(ids), f"split {split!r} of {index.root}")
    if build:
        # all cores from the CLI or torchrun; one in the dashboard's thread, where a process
        # pool would fork the threaded server (or, spawned, run the page again)
        in_main = threading.current_thread() is threading.main_thread()
        report = prepare_dataset(
            index, cache_dir, subjects=ids, progress=progress, workers=None if in_main else 1
        )
        for sid, error in report.failed.items():
            log.warning("skipping %s: %s", sid, error)
        ids = [s for s in ids if s not in report.failed]
        subjects = [report.entries[s] for s in ids]
        for line in (line for entry in subjects for line in entry.unused_masks):
            log.warning("%s", line)  # a cached entry's: said at every start, not only at its build
    else:
        subjects = [open_cached(index.root, s, cache_dir, build=False) for s in ids]
    if not subjects:
        raise DataError(f"no subject of split {split!r} in {index.root} could be prepared")
    return ids, subjects


def annotated_classes(annotated: np.ndarray, structures: Sequence[str]) -> torch.Tensor | None:
    """(S, 1 + len(structures)) bool: class c of subject s has a mask file (class 0, the
    background, is always True), from ``annotated`` (S, 118) bool per label value; None when
    every subject annotates every class."""
    values = [value_of(n) for n in structures]
    table = np.ones((len(annotated), 1 + len(values)), dtype=bool)
    table[:, 1:] = merged_annotated(annotated, structures)[:, values]  # a merge: all members
    return None if table.all() else torch.from_numpy(table)


def mirror_safe(annotated: np.ndarray, structures: Sequence[str]) -> torch.Tensor | None:
    """(S,) bool: subject s may be mirrored, i.e. it annotates both sides or neither of every
    left/right pair the run learns (either side among ``structures``), from ``annotated``
    (S, 118) bool; None when all may.

    Mirroring swaps the labels of a pair but not which of them has a mask file: a subject
    with only subclavian_artery_left would, mirrored, show its artery on the right while
    its annotations still say "left, annotated; right, unknown".
    """
    learned = {m for name in structures for m in members(name)}
    pairs = [(a, b) for a, b in LR_PAIRS if a in learned or b in learned]
    left = [LABEL_OF[a] for a, _ in pairs]
    right = [LABEL_OF[b] for _, b in pairs]
    safe = (annotated[:, left] == annotated[:, right]).all(axis=1)
    return None if safe.all() else torch.from_numpy(safe)


class SliceDataset(torch.utils.data.Dataset):
    """The axial slices of one split, read from the cache; item i -> (image, labels, subject).

    image: (C, H, W) float32 normalised HU at ``target_size``; labels: (H, W) uint8 label values
    (nearest resize); subject: int index into ``subject_ids``. Peak memory is one slice stack.
    """

    def __init__(
        self,
        config: RunConfig,
        split: str,
        progress: Callable[[int, int, str], None] | None = None,
        build: bool = True,
    ):
        data = config.data
        self.config = config
        ids, self.subjects = labelled_subjects(config, split, progress, build)
        self.subject_ids = ids
        counts = [s.labels.shape[0] for s in self.subjects]
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.presence = np.concatenate([_slice_presence(s) for s in self.subjects])
        self.annotated = np.stack([s.annotated for s in self.subjects])  # (S, 118)
        self.lut = class_lut(config.data.structures).astype(np.uint8)
        keep = np.zeros(NUM_LABELS, dtype=bool)
        keep[[v for n in data.structures for v in member_values(n)]] = True
        self.presence &= keep  # only the structures this run learns
        self.presence[:, 0] = False

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def annotated_classes(self) -> torch.Tensor | None:
        """(S, 1 + len(structures)) bool, see :func:`annotated_classes`."""
        return annotated_classes(self.annotated, self.config.data.structures)

    def mirror_safe(self) -> torch.Tensor | None:
        """(S,) bool, see :func:`mirror_safe`."""
        return mirror_safe(self.annotated, self.config.data.structures)

    def locate(self, i: int) -> tuple[int, int]:
        """Global slice index -> (subject index, z)."""
        s = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return s, int(i - self.offsets[s])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        s, z = self.locate(int(i))
        subject = self.subjects[s]
        zs = context_indices(z, subject.labels.shape[0], self.config.data.context_slices)
        ct = torch.from_numpy(np.array(subject.ct[zs]))  # (C, X, Y) int16
        labels = torch.from_numpy(np.array(subject.labels[z]))  # (X, Y) uint8
        size = self.config.data.target_size
        image = resize_batch(normalize_hu(ct[None], self.config.data.hu_window), size)[0]
        labels = resize_batch(labels[None, None], size, mode="nearest")[0, 0]
        return image, labels, s


class EpochDraw(torch.utils.data.Sampler):
    """A sampler whose epoch is one seeded ``draw()`` of ``num_samples`` items (subclasses
    define it, seeded by (seed, epoch)), sharded by rank: each rank gets every world_size-th
    item of the common draw, as ``DistributedSampler`` shards, so the ranks together see the
    whole epoch once."""

    def __init__(self, num_samples: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.num_samples = int(num_samples)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draw(self):
        raise NotImplementedError

    def __iter__(self) -> Iterator:
        mine = self.draw()[self.rank :: self.world_size]
        return iter(mine.tolist() if isinstance(mine, np.ndarray) else mine)  # plain ints

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))


class ForegroundSampler(EpochDraw):
    """Slice indices for one epoch: a share drawn structure-first among those the run learns
    (rare ones get seen; a merge is one structure), the rest uniform. Seeded by (seed, epoch):
    the same epoch yields the same draw, resumed or not; sharded by rank (``EpochDraw``).
    """

    def __init__(
        self,
        dataset: SliceDataset,
        num_samples: int,
        foreground_fraction: float,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(num_samples, seed, rank, world_size)
        self.fraction = float(foreground_fraction)
        self.total = len(dataset)
        # the slices holding each structure the run learns (a merge: any of its members: one
        # structure to the draw, not one per member)
        self.by_structure = [
            slices
            for g in structure_groups(dataset.config.data.structures)
            if len(slices := np.flatnonzero(dataset.presence[:, g].any(axis=1)))
        ]

    def draw(self) -> np.ndarray:
        """The whole epoch's (num_samples,) slice indices, before sharding."""
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        picks = rng.integers(0, self.total, self.num_samples)
        if self.by_structure and self.fraction > 0:
            fg = rng.random(self.num_samples) < self.fraction
            which = rng.integers(0, len(self.by_structure), int(fg.sum()))
            picks[fg] = [
                self.by_structure[k][rng.integers(len(self.by_structure[k]))] for k in which
            ]
        return picks


def validation_indices(dataset: SliceDataset, per_subject: int | None) -> list[int]:
    """Every slice of each subject, or ``per_subject`` evenly spaced ones (always the same)."""
    out: list[int] = []
    for s in range(len(dataset.subjects)):
        lo, hi = int(dataset.offsets[s]), int(dataset.offsets[s + 1])
        if per_subject is None or hi - lo <= per_subject:
            out.extend(range(lo, hi))
        else:
            out.extend(np.linspace(lo, hi - 1, per_subject).round().astype(int).tolist())
    return out
