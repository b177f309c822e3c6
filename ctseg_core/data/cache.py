"""The preprocessing cache: each subject once into int16 CT + uint8 labels, memory-mappable.

Layout: ``<cache>/<dataset tag>/<subject id>/<key>/{ct.npy, labels.npy, meta.json}``.
Arrays are stored slice-major, shape (Z, X, Y) of the canonical (X, Y, Z) volume, so one axial
slice ``[z]`` is one contiguous read. The key hashes the source files' names, sizes and mtimes
and the preprocessing settings: a changed source gets a new key (rebuilt), an unchanged one is
reused. A build goes into a temporary folder renamed into place when complete, so an
interrupted ``prepare`` never leaves a half entry that is later trusted. The dataset folder is
only read (datasets are often read-only); the cache lives in ``$CTSEG_CACHE`` or the user cache dir.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .. import settings
from ..errors import ConfigError, DataError
from ..fileio import dangling_link, exists, is_dir, is_file
from ..labels import NAME_OF, NUM_LABELS, NUM_STRUCTURES
from .dataset_root import find_ct
from .subject import OVERLAP_SAID, load_subject, mask_files
from .volume import Volume

log = logging.getLogger(__name__)

#: bump when the stored form changes, so old entries are rebuilt
CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$CTSEG_CACHE`` if set, else the platform's user cache dir (see ctseg_core.settings)."""
    return settings.cache_dir()


def check_cache_dir(cache_dir: Path, root: Path) -> None:
    """ConfigError for a cache that is a file, or that lies inside the dataset (ctseg never
    writes into a dataset: it may be read-only, shared, or under version control)."""
    # mkdir would fail on every subject (EEXIST, or ENOENT under a parent that leads nowhere)
    for folder in (cache_dir, *Path(cache_dir).parents):
        if why := dangling_link(folder):
            where = "" if folder == cache_dir else f" lies in {folder}, which"
            raise ConfigError(
                f"cache {cache_dir}{where} is {why}; restore what it points to or give another "
                "folder (--cache or $CTSEG_CACHE)"
            )
    if exists(cache_dir) and not is_dir(cache_dir):
        raise ConfigError(f"cache {cache_dir} is a file; give a folder (--cache or $CTSEG_CACHE)")
    cache, data = Path(cache_dir).resolve(), Path(root).resolve()
    if cache == data or data in cache.parents:
        raise ConfigError(
            f"cache {cache_dir} lies inside the dataset {root}; ctseg does not write into a "
            "dataset: give a folder outside it (--cache or $CTSEG_CACHE)"
        )


def dataset_tag(root: Path) -> str:
    """Folder name of a dataset inside the cache: its name plus a hash of its absolute path."""
    resolved = str(Path(root).expanduser().resolve())
    return f"{Path(resolved).name}-{hashlib.sha256(resolved.encode()).hexdigest()[:10]}"


def source_key(subject_dir: Path, settings: dict | None = None) -> str:
    """Hash of the subject's source files (name, size, mtime), the names of the files its
    segmentations/ folder holds that are no mask (its problems name them), and the
    preprocessing settings."""
    digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, **(settings or {})}).encode())
    ct = find_ct(subject_dir, strict=True)
    masks, ignored = mask_files(subject_dir)
    files = ([ct] if ct else []) + list(masks.values())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    if ignored:  # the entry's problems name them: a stray file added or removed rebuilds it
        digest.update(("ignored:" + "/".join(ignored)).encode())
    return digest.hexdigest()[:16]


def reserve_open_files(n_subjects: int, what: str) -> None:
    """Make sure this process may keep two memory maps (two open files) per cached subject.

    A memory map holds its file open until it is dropped, and datasets keep theirs: the full
    TotalSegmentator training split needs ~2,200 open files, past the 1,024 many systems allow
    by default ("Too many open files" in the first epoch). Raises the soft limit up to the hard
    one; DataError naming ``what`` when even the hard limit is too low. No-op where the limit
    cannot be read (Windows).
    """
    try:
        import resource
    except ImportError:  # Windows
        return
    fd_dir = Path("/proc/self/fd") if Path("/proc/self/fd").is_dir() else Path("/dev/fd")
    try:
        in_use = len(os.listdir(fd_dir))
    except OSError:
        in_use = 64
    needed = in_use + 2 * n_subjects + 64  # and some for loader pipes, logs, figures
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= needed:
        return
    advice = (
        f"{what}: {n_subjects} subjects need about {needed} open files but this process may "
        f"open {soft if hard == infinite else hard} (ulimit -n); raise the limit "
        f"(e.g. `ulimit -n {2 * needed}`)"
    )
    if hard != infinite and hard < needed:
        raise DataError(advice)
    # the hard limit, not just this split's need: the other split and the maps a dataset opens
    # lazily come later (macOS refuses an unlimited soft limit: then a generous finite one)
    for target in ([hard] if hard != infinite else []) + [max(4 * needed, 65536), 2 * needed]:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        log.info("open file limit raised from %d to %d for %s", soft, target, what)
        return
    raise DataError(advice)


