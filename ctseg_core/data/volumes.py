"""Cached subjects resampled to a model's voxel spacing, stored once beside their cache entry.

Layout: ``<cache entry>/resampled_<x>x<y>x<z>/{ct.npy, labels.npy, locations.npy, meta.json}``
(spacing in mm, e.g. ``resampled_3.0x3.0x3.0``), inside the entry folder so a rebuilt entry (a
changed source) drops its resampled volumes with it. Arrays are in canonical (X', Y', Z') order
(patches are cut along all three axes alike), memory-mapped when read back. meta.json is
written last: a folder without it is incomplete and rebuilt.

The CT (int16 HU) is resampled as the sliding-window inference resamples it
(:func:`.resample.resample_ct`, trilinear, the grids sharing their outer edges), so a model sees
the same intensities in training and prediction. Labels are not taken from the nearest voxel
(which shifts thin structures by up to half a voxel and drops some): each structure's one-hot
mask is resampled trilinearly over its bounding box (plus a margin) and every output voxel takes
the largest of them and of the background (1 - their sum), as ``F.interpolate(one_hot,
mode="trilinear").argmax()`` would, ties to the lower label value.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ..errors import ConfigError, DataError
from ..fileio import atomic_path, atomic_write_json
from ..labels import NUM_LABELS
from ..settings import max_voxels
from .cache import CachedSubject
from .image_limits import MAX_VOXELS_ENV
from .resample import grid_shape, linear_weights, resample_ct

log = logging.getLogger(__name__)

#: bump when the stored form changes, so old resampled volumes are rebuilt
RESAMPLED_FORMAT = 1
#: voxel coordinates kept per structure to centre patches on
MAX_LOCATIONS = 2000
#: source voxels added around a structure's bounding box (>= 1 keeps the result exact)
_MARGIN = 2
_warned_read_only = False


@dataclass
class ResampledSubject:
    """A cached subject at ``spacing_mm``: ct (X', Y', Z') int16 HU, labels (X', Y', Z') uint8.

    voxel_counts: (118,) int64 voxels per label value; present: (118,) bool, structure k occurs
    (index 0, the background, is False); locations: label value -> (N, 3) int32 x, y, z voxel
    coordinates of that structure (at most ``MAX_LOCATIONS``, a fixed subsample), one entry per
    present structure. ``folder`` None: held in memory (the cache was not writable).
    """

    source: CachedSubject
    folder: Path | None
    meta: dict = field(repr=False)

    def __getstate__(self) -> dict:
        # stored volumes travel as their path and reopen in a loader worker (see CachedSubject)
        state = dict(self.__dict__)
        if self.folder is not None:
            for name in ("ct", "labels", "locations"):
                state.pop(name, None)
        return state

    @cached_property
    def ct(self) -> np.ndarray:
        return np.load(self.folder / "ct.npy", mmap_mode="r")

    @cached_property
    def labels(self) -> np.ndarray:
        return np.load(self.folder / "labels.npy", mmap_mode="r")

    @cached_property
    def locations(self) -> dict[int, np.ndarray]:
        return _split_locations(np.load(self.folder / "locations.npy"))

    @property
    def subject_id(self) -> str:
        return self.source.subject_id

    @property
    def annotated(self) -> np.ndarray:
        """(118,) bool: structure k has a mask file (index 0 always true)."""
        return self.source.annotated

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape_xyz"])

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along canonical x, y, z (mm)."""
        return tuple(self.meta["spacing_mm"])

    @property
    def voxel_counts(self) -> np.ndarray:
        return np.array(self.meta["voxel_counts"], dtype=np.int64)

    @property
    def present(self) -> np.ndarray:
        present = self.voxel_counts > 0
        present[0] = False
        return present


def folder_name(spacing_mm) -> str:
    """``resampled_<x>x<y>x<z>`` of a spacing in mm (``resampled_3.0x3.0x3.0``)."""
    return "resampled_" + "x".join(repr(round(float(s), 6)) for s in spacing_mm)


