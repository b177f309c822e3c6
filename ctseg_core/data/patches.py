"""3D patches from resampled cached volumes: dataset, foreground-oversampling sampler.

Axes: a volume is canonical (X, Y, Z) in RAS+ at ``data.spacing_mm``; a patch is
``data.patch_size`` = (px, py, pz) voxels; an image batch is (B, 1, px, py, pz), a label batch
(B, px, py, pz) of label values. Intensities as in 2D (:func:`.slices.normalize_hu`).

A sample is named by the sampler as ``(s, centre, seed)``: subject index, the (x, y, z) voxel
the patch is centred on or None for a uniformly random position drawn from ``seed``. The patch
is shifted to lie inside the volume; along an axis where the volume is smaller than the patch,
the volume sits in the middle of the patch and the rest is padding labelled background, as the
sliding-window inference pads.

Padding (``DataConfig.padding``, :func:`pad_value`): "air" fills -1024 HU (``PAD_HU``), what
runs trained before the setting existed saw; "normalised_zero" fills the intensity the network
sees as 0 (the HU window's middle, or ``hu_mean_std``'s mean), as nnU-Net pads its normalised
data in training, in its rotations and in its sliding window. The same value fills the
validation tiles (``training.validation_volumes``), the sliding window
(``inference.patches``) and the corners a 3D rotation brings in (``augment3d``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..config import PADDINGS, DataConfig, RunConfig
from ..errors import ConfigError
from ..labels import class_lut, structure_groups
from .slices import EpochDraw, annotated_classes, labelled_subjects, mirror_safe, normalize_hu
from .volumes import ResampledSubject, open_resampled

log = logging.getLogger(__name__)

#: HU of the "air" padding around a volume smaller than a patch (``DataConfig.padding``)
PAD_HU = -1024.0


def pad_value(data: DataConfig) -> float:
    """What padding holds under ``data.padding``, in :func:`.slices.normalize_hu`'s units
    ([-1, 1] over ``data.hu_window``), the units the data and augmentation work in.

    "air": ``PAD_HU`` normalised (-1 for a window starting above -1024 HU). "normalised_zero":
    0 for the window's own scaling; with ``hu_mean_std`` = (mean, std) the value the model's
    input map (``models.registry.HuStandardize``) turns into 0, (mean - middle) / half width,
    not clipped to [-1, 1] (nnU-Net pads after normalising, whatever its clip range).
    """
    if data.padding == "air":
        return float(normalize_hu(torch.tensor(PAD_HU), data.hu_window))
    if data.padding != "normalised_zero":
        raise ConfigError(f"padding {data.padding!r} is not one of {', '.join(PADDINGS)}")
    if data.hu_mean_std is None:
        return 0.0
    low, high = (float(v) for v in data.hu_window)
    return (float(data.hu_mean_std[0]) - (low + high) / 2) * 2.0 / (high - low)


#: an item: (subject index, (x, y, z) centre or None, seed)
PatchItem = tuple[int, tuple[int, int, int] | None, int]


def patch_boxes(
    shape_xyz: Sequence[int], patch: Sequence[int], centre: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(source, target) slices copying the part of a volume of ``shape_xyz`` in a patch
    centred on ``centre`` (x, y, z voxels) into the patch.

    Along an axis at least a patch long the patch is shifted to lie inside the volume; along a
    shorter one the whole axis goes to the middle of the patch (the centre is ignored there).
    """
    source, target = [], []
    for n, p, c in zip(shape_xyz, patch, centre, strict=True):
        n, p, c = int(n), int(p), int(c)
        if n >= p:
            start = min(max(c - p // 2, 0), n - p)
            source.append(slice(start, start + p))
            target.append(slice(0, p))
        else:
            before = (p - n) // 2
            source.append(slice(0, n))
            target.append(slice(before, before + n))
    return tuple(source), tuple(target)


def random_centre(shape_xyz: Sequence[int], patch: Sequence[int], seed: int) -> tuple[int, ...]:
    """A centre whose patch lies inside the volume, uniform over those positions (x, y, z)."""
    rng = np.random.default_rng(seed)
    centre = []
    for n, p in zip(shape_xyz, patch, strict=True):
        start = int(rng.integers(0, max(int(n) - int(p), 0) + 1))
        centre.append(start + int(p) // 2)
    return tuple(centre)


class PatchDataset(torch.utils.data.Dataset):
    """The labelled subjects of one split at ``data.spacing_mm``; item ``(s, centre, seed)`` ->
    (image (1, px, py, pz) float32 normalised HU, labels (px, py, pz) uint8 label values, s);
    where the volume is smaller than the patch the image holds :func:`pad_value`, the labels 0.

    ``data.spacing_mm`` None: each subject at its own spacing. Volumes are resampled into the
    cache once (``progress(done, total, subject_id)`` after each, as for preparing); len() is
    the number of subjects, the sampler decides how many patches an epoch has.
    """

    def __init__(
        self,
        config: RunConfig,
        split: str,
        progress: Callable[[int, int, str], None] | None = None,
        build: bool = True,
    ):
        data = config.data
        if data.patch_size is None:
            raise ConfigError("a patch dataset needs data.patch_size (x, y, z voxels)")
        self.config = config
        self.patch_size = tuple(int(p) for p in data.patch_size)
        ids, cached = labelled_subjects(config, split, progress, build)
        self.subjects: list[ResampledSubject] = []
        for done, subject in enumerate(cached, start=1):
            spacing = data.spacing_mm if data.spacing_mm is not None else subject.spacing_mm
            self.subjects.append(open_resampled(subject, spacing))
            if progress:
                progress(done, len(cached), subject.subject_id)
        self.subject_ids = ids
        self.annotated = np.stack([s.annotated for s in self.subjects])  # (S, 118)
        self.lut = class_lut(data.structures).astype(np.uint8)
        self.pad = pad_value(data)

    def __len__(self) -> int:
        return len(self.subjects)

    def annotated_classes(self) -> torch.Tensor | None:
        """(S, 1 + len(structures)) bool, see :func:`.slices.annotated_classes`."""
        return annotated_classes(self.annotated, self.config.data.structures)

    def subject_spacing(self) -> torch.Tensor | None:
        """(S, 3) float64 each subject's voxel size (x, y, z mm) where the patches keep their
        CTs' grids (``data.spacing_mm`` None: a rotation must turn millimetres); None where
        every subject is resampled to ``data.spacing_mm``."""
        if self.config.data.spacing_mm is not None:
            return None
        return torch.tensor([s.spacing_mm for s in self.subjects], dtype=torch.float64)

    def mirror_safe(self) -> torch.Tensor | None:
        """(S,) bool, see :func:`.slices.mirror_safe`."""
        return mirror_safe(self.annotated, self.config.data.structures)

    def __getitem__(self, item: PatchItem) -> tuple[torch.Tensor, torch.Tensor, int]:
        s, centre, seed = item
        subject = self.subjects[int(s)]
        shape, patch = subject.shape_xyz, self.patch_size
        if centre is None:
            centre = random_centre(shape, patch, int(seed))
        source, target = patch_boxes(shape, patch, centre)
        # normalised first, padded after (as nnU-Net): the padding may lie outside the window
        image = torch.full((1, *patch), self.pad, dtype=torch.float32)
        real = torch.from_numpy(np.array(subject.ct[source]))  # a copy: the cache is read-only
        image[(0, *target)] = normalize_hu(real, self.config.data.hu_window)
        labels = np.zeros(patch, dtype=np.uint8)
        labels[target] = subject.labels[source]
        return image, torch.from_numpy(labels), int(s)


class PatchSampler(EpochDraw):
    """Patch items for one epoch: subject uniform; with probability ``fg_fraction`` centred on
    a voxel of a structure chosen uniformly among those the subject has and the run learns
    (rare structures get seen; a merge is one structure, centred on one of its members that
    the subject has), else at a random position. Seeded by (seed, epoch): the same
    epoch yields the same draw, resumed or not; sharded by rank (``EpochDraw``).
    """

    def __init__(
        self,
        dataset: PatchDataset,
        num_samples: int,
        fg_fraction: float,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(num_samples, seed, rank, world_size)
        self.fraction = float(fg_fraction)
        groups = structure_groups(dataset.config.data.structures)
        # per subject, the learned structures it has, each as the label values it has of it: a
        # merge of 24 ribs is one structure, drawn as often as the liver (it was 24 draws)
        self.choices = [
            [[v for v in g if s.present[v]] for g in groups if s.present[g].any()]
            for s in dataset.subjects
        ]
        self.locations = [s.locations for s in dataset.subjects]
        without = sum(not c for c in self.choices)
        if without and self.fraction > 0 and rank == 0:  # drawn at random: said, not hidden
            share = self.fraction * (1 - without / len(self.choices))
            log.warning(
                "%d of %d training subjects hold none of the structures this run learns: their "
                "patches are drawn at random, so about %.2f of the patches are centred on a "
                "structure, not %.2f", without, len(self.choices), share, self.fraction,
            )  # fmt: skip

    def draw(self) -> list[PatchItem]:
        """The whole epoch's ``num_samples`` items, before sharding."""
        rng = np.random.default_rng([self.seed, self.epoch, 11])
        subjects = rng.integers(0, len(self.choices), self.num_samples)
        fg = rng.random(self.num_samples) < self.fraction
        seeds = rng.integers(0, 2**31 - 1, self.num_samples)
        items = []
        for s, centred, seed in zip(subjects.tolist(), fg.tolist(), seeds.tolist(), strict=True):
            centre, choices = None, self.choices[s]
            if centred and len(choices):
                values = choices[rng.integers(len(choices))]
                # a merge: one of its members there (one value: no draw, the stream as before)
                value = values[rng.integers(len(values))] if len(values) > 1 else values[0]
                points = self.locations[s][int(value)]
                centre = tuple(int(v) for v in points[rng.integers(len(points))])
            items.append((s, centre, seed))
        return items


def validation_volumes(dataset: PatchDataset) -> list[int]:
    """Every subject index of ``dataset``: validation runs the sliding window over whole
    volumes (not patches), so each validation subject is scored once per epoch."""
    return list(range(len(dataset.subjects)))