@dataclass
class CachedSubject:
    """A prepared subject, memory-mapped.

    ct: (Z, X, Y) int16 HU; labels: (Z, X, Y) uint8; axial slice z is ``ct[z]`` (X, Y) in RAS+.
    """

    subject_id: str
    folder: Path
    meta: dict = field(repr=False)

    def __getstate__(self) -> dict:
        # without the open memory maps: pickled, they would travel as full copies of the
        # volumes (a spawn/forkserver DataLoader worker pickles the dataset: the default start
        # method on macOS, and on Linux from Python 3.14); the copy reopens them when used
        state = dict(self.__dict__)
        state.pop("ct", None)
        state.pop("labels", None)
        return state

    @cached_property
    def ct(self) -> np.ndarray:
        return self._map("ct.npy")

    @cached_property
    def labels(self) -> np.ndarray:
        return self._map("labels.npy")

    def _map(self, name: str) -> np.ndarray:
        """A memory map of one of the entry's arrays (opened when first used: a long run may
        find its entry replaced by then, when its files changed and were prepared again)."""
        try:
            return np.load(self.folder / name, mmap_mode="r")
        except FileNotFoundError:
            raise DataError(
                f"{self.subject_id}: its prepared files ({self.folder}) are gone: its CT or "
                "masks changed and were prepared again while this read them; start again (a "
                "training run: resume it) to use the new files"
            ) from None

    @property
    def num_slices(self) -> int:
        return int(self.meta["shape_xyz"][2])

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        return tuple(self.meta["shape_xyz"])

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size along canonical x, y, z (mm)."""
        return tuple(self.meta["spacing_mm"])

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) voxel -> world of the canonical (X, Y, Z) volume."""
        return np.array(self.meta["affine"])

    @property
    def original_affine(self) -> np.ndarray:
        return np.array(self.meta["original_affine"])

    @property
    def original_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["original_shape"])

    @property
    def annotated(self) -> np.ndarray:
        """(118,) bool: structure k has a mask file (index 0, background, is always true)."""
        return np.array(self.meta["annotated"], dtype=bool)

    @property
    def unused_masks(self) -> list[str]:
        """[one line] saying the mask files left out (on another grid than the CT; their
        structures count as not annotated), to be said wherever the subject is used; or []."""
        return list(self.meta.get("unused_masks", []))

    @property
    def overlap_note(self) -> str | None:
        """The subject's line saying how many voxels two or more masks claim (the higher label
        value kept: the lower structure's reference lacks them), or None."""
        if not self.meta.get("overlap_voxels"):
            return None
        return next((p for p in self.meta.get("problems", []) if OVERLAP_SAID in p), None)

    @property
    def voxel_counts(self) -> np.ndarray:
        """(118,) int64 voxels per label value in the combined label volume."""
        return np.array(self.meta["voxel_counts"], dtype=np.int64)

    @property
    def present(self) -> list[str]:
        counts = self.voxel_counts
        return [NAME_OF[k] for k in range(1, NUM_STRUCTURES + 1) if counts[k] > 0]

    def ct_xyz(self) -> np.ndarray:
        """The CT as a canonical (X, Y, Z) view (no copy)."""
        return self.ct.transpose(1, 2, 0)

    def labels_xyz(self) -> np.ndarray:
        """The labels as a canonical (X, Y, Z) view (no copy)."""
        return self.labels.transpose(1, 2, 0)

    def ct_volume(self) -> Volume:
        """The canonical CT as a Volume (a contiguous copy) with its original grid, as the
        predictor takes it and writes back onto."""
        return Volume(
            np.ascontiguousarray(self.ct_xyz()),
            self.affine,
            tuple(self.spacing_mm),
            self.original_affine,
            tuple(self.original_shape),
        )