def check_spacing(spacing_mm) -> tuple[float, float, float]:
    """``spacing_mm`` as three floats; ConfigError unless it is three finite sizes > 0."""
    try:
        values = tuple(float(s) for s in spacing_mm)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"spacing {spacing_mm} mm must be three finite sizes > 0 (x, y, z)")
    return values


def check_grid(subject_id: str, shape_xyz, spacing_mm, target_mm) -> tuple[int, int, int]:
    """The resampled grid of a subject; DataError naming a spacing that fits when it holds
    more than ``max_voxels()`` voxels."""
    grid = grid_shape(shape_xyz, spacing_mm, target_mm)
    voxels, limit = math.prod(grid), max_voxels()
    if voxels > limit:
        factor = (voxels / limit) ** (1 / 3)
        fits = tuple(math.ceil(float(t) * factor * 10 - 1e-9) / 10 for t in target_mm)
        # each axis rounds to the nearest voxel: coarsen by tenths until the grid fits
        while math.prod(grid_shape(shape_xyz, spacing_mm, fits)) > limit:
            fits = tuple(round(f * 1.02 + 0.1, 1) for f in fits)
        raise DataError(
            f"{subject_id} resampled to {tuple(target_mm)} mm would be "
            f"{' x '.join(map(str, grid))} voxels, over the {limit:,} voxel limit "
            f"({MAX_VOXELS_ENV}); use a spacing of {fits} mm or coarser (data.spacing_mm)"
        )
    return grid


def open_resampled(cached: CachedSubject, spacing_mm) -> ResampledSubject:
    """``cached`` at ``spacing_mm`` (x, y, z mm): read back when stored, else resampled and
    stored (or kept in memory, with one warning, where the cache cannot be written).

    ConfigError for a spacing that is not three sizes > 0; DataError when the resampled grid
    would exceed the voxel limit.
    """
    target = check_spacing(spacing_mm)
    grid = check_grid(cached.subject_id, cached.shape_xyz, cached.spacing_mm, target)
    folder = cached.folder / folder_name(target)
    meta = _read_meta(folder, grid)
    if meta is not None:
        return ResampledSubject(cached, folder, meta)
    ct, labels, locations, meta = resample_subject(cached, target, grid)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (("ct", ct), ("labels", labels), ("locations", locations)):
            with atomic_path(folder / f"{name}.npy", suffix=".npy") as tmp:
                np.save(tmp, array)
        atomic_write_json(folder / "meta.json", meta)
    except OSError as exc:
        _warn_read_only(folder, exc)
        subject = ResampledSubject(cached, None, meta)
        subject.__dict__.update(ct=ct, labels=labels, locations=_split_locations(locations))
        return subject
    return ResampledSubject(cached, folder, meta)


def resample_subject(cached: CachedSubject, target_mm, grid) -> tuple:
    """(ct (X', Y', Z') int16, labels (X', Y', Z') uint8, locations (M, 4) int32 rows of label
    value, x, y, z, meta) of ``cached`` resampled onto ``grid`` at ``target_mm``."""
    ct = resample_ct(cached.ct_xyz(), grid).round_().clamp_(-32768, 32767)
    ct = ct.to(torch.int16).numpy()
    source = np.ascontiguousarray(cached.labels_xyz())
    labels, regions = resample_labels(source, grid)
    counts = np.bincount(labels.ravel(), minlength=NUM_LABELS)[:NUM_LABELS]
    rows = [np.zeros((0, 4), dtype=np.int32)]
    for value, region in regions.items():
        if counts[value] == 0:
            continue
        at = np.argwhere(labels[region] == value) + [r.start for r in region]
        if len(at) > MAX_LOCATIONS:  # a fixed subsample: the same on every machine and run
            keep = np.random.default_rng(value).choice(len(at), MAX_LOCATIONS, replace=False)
            at = at[np.sort(keep)]
        rows.append(np.concatenate([np.full((len(at), 1), value), at], axis=1).astype(np.int32))
    meta = {
        "format": RESAMPLED_FORMAT,
        "subject_id": cached.subject_id,
        "shape_xyz": [int(n) for n in grid],
        "spacing_mm": [float(s) for s in target_mm],
        "source_shape_xyz": [int(n) for n in cached.shape_xyz],
        "source_spacing_mm": [float(s) for s in cached.spacing_mm],
        "voxel_counts": counts.tolist(),
    }
    return ct, labels, np.concatenate(rows), meta


