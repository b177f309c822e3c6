"""Run folders ``checkpoints/<run>/``: the one interface between a training run and its watchers.

Files (all written atomically, see ../shared/DESIGN.md):

- ``config.json``: ``RunConfig.to_dict()``
- ``label_map.json``: output channel -> structure name; softmax runs:
  ``{"0": "background", "1": structures[0], ...}``; sigmoid runs: ``{"0": structures[0], ...}``
- ``status.json``: ``state`` (queued/running/stopping/finished/failed/stopped), ``epoch``
  (completed), ``epochs`` (planned; with a time budget the epochs expected to fit), ``step`` (in the current epoch), ``steps_per_epoch``, ``eta_s``
  (seconds to the end of the run, or null), ``loss``, ``lr``, ``error`` (text or null),
  ``message``, ``warning`` (text or null: e.g. the checkpoints may not fit on the disk),
  ``pid``, ``host``, ``updated_at`` (ISO 8601 UTC)
- ``history.jsonl``: one line per epoch: epoch, train_loss, val_loss, val_dice_mean,
  val_dice {structure: dice or null (absent from the validation references)}, lr, seconds,
  elapsed_s (training time so far, resumes included), and with a time budget planned_epochs
  (the schedule's horizon then; ``training.budget``)
- ``training_history.json`` (columns: epoch, train_loss, val_loss, val_dice_mean, lr) and
  ``training_history.png``; ``checkpoint_epoch<N>.pth``, ``best.pth``, ``last.pth``;
  ``samples/epoch_<N>.png``; ``training_data.json``: what the run trains on (``data.domain``)
- ``stop_request.json`` (``runs.stop_request``): asks the process training the run, wherever it
  runs, to stop before its next batch; removed when the run ends or starts again
- ``steps.jsonl``: one line per training step (``runs.step_log``); ``tensorboard/``: event
  files, when asked for (``runs.tensorboard``); ``notes.json``: notes and tags (``runs.notes``)
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import CtsegError
from ..fileio import atomic_write_json, atomic_write_text, is_file

log = logging.getLogger(__name__)

STATES = ("queued", "running", "stopping", "finished", "failed", "stopped")
ACTIVE_STATES = ("queued", "running", "stopping")


def default_checkpoints_root() -> Path:
    """The root of run folders (``$CTSEG_CHECKPOINTS``; see ctseg_core.settings)."""
    return settings.checkpoints_root()


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def json_safe(value: Any) -> Any:
    """NaN/inf floats -> None, recursively, so the JSON is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


#: a run folder's name: no path separators, no hidden or option-like names, no odd characters
RUN_NAME = re.compile(r"[\w][\w. -]{0,98}[\w.-]|[\w]")


#: folders of the checkpoints root that hold no run: evaluations of prediction folders and
#: models, and comparisons (a run of that name would take them in, and its Delete with them)
RESERVED_NAMES = ("evaluations", "comparisons")


def check_run_name(name: str) -> str:
    """``name`` when it is a plain folder name (``RUN_NAME``) and not one of the root's own
    folders (``RESERVED_NAMES``), else a one-line CtsegError."""
    if name.lower() in RESERVED_NAMES:
        raise CtsegError(
            f"run name {name!r} is the checkpoints folder's own {name.lower()}/ folder; "
            "choose another"
        )
    if not RUN_NAME.fullmatch(name):
        raise CtsegError(
            f"run name {name[:120]!r} must be a plain folder name of 1 to 100 letters, digits, "
            "'.', '_', '-' or spaces, not starting with '.', '-' or a space, nor ending with a "
            "space; choose another"
        )
    return name


def new_run_dir(root: str | Path, run_name: str = "") -> Path:
    """Create ``root/<run_name>`` (or a timestamped name); refuse to reuse an existing run,
    unless it ended before completing an epoch (``ended_before_training``): then the new start
    takes its folder, cleared of the old start's files, and says so in the log. CtsegError for a
    name that is not a plain folder name (``RUN_NAME``)."""
    root = Path(root).expanduser()
    name = check_run_name(run_name or dt.datetime.now().strftime("run-%Y%m%d-%H%M%S"))
    run_dir = root / name
    if run_dir.exists() and any(run_dir.iterdir()):
        if ended_before_training(run_dir):
            state = read_status(run_dir).get("state")
            _clear_empty_run(run_dir)
            log.warning(
                "run folder %s held a run that was %s before completing an epoch (nothing to "
                "continue); the new run takes its folder",
                run_dir,
                state,
            )
        elif run_name:
            raise CtsegError(
                f"run folder {run_dir} already exists; choose another run name, or continue "
                "that run"
            )
        else:
            for i in range(2, 1000):
                if not (root / f"{name}-{i}").exists():
                    run_dir = root / f"{name}-{i}"
                    break
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise CtsegError(
            f"cannot write the run folder {run_dir} ({exc.strerror or exc}); "
            "choose a writable checkpoints folder (CTSEG_CHECKPOINTS) with free space"
        ) from None
    return run_dir