def entry_dir(cache_dir: Path, root: Path, subject_id: str) -> Path:
    """The folder of a subject's cache entries (one per source key) under ``cache_dir``."""
    return cache_dir / dataset_tag(root) / subject_id


def read_entry(folder: Path, subject_id: str) -> CachedSubject | None:
    """The complete cache entry in ``folder``, or None when it is missing or not in our format."""
    meta_path = folder / "meta.json"
    if not is_file(meta_path):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return CachedSubject(subject_id, folder, meta)


def build_entry(subject_dir: Path, target: Path, settings: dict | None = None) -> CachedSubject:
    """Load a subject from its NIfTI files and store it at ``target`` (atomically, as a folder)."""
    subject = load_subject(subject_dir, **(settings or {}))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        np.save(tmp / "ct.npy", np.ascontiguousarray(subject.ct.array.transpose(2, 0, 1)))
        labels_zxy = np.ascontiguousarray(subject.labels.transpose(2, 0, 1))
        np.save(tmp / "labels.npy", labels_zxy)
        counts = np.bincount(labels_zxy.ravel(), minlength=NUM_LABELS)
        meta = {
            "format": CACHE_FORMAT,
            "subject_id": subject.subject_id,
            "source": str(subject_dir.resolve()),
            "shape_xyz": list(subject.ct.array.shape),
            "spacing_mm": list(subject.ct.spacing_mm),
            "affine": subject.ct.affine.tolist(),
            "original_affine": subject.ct.original_affine.tolist(),
            "original_shape": list(subject.ct.original_shape),
            "orientation": subject.ct.orientation,
            "annotated": subject.annotated.tolist(),
            "mask_voxels": subject.mask_voxels.tolist(),
            "voxel_counts": counts.tolist(),
            "overlap_voxels": subject.overlap_voxels,
            "problems": subject.problems,
            "unused_masks": subject.unused_masks,
            "hu_range": [int(subject.ct.array.min()), int(subject.ct.array.max())],
        }
        (tmp / "meta.json").write_text(json.dumps(meta))
        for path in tmp.iterdir():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished the same entry first: theirs is as good as ours.
            if not is_file(target / "meta.json"):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        needed = subject.ct.array.nbytes + subject.labels.nbytes
        if isinstance(exc, OSError) and exc.errno is None and _short_of(target.parent, needed):
            # numpy's short write on a full disk ("N requested and M written") has no errno
            raise OSError(errno.ENOSPC, "No space left on device", str(target.parent)) from exc
        raise
    # Old keys of this subject are stale now; so is a build another process left behind when it
    # was killed (a build in progress elsewhere is minutes old, never hours)
    for old in target.parent.iterdir():
        if old == target:
            continue
        if old.name.startswith(".tmp-") and not _older_than(old, STALE_BUILD_S):
            continue
        shutil.rmtree(old, ignore_errors=True)
    return CachedSubject(subject.subject_id, target, meta)


def _short_of(folder: Path, needed_bytes: int) -> bool:
    """Whether ``folder``'s disk has less free space than ``needed_bytes``."""
    try:
        return shutil.disk_usage(folder).free < needed_bytes
    except OSError:
        return False


#: a ``.tmp-`` build folder older than this (seconds) was left by a killed process
STALE_BUILD_S = 6 * 3600


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def open_cached(
    root: str | Path,
    subject_id: str,
    cache_dir: str | Path | None = None,
    *,
    build: bool = True,
    settings: dict | None = None,
) -> CachedSubject:
    """The cached form of ``root/subject_id``, built first when missing or stale (if ``build``)."""
    root = Path(root).expanduser()
    subject_dir = root / subject_id
    if not is_dir(subject_dir):
        raise DataError(
            f"subject {subject_id} not found in {root}; check the id or the dataset path"
        )
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    target = entry_dir(cache_dir, root, subject_id) / source_key(subject_dir, settings)
    entry = read_entry(target, subject_id)
    if entry is not None:
        return entry
    if not build:
        raise DataError(f"{subject_id} is not prepared; run `ctseg prepare --data {root}`")
    check_cache_dir(cache_dir, root)
    return build_entry(subject_dir, target, settings)
