"""Listing runs and their checkpoints, and ranking every checkpoint under a root (the pages)."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..fileio import cannot_read, folder_error, is_dir, is_file
from .run_folder import default_checkpoints_root, read_history, read_json, read_status

log = logging.getLogger(__name__)

#: what a run trains on: slices, slices with their neighbours as channels, or 3D patches
KINDS = ("2D", "2.5D", "3D")


def config_kind(config: dict) -> str:
    """ "3D", "2.5D" or "2D" for a configuration in ``RunConfig.to_dict()`` form (config.json).

    3D: the model is registered with ``spatial_dims`` 3 (a name the registry does not know
    counts as 3D when ``data.patch_size`` is set); 2.5D: a slice model fed
    ``data.context_slices`` > 1 neighbouring slices; else 2D.
    """
    from ..models.registry import MODELS

    model, data = (
        config.get(k) if isinstance(config.get(k), dict) else {} for k in ("model", "data")
    )
    spec = MODELS.get(str(model.get("name", "unet")))
    volumetric = spec.spatial_dims == 3 if spec else data.get("patch_size") is not None
    if volumetric:
        return "3D"
    context = data.get("context_slices") or 1
    return "2.5D" if isinstance(context, int) and context > 1 else "2D"


def run_kind(run_dir: str | Path) -> str | None:
    """The kind of the run in ``run_dir`` from its config.json (None: missing or unreadable)."""
    config = read_json(Path(run_dir) / "config.json")
    return config_kind(config) if isinstance(config, dict) else None


@dataclass
class RunInfo:
    """One run folder as the dashboard lists it."""

    name: str
    run_dir: Path
    state: str
    epoch: int
    epochs: int | None
    best_val_dice: float | None
    updated_at: str | None
    error: str | None
    has_best: bool
    has_last: bool
    kind: str | None = None  # "2D", "2.5D" or "3D" (config_kind); None: config.json unreadable


#: the files a run's listing entry is read from (notes.json: the runs table's notes and tags)
LISTED_FILES = ("config.json", "status.json", "history.jsonl", "notes.json")


def file_stamps(run_dir: Path) -> tuple:
    """((inode, mtime_ns, size) or None, ...) of ``LISTED_FILES`` in ``run_dir``: a change marker
    of four stat calls (JSON files are rewritten by a rename, which gives a new inode even within
    one mtime tick; history.jsonl is appended to, which grows it)."""
    stamps = []
    for name in LISTED_FILES:
        try:
            info = (run_dir / name).stat()
            stamps.append((info.st_ino, info.st_mtime_ns, info.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def runs_stamp(checkpoints_root: str | Path) -> tuple:
    """((run name, file_stamps), ...) of every run folder under the root, by name; () when the
    root is absent. Equal stamps mean an equal ``list_runs`` (has_best/has_last aside)."""
    return tuple(sorted((d.name, file_stamps(d)) for d in _run_folders(Path(checkpoints_root))))


_SKIPPED: set[Path] = set()  # folders said to be unreadable (once each, not every listing)


def root_problem(checkpoints_root: str | Path) -> str | None:
    """Why the run folders under ``checkpoints_root`` cannot be listed, in one line ("...
    cannot be read (Permission denied); let ..."), for a page to show; None when they can, or
    when the root does not exist (no run yet)."""
    if exc := folder_error(checkpoints_root):
        return cannot_read(f"checkpoints folder {checkpoints_root}", exc, checkpoints_root)
    return None


def _run_folders(root: Path) -> list[Path]:
    """The run folders (holding config.json) under ``root``: none when it is absent or cannot
    be read (``root_problem`` says why), and a folder this user may not look into (another
    user's private run in a shared folder) is left out; each with a warning once."""
    try:
        entries = list(root.iterdir()) if is_dir(root) else []
        _SKIPPED.discard(root)
    except OSError as exc:
        entries = []
        _warn_once(root, f"checkpoints folder {root}", exc)
    runs = []
    for entry in entries:
        try:
            if is_dir(entry) and is_file(entry / "config.json"):
                runs.append(entry)
            _SKIPPED.discard(entry)  # readable again: said again should it close once more
        except OSError as exc:
            _warn_once(entry, f"run {entry}", exc)
    return runs


def _warn_once(path: Path, shown: str, exc: OSError) -> None:
    """Log why ``path`` is not listed, once while it stays unreadable (a page lists the runs
    every few seconds)."""
    if path not in _SKIPPED:  # at worst said twice by two sessions at once
        _SKIPPED.add(path)
        log.warning("not listed: %s", cannot_read(shown, exc, path))


_READ: dict[Path, tuple[tuple, RunInfo]] = {}  # run folder -> (file stamps, its entry)
_READ_LOCK = threading.Lock()


def _run_info(run_dir: Path) -> RunInfo:
    """The listing entry of one run folder, re-read only when one of its files changed (a
    page lists every run every few seconds; a long run's history.jsonl is thousands of lines)."""
    stamps = file_stamps(run_dir)
    with _READ_LOCK:
        kept = _READ.get(run_dir)
    if kept is None or kept[0] != stamps:
        status = read_status(run_dir)
        dices = [r.get("val_dice_mean") for r in read_history(run_dir)]
        dices = [d for d in dices if isinstance(d, (int, float))]
        info = RunInfo(
            name=run_dir.name,
            run_dir=run_dir,
            state=str(status.get("state", "unknown")),
            epoch=int(status.get("epoch") or 0),
            epochs=status.get("epochs"),
            best_val_dice=max(dices) if dices else None,
            updated_at=status.get("updated_at"),
            error=status.get("error"),
            has_best=False,
            has_last=False,
            kind=run_kind(run_dir),
        )
        with _READ_LOCK:
            _READ[run_dir] = kept = (stamps, info)
    return dataclasses.replace(  # a copy: callers may change theirs
        kept[1],
        has_best=is_file(run_dir / "best.pth"),
        has_last=is_file(run_dir / "last.pth"),
    )


def list_runs(checkpoints_root: str | Path | None = None) -> list[RunInfo]:
    """Run folders (holding config.json) under the root, most recently updated first; a run
    whose files did not change since the last call is not read again."""
    root = Path(checkpoints_root) if checkpoints_root else default_checkpoints_root()
    runs = [_run_info(run_dir) for run_dir in _run_folders(root)]
    with _READ_LOCK:  # forget deleted and renamed runs
        for gone in [d for d in _READ if d.parent == root and not os.path.isdir(d)]:
            del _READ[gone]
    runs.sort(key=lambda r: (r.updated_at or "", r.name), reverse=True)
    return runs


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run: best.pth and last.pth first, then checkpoint_epoch<N>.pth by N."""
    run_dir = Path(run_dir)
    named = [run_dir / n for n in ("best.pth", "last.pth") if is_file(run_dir / n)]

    def epoch_of(p: Path) -> int:
        digits = "".join(c for c in p.stem if c.isdigit())
        return int(digits) if digits else -1

    per_epoch = sorted(run_dir.glob("checkpoint_epoch*.pth"), key=epoch_of)
    return named + per_epoch


def ranked_checkpoints(checkpoints_root: str | Path) -> dict[str, Path]:
    """``"<run> / <file>"`` -> checkpoint path, over every run folder under the root.

    The run with the best validation Dice comes first (then the newest; runs without a Dice
    last): a page picks the first by default, and a 2-epoch test run must not be the model a
    user predicts with. An absent root gives {}.
    """
    runs = list_runs(Path(checkpoints_root))  # newest first; sorted() keeps that order
    runs = sorted(runs, key=lambda r: -r.best_val_dice if r.best_val_dice is not None else 1.0)
    return {
        f"{run.name} / {ckpt.name}": ckpt for run in runs for ckpt in checkpoint_files(run.run_dir)
    }
