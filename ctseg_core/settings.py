"""Every ``CTSEG_*`` environment variable: its name, default and meaning, read here only.

Each reader is called when the value is needed (never at import), so a test or a server that sets
a variable later is obeyed. ``SETTINGS`` lists them (tests/test_settings.py checks that every
``CTSEG_*`` name in the code is listed).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import DataError
from .fileio import is_dir

#: images whose header claims more voxels are refused before any voxel is read (a 1024^3 grid)
DEFAULT_MAX_VOXELS = 2**30


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, what it holds when unset, and what it means."""

    name: str
    default: str
    meaning: str


SETTINGS = (
    Setting("CTSEG_DATA", "the phantom demo dataset", "the dashboard's default dataset root"),
    Setting(
        "CTSEG_DATA_ROOTS",
        "unset: every path allowed",
        "folders (':'-separated) that paths typed into the dashboard must lie inside",
    ),
    Setting("CTSEG_DEMO_DIR", "<user data dir>/phantom", "where the phantom demo dataset is made"),
    Setting("CTSEG_CACHE", "<user cache dir> (~/.cache/ctseg)", "the preprocessing cache"),
    Setting(
        "CTSEG_CHECKPOINTS",
        "the checkout's checkpoints/, else ./checkpoints",
        "the root of run folders (CLI and dashboard alike)",
    ),
    Setting(
        "CTSEG_MODELS",
        "TotalSegmentator's results folder when it exists ($TOTALSEG_HOME_DIR/nnunet/results, "
        "~/.totalsegmentator/nnunet/results), else none",
        "folders (':'-separated) searched for nnU-Net v2 model folders, offered beside the runs",
    ),
    Setting(
        "CTSEG_MAX_VOXELS",
        f"{DEFAULT_MAX_VOXELS} (2^30)",
        "the most voxels one image may claim; 'inf' = no limit",
    ),
)


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def default_data_root() -> str:
    """``$CTSEG_DATA``, or "" when unset (the dashboard then uses the phantom demo)."""
    return _env("CTSEG_DATA")


def data_root_entries() -> list[str] | None:
    """The folders of ``$CTSEG_DATA_ROOTS`` as typed, or None when unset (no restriction)."""
    parts = [p.strip() for p in _env("CTSEG_DATA_ROOTS").split(os.pathsep) if p.strip()]
    return parts or None


def data_roots() -> list[Path] | None:
    """The resolved folders of ``$CTSEG_DATA_ROOTS``, or None when unset (no restriction)."""
    parts = data_root_entries()
    return None if parts is None else [Path(p).expanduser().resolve() for p in parts]


def demo_dir() -> Path:
    """Where the phantom demo dataset lives: ``$CTSEG_DEMO_DIR`` or <user data dir>/phantom."""
    if env := _env("CTSEG_DEMO_DIR"):
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("ctseg")) / "phantom"


def cache_dir() -> Path:
    """``$CTSEG_CACHE`` if set, else the platform's user cache dir (e.g. ~/.cache/ctseg)."""
    if env := _env("CTSEG_CACHE"):
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ctseg"))


def checkpoints_root() -> Path:
    """The root of run folders, the same for the CLI and the dashboard.

    ``$CTSEG_CHECKPOINTS`` if set; else the checkout's ``checkpoints/`` when ctseg runs from a
    source checkout (not the server's working folder: a dashboard started by a service manager
    in / would write runs where nobody looks); else ``./checkpoints`` (an installed package).
    """
    if env := _env("CTSEG_CHECKPOINTS"):
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "checkpoints").is_dir():
        return checkout / "checkpoints"
    return Path.cwd() / "checkpoints"


def model_roots() -> list[Path]:
    """Folders searched for nnU-Net model folders: ``$CTSEG_MODELS`` (':'-separated, as typed,
    ``~`` expanded), else TotalSegmentator's results folder when it exists (it installs its
    weights in ``$TOTALSEG_HOME_DIR/nnunet/results``, by default ``~/.totalsegmentator``'s),
    else none."""
    parts = [p.strip() for p in _env("CTSEG_MODELS").split(os.pathsep) if p.strip()]
    if parts:
        return [Path(p).expanduser() for p in parts]
    default = totalseg_results()
    try:
        return [default] if is_dir(default) else []
    except OSError:  # there, but this user may not look: the model listing says why
        return [default]


def totalseg_results() -> Path:
    """TotalSegmentator's results folder: ``$TOTALSEG_HOME_DIR/nnunet/results``, by default
    ``~/.totalsegmentator/nnunet/results`` (it may not exist)."""
    home = Path(_env("TOTALSEG_HOME_DIR") or "~/.totalsegmentator").expanduser()
    return home / "nnunet" / "results"


def max_voxels() -> int:
    """The voxel limit of one image: ``$CTSEG_MAX_VOXELS`` ("inf": none) or the default."""
    raw = _env("CTSEG_MAX_VOXELS")
    if not raw:
        return DEFAULT_MAX_VOXELS
    try:
        value = float(raw)
        return sys.maxsize if value == math.inf else max(1, int(value))
    except (ValueError, OverflowError):
        raise DataError(
            f"CTSEG_MAX_VOXELS={raw!r} is not a number; set it to a voxel count"
        ) from None