def ended_before_training(run_dir: str | Path) -> bool:
    """True for a run that failed or was stopped before completing an epoch: no checkpoint, no
    history. It cannot be continued; its name may be used again, or the run removed
    (``remove_empty_run``)."""
    run_dir = Path(run_dir)
    return (
        read_status(run_dir).get("state") in ("failed", "stopped")
        and not any(not p.name.startswith(".tmp-") for p in run_dir.glob("*.pth"))
        and not read_history(run_dir)
    )


#: what a start that completed no epoch can leave in its run folder (besides .tmp-* files)
EMPTY_RUN_FILES = (
    "config.json", "label_map.json", "status.json", "error.log", "stop_request.json",
    "history.jsonl", "training_history.json", "training_data.json", ".write-test",
    "steps.jsonl", "notes.json", "tensorboard",
)  # fmt: skip


def _clear_empty_run(run_dir: Path) -> None:
    """Delete the files of a run that ended before its first epoch; CtsegError naming any other
    file in the folder (left alone)."""
    others = [
        p.name
        for p in run_dir.iterdir()
        if p.name not in EMPTY_RUN_FILES
        and not p.name.startswith(".tmp-")
        and not (p.name == "samples" and p.is_dir() and not any(p.iterdir()))
    ]
    if others:
        raise CtsegError(
            f"run folder {run_dir} holds {', '.join(sorted(others)[:5])}, which a run that "
            "ended before its first epoch does not write; move those away or choose another "
            "run name"
        )
    for p in run_dir.iterdir():
        if p.name == "tensorboard" and p.is_dir():  # event files of the steps it ran
            shutil.rmtree(p)
        elif p.is_dir():
            p.rmdir()
        else:
            p.unlink(missing_ok=True)


def remove_empty_run(run_dir: str | Path) -> None:
    """Remove the folder of a run that ended before completing an epoch (nothing was trained).

    CtsegError, and nothing removed, for a run that is active, has a checkpoint or a finished
    epoch, or holds files such a run does not write.
    """
    run_dir = Path(run_dir)
    if not ended_before_training(run_dir):
        status = read_status(run_dir)
        raise CtsegError(
            f"run {run_dir} is {status.get('state')} and has a checkpoint or a finished epoch "
            "(or is still active); only a run that ended before its first epoch is removed "
            "here: delete other runs by hand"
        )
    _clear_empty_run(run_dir)
    run_dir.rmdir()
    log.info("removed the empty run folder %s", run_dir)


def rename_run(run_dir: str | Path, new_name: str) -> Path:
    """Rename the run folder ``run_dir`` to ``new_name`` beside it with one atomic os.rename
    (checkpoints, history, evaluation folders go with it); returns the new path. CtsegError,
    nothing renamed, for a folder without config.json, a name not a plain folder name
    (``RUN_NAME``) or taken, and an active run (``refuse_if_active``, also in this process).
    config.json's and status.json's ``run_name`` follow, as a resume writes them; the configs
    inside the .pth files keep the old one (a resume takes the folder's name)."""
    run_dir = Path(run_dir)
    if not is_file(run_dir / "config.json"):
        raise CtsegError(f"{run_dir} is not a run folder (no config.json); choose a run")
    target = run_dir.parent / check_run_name(new_name)
    refuse_if_active(run_dir, own_ok=False)
    if new_name == run_dir.name or (target.exists() and not target.samefile(run_dir)):
        raise CtsegError(f"{target} already exists; choose another name for {run_dir.name}")
    try:
        os.rename(run_dir, target)  # samefile above: a case-only rename on macOS goes ahead
    except OSError as exc:
        msg = f"cannot rename {run_dir} to {new_name} ({exc.strerror or exc}); check permissions"
        raise CtsegError(msg) from None
    try:  # informative fields: a failure leaves the rename done, and says so in the log
        for name in ("config.json", "status.json"):
            record = read_json(target / name)
            if isinstance(record, dict) and record.get("run_name") not in (None, new_name):
                atomic_write_json(target / name, {**record, "run_name": new_name})
    except OSError as exc:
        log.warning("renamed %s; its %s keeps the old run_name (%s)", target, name, exc)
    log.info("renamed the run folder %s to %s", run_dir, target)
    return target


def check_disk_space(run_dir: str | Path, checkpoint_bytes: int, epoch_files: int) -> str | None:
    """Refuse a run whose checkpoints cannot be written; warn when they will not all fit.

    ``checkpoint_bytes``: one checkpoint (``checkpoint.estimated_checkpoint_bytes``);
    ``epoch_files``: the checkpoint_epoch<N>.pth files the run is still to write. best.pth and
    last.pth are rewritten each epoch, beside the temporary file of the atomic write: three
    checkpoints at once. Raises CtsegError when those do not fit in the free space; returns a
    one-line warning when the epoch files would not fit as well, else None.
    """
    free = shutil.disk_usage(run_dir).free
    needed = 3 * checkpoint_bytes
    mb = 1e6
    if free < needed:
        raise CtsegError(
            f"{run_dir} has {free / mb:.0f} MB free but a checkpoint of this model takes about "
            f"{checkpoint_bytes / mb:.0f} MB and training needs room for 3 at once; free disk "
            "space or choose another checkpoints folder (CTSEG_CHECKPOINTS)"
        )
    total = needed + epoch_files * checkpoint_bytes
    if free < total:
        return (
            f"{epoch_files} checkpoint_epoch<N>.pth files of about {checkpoint_bytes / mb:.0f} MB "
            f"each will not fit in the {free / mb:.0f} MB free in {run_dir}: keep fewer "
            "(--checkpoint-every N, 0 = none; on the Train page under Advanced) or free disk space"
        )
    return None


