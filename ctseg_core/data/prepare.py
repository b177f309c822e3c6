"""Preparing a dataset into the preprocessing cache: every subject, in parallel processes.

Subjects already cached (and current) are found first, in this process; a process pool starts only
for the ones left to build. A subject that fails is reported in ``PrepareReport.failed``, not
raised, so one bad CT does not stop the other 1,227; a full disk under the cache stops the
prepare with one line (every subject after it would fail the same way).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, CtsegError, DataError
from ..fileio import cache_unusable, cannot_read, dangling_link, is_within
from .cache import (
    CachedSubject,
    build_entry,
    check_cache_dir,
    default_cache_dir,
    entry_dir,
    read_entry,
    source_key,
)
from .dataset_root import LINK_FIX, DatasetIndex, open_dataset

log = logging.getLogger(__name__)


def _cached_entry(root: Path, subject_id: str, cache_dir: Path) -> CachedSubject | None:
    """The subject's cache entry when it is there and current, else None (errors included:
    ``_prepare_one`` reports them)."""
    try:
        target = entry_dir(cache_dir, root, subject_id) / source_key(root / subject_id)
        return read_entry(target, subject_id)
    except (CtsegError, OSError):
        return None


class _CacheUnusable(str):
    """A worker's one line for a cache that is full or may not be written: the prepare stops on
    it (every subject would fail alike)."""


def _prepare_one(root: Path, subject_id: str, cache_dir: Path) -> tuple[str, Path | str]:
    """Worker for a subject ``_cached_entry`` did not find: (subject id, the entry's folder, or
    the error's one line; ``_CacheUnusable`` for a cache full or not writable)."""
    try:
        subject_dir = root / subject_id
        target = entry_dir(cache_dir, root, subject_id) / source_key(subject_dir)
        build_entry(subject_dir, target)
        return subject_id, target
    except CtsegError as exc:
        return subject_id, str(exc)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            free_mb = shutil.disk_usage(cache_dir).free // 2**20
            return subject_id, _CacheUnusable(
                f"no space left for the preprocessing cache {cache_dir} ({free_mb} MB free, "
                f"preparing {subject_id}); free space there, or give another cache folder "
                "(--cache, CTSEG_CACHE)"
            )
        if exc.filename and (why := dangling_link(exc.filename)):
            return subject_id, f"{subject_id}: {exc.filename} is {why}; {LINK_FIX}"
        if exc.filename and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            if is_within(exc.filename, cache_dir):  # every subject would fail alike: stop once
                return subject_id, _CacheUnusable(cache_unusable(cache_dir, exc))
            return subject_id, f"{subject_id}: {cannot_read(exc.filename, exc, exc.filename)}"
        return subject_id, f"{subject_id}: {type(exc).__name__}: {exc}"
    except Exception as exc:  # a worker must report, never kill the whole prepare
        return subject_id, f"{subject_id}: {type(exc).__name__}: {exc}"


@dataclass
class PrepareReport:
    """What a prepare did. ``entries``: the current cache entry of every subject that did not
    fail, so that callers need not hash each subject's source files again (151k stat calls on
    the full dataset)."""

    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    entries: dict[str, CachedSubject] = field(default_factory=dict)


def prepare_dataset(
    root: str | Path | DatasetIndex,
    cache_dir: str | Path | None = None,
    *,
    subjects: list[str] | None = None,
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> PrepareReport:
    """Prepare every subject (or ``subjects``) of a dataset; failures are reported, not raised.

    ``workers`` defaults to the usable cores (each worker holds one subject in memory); the
    subjects already cached are found first, in this process, so a pool starts only for real
    work. ``progress(done, total, subject_id)`` is called after each subject.
    """
    index = root if isinstance(root, DatasetIndex) else open_dataset(root)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    check_cache_dir(cache_dir, index.root)
    if workers is not None and workers < 1:
        raise ConfigError(f"workers must be >= 1, or unset for one per core (got {workers})")
    ids = subjects if subjects is not None else index.subjects
    report = PrepareReport()
    done = 0

    def record(sid: str, outcome: CachedSubject | Path | str) -> None:
        nonlocal done
        if isinstance(outcome, _CacheUnusable):
            raise DataError(str(outcome))
        if isinstance(outcome, str):
            report.failed[sid] = outcome
            log.warning(outcome)
        else:
            built = isinstance(outcome, Path)
            entry = read_entry(outcome, sid) if built else outcome
            if entry is None:  # removed under us (another prepare cleaning up): look again
                entry = _cached_entry(index.root, sid, cache_dir)
            if entry is None:
                report.failed[sid] = f"{sid}: its cache entry vanished; prepare again"
            else:
                report.entries[sid] = entry
                (report.built if built else report.reused).append(sid)
        done += 1
        if progress:
            progress(done, len(ids), sid)

    todo = []
    for sid in ids:
        entry = _cached_entry(index.root, sid, cache_dir)
        if entry is not None:
            record(sid, entry)
        else:
            todo.append(sid)
    workers = workers or min(
        len(todo),
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
    )
    if workers <= 1 or len(todo) <= 1:
        for sid in todo:
            record(*_prepare_one(index.root, sid, cache_dir))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_prepare_one, index.root, sid, cache_dir) for sid in todo]
            try:
                for future in as_completed(futures):
                    record(*future.result())
            except DataError:  # a full disk: the subjects not started yet are not started
                for future in futures:
                    future.cancel()
                raise
    return report
