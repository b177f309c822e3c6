"""Asking a run to stop through its folder: ``stop_request.json``, whoever trains it, wherever.

The dashboard asks CLI and torchrun runs this way (and a ``touch`` on a cluster does too); the
trainer polls for the file (``training.stopping``).
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from ..fileio import atomic_write_json
from .run_folder import utc_now

STOP_REQUEST = "stop_request.json"


def request_stop(run_dir: str | Path, by: str = "") -> None:
    """Ask whichever process trains ``run_dir`` (this one, a CLI run, a torchrun job on another
    host sharing the folder) to stop before its next batch; the trainer polls for the file."""
    atomic_write_json(
        Path(run_dir) / STOP_REQUEST, {"requested_at": utc_now(), "by": by or socket.gethostname()}
    )


def stop_requested(run_dir: str | Path) -> bool:
    """True while ``run_dir`` holds a stop request (any file of that name, even an empty one)."""
    return (Path(run_dir) / STOP_REQUEST).exists()


def stop_requested_by(run_dir: str | Path) -> str:
    """Who wrote the stop request of ``run_dir`` ("" for a bare ``touch`` or none)."""
    try:
        by = json.loads((Path(run_dir) / STOP_REQUEST).read_text()).get("by")
    except (OSError, ValueError, AttributeError):
        return ""
    return str(by) if by else ""