def write_status(run_dir: str | Path, status: dict[str, Any]) -> None:
    """Rewrite status.json atomically, stamping ``updated_at``.

    Where the disk has no room for the temporary file (full), the file is overwritten in place
    instead: it is small, so its own block takes the new text, and a reader that catches it half
    written for a moment reads "unknown", which beats a failed run shown as running for ever.
    OSError when that fails too (or there is no status.json yet).
    """
    path = Path(run_dir) / "status.json"
    text = json.dumps(json_safe({**status, "updated_at": utc_now()}), indent=2) + "\n"
    try:
        atomic_write_text(path, text)
    except OSError:
        if not path.is_file():
            raise
        with open(path, "r+b") as handle:
            handle.write(text.encode("utf-8"))
            handle.truncate()
            handle.flush()
            os.fsync(handle.fileno())


def write_history(run_dir: str | Path, history: list[dict]) -> None:
    """Rewrite history.jsonl and training_history.json from the full history (atomically)."""
    run_dir = Path(run_dir)
    lines = "".join(json.dumps(json_safe(rec)) + "\n" for rec in history)
    atomic_write_text(run_dir / "history.jsonl", lines)
    columns = ("epoch", "train_loss", "val_loss", "val_dice_mean", "lr", "seconds")
    atomic_write_json(
        run_dir / "training_history.json",
        json_safe({c: [rec.get(c) for rec in history] for c in columns}),
    )


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def read_status(run_dir: str | Path) -> dict[str, Any]:
    """status.json as a dict; ``{"state": "unknown"}`` when it is missing or unreadable.

    A run marked active whose process (``pid`` on ``host``, this machine) is gone reads as ``failed``
    with an explanatory error, so a killed run is not shown as running forever.
    """
    status = read_json(Path(run_dir) / "status.json")
    if not isinstance(status, dict):
        return {"state": "unknown", "error": None}
    pid = status.get("pid")
    same_host = status.get("host") == socket.gethostname()
    if (
        status.get("state") in ACTIVE_STATES
        and same_host
        and isinstance(pid, int)
        and not _alive(pid)
    ):
        status = {
            **status,
            "state": "failed",
            "error": status.get("error")
            or f"the training process (pid {pid}) ended without finishing; "
            + (
                "resume from last.pth"
                if (Path(run_dir) / "last.pth").is_file()
                else "no epoch was completed, so there is nothing to resume: start it again"
            ),
        }
    return status


#: a run on another host whose status.json has not changed for this long is taken as ended
STALE_AFTER_S = 1800.0


def refuse_if_active(run_dir: str | Path, own_ok: bool = True) -> None:
    """CtsegError when a process is still training ``run_dir`` (a second writer would overwrite
    its checkpoints and history). ``own_ok``: a run of this very process passes (resume).

    Same host: the process ``pid`` is alive (``read_status``) and is not this one. Another host:
    its status.json was updated within ``STALE_AFTER_S`` (status is rewritten at least once per
    epoch and per prepared subject; a crashed node stops updating it).
    """
    status = read_status(run_dir)
    if status.get("state") not in ACTIVE_STATES:
        return
    same_host = status.get("host") == socket.gethostname()
    if same_host and own_ok and status.get("pid") == os.getpid():
        return  # this process: its job runs one training at a time (a stale state of its own)
    if not same_host:
        try:
            updated = dt.datetime.fromisoformat(str(status.get("updated_at")))
            age_s = (dt.datetime.now(dt.timezone.utc) - updated).total_seconds()
        except (TypeError, ValueError):
            age_s = math.inf
        if age_s > STALE_AFTER_S:
            return
    minutes = f"{STALE_AFTER_S / 60:.0f} minutes"
    gone = "" if same_host else f" (or after {minutes} without a status update, when it died)"
    raise CtsegError(
        f"run {run_dir} is still {status['state']} (pid {status.get('pid')} on "
        f"{status.get('host')}, status updated {status.get('updated_at')}); stop it first (the "
        "dashboard's Stop, or a stop_request.json in the run folder) and try again once it has "
        f"ended{gone}"
    )


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but not ours
    return True


def read_history(run_dir: str | Path) -> list[dict]:
    """The epoch records of history.jsonl (unparsable lines skipped); [] when absent."""
    path = Path(run_dir) / "history.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records
