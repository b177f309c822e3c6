"""What a user keeps about a run (``notes.json``: free text and tags), and deleting a run.

``notes.json``: ``{"notes": str, "tags": [str, ...]}``, written atomically; tags are trimmed,
lower-cased, unique and sorted.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..errors import CtsegError
from ..fileio import atomic_write_json, is_file
from .run_folder import read_json, refuse_if_active

log = logging.getLogger(__name__)

NOTES_FILE = "notes.json"
MAX_NOTES_CHARS = 10_000
MAX_TAG_CHARS = 40


def clean_tags(tags) -> list[str]:
    """Tags from a list or a comma-separated string: trimmed, lower case, at most
    ``MAX_TAG_CHARS`` characters each, without empties or repeats, sorted."""
    if isinstance(tags, str):
        tags = tags.split(",")
    return sorted({str(t).strip().lower()[:MAX_TAG_CHARS] for t in tags or ()} - {""})


def read_notes(run_dir: str | Path) -> dict:
    """``{"notes": str, "tags": [str]}`` of a run; empty ones when the file is absent or bad."""
    raw = read_json(Path(run_dir) / NOTES_FILE)
    raw = raw if isinstance(raw, dict) else {}
    notes = raw.get("notes") if isinstance(raw.get("notes"), str) else ""
    tags = raw.get("tags") if isinstance(raw.get("tags"), list) else []
    return {"notes": notes, "tags": clean_tags(tags)}


def write_notes(run_dir: str | Path, notes: str, tags) -> dict:
    """Keep ``notes`` (at most ``MAX_NOTES_CHARS``) and ``tags`` (``clean_tags``) in the run
    folder, also while it trains (the trainer never writes this file); returns what was kept.
    CtsegError for a folder without config.json or one that cannot be written."""
    run_dir = Path(run_dir)
    if not is_file(run_dir / "config.json"):
        raise CtsegError(f"{run_dir} is not a run folder (no config.json); choose a run")
    kept = {"notes": str(notes or "")[:MAX_NOTES_CHARS], "tags": clean_tags(tags)}
    try:
        atomic_write_json(run_dir / NOTES_FILE, kept)
    except OSError as exc:
        raise CtsegError(
            f"cannot write {run_dir / NOTES_FILE} ({exc.strerror or exc}); check permissions "
            "and free space"
        ) from None
    return kept


def delete_run(run_dir: str | Path) -> None:
    """Delete the run folder ``run_dir`` with everything in it (checkpoints, evaluations).

    CtsegError, nothing deleted, for a folder without config.json and for a run still training
    here or elsewhere (``refuse_if_active``, this process's own run included)."""
    run_dir = Path(run_dir)
    if not is_file(run_dir / "config.json"):
        raise CtsegError(f"{run_dir} is not a run folder (no config.json); nothing was deleted")
    refuse_if_active(run_dir, own_ok=False)
    try:
        shutil.rmtree(run_dir)
    except OSError as exc:
        raise CtsegError(
            f"cannot delete {run_dir} completely ({exc.strerror or exc}); what is left is still "
            "there: check permissions"
        ) from None
    log.info("deleted the run folder %s", run_dir)