def resample_labels(labels_xyz: np.ndarray, grid) -> tuple[np.ndarray, dict]:
    """(X, Y, Z) uint8 label values -> ((X', Y', Z') uint8, {value: output region slices}):
    the argmax over the trilinearly resampled one-hot of background and each structure (see
    the module doc); each structure is resampled over its bounding box plus a margin only."""
    shape_out = tuple(int(n) for n in grid)
    best = np.zeros(shape_out, dtype=np.float32)  # the largest structure score so far
    total = np.zeros(shape_out, dtype=np.float32)  # the sum of structure scores
    winner = np.zeros(shape_out, dtype=np.uint8)
    weights = [linear_weights(n_in, n_out) for n_in, n_out in
               zip(labels_xyz.shape, shape_out, strict=True)]  # fmt: skip
    regions = {}
    for index, box in enumerate(ndimage.find_objects(labels_xyz)):
        if box is None:
            continue
        value = index + 1
        box = tuple(slice(max(0, b.start - _MARGIN), min(n, b.stop + _MARGIN))
                    for b, n in zip(box, labels_xyz.shape, strict=True))  # fmt: skip
        score = torch.from_numpy((labels_xyz[box] == value).astype(np.float32))
        region = []
        for axis, (b, (lower, upper, weight)) in enumerate(zip(box, weights, strict=True)):
            # outputs whose two source voxels lie in the box; the rest read only zeros
            inside = torch.nonzero((lower >= b.start) & (upper < b.stop)).flatten()
            if len(inside) == 0:  # falls between the output voxels: it vanishes
                break
            o0, o1 = int(inside[0]), int(inside[-1]) + 1
            low = score.index_select(axis, lower[o0:o1] - b.start)
            high = score.index_select(axis, upper[o0:o1] - b.start)
            shape = [1, 1, 1]
            shape[axis] = o1 - o0
            score = low.lerp_(high, weight[o0:o1].view(shape))
            region.append(slice(o0, o1))
        if len(region) < 3:
            continue
        region = tuple(region)
        score = score.numpy()
        better = score > best[region]  # strictly: a tie stays with the lower label value
        winner[region][better] = value
        np.maximum(best[region], score, out=best[region])
        total[region] += score
        regions[value] = region
    # the background, 1 - the structures' sum, wins ties (label value 0 is the lowest)
    winner[best <= 1.0 - total] = 0
    return winner, regions


def _read_meta(folder: Path, grid) -> dict | None:
    """The stored meta.json of a complete resampled folder on ``grid``, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if meta.get("format") != RESAMPLED_FORMAT or tuple(meta.get("shape_xyz", ())) != tuple(grid):
        return None
    files = ("ct.npy", "labels.npy", "locations.npy")
    return meta if all((folder / name).is_file() for name in files) else None


def _split_locations(rows: np.ndarray) -> dict[int, np.ndarray]:
    """(M, 4) rows of label value, x, y, z -> {value: (N, 3) int32 coordinates}."""
    return {int(v): rows[rows[:, 0] == v, 1:].copy() for v in np.unique(rows[:, 0])}


def _warn_read_only(folder: Path, exc: OSError) -> None:
    global _warned_read_only
    if not _warned_read_only:
        log.warning(
            "cannot store resampled volumes in %s (%s): resampling in memory, again at every "
            "start; make the cache writable (--cache or $CTSEG_CACHE) to keep them",
            folder,
            exc,
        )
        _warned_read_only = True
