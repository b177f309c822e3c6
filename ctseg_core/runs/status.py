"""What a run reports while it trains: ``Progress`` for callbacks, its status.json writer, and
the one line a failure leaves there."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CtsegError
from ..fileio import DISK_FULL, atomic_write_text
from .run_folder import write_status

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """What callbacks receive. ``epoch`` is the epoch in progress (1-based) or last completed."""

    kind: str  # "start", "step", "epoch", "end"
    state: str
    run_dir: Path | None
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    eta_s: float | None = None
    record: dict | None = None
    message: str = ""
    error: str | None = None
    extra: dict = field(default_factory=dict)


Callback = Callable[[Progress], None]


class StatusFile:
    """The run folder's status.json, written on rank 0 only.

    Step reports are written at most once a second, others always; state "running" shows as
    "stopping" once ``stop_event`` is set. After the final state (a Progress of kind "end")
    nothing is written any more: a late stop or step report never overwrites it. ``warning``
    and ``started_by`` are kept in every write; ``elapsed_s``: the training clock (``clock``) at
    the write, which a resume of a stopped run charges to its time budget. Thread-safe (the training loop and a Stop
    button both write).
    """

    def __init__(self, rank: int, stop_event: threading.Event):
        self.rank, self.stop_event = rank, stop_event
        self.run_dir: Path | None = None
        self.warning: str | None = None
        self.started_by = ""
        self.clock: Callable[[], float] | None = None  # the run's training seconds, resumes in
        self._lock = threading.Lock()
        self._last_write = 0.0
        self._last: dict | None = None
        self._ended = False

    def write(self, p: Progress, force: bool = False) -> None:
        if self.rank != 0 or self.run_dir is None:
            return
        now = time.monotonic()
        if not force and now - self._last_write < 1.0:
            return
        self._last_write = now
        state = "stopping" if p.state == "running" and self.stop_event.is_set() else p.state
        status = {
            "state": state, "epoch": p.epoch, "epochs": p.epochs, "step": p.step,
            "steps_per_epoch": p.steps_per_epoch, "eta_s": p.eta_s, "loss": p.loss, "lr": p.lr,
            "error": p.error, "message": p.message, "warning": self.warning, "pid": os.getpid(),
            "host": socket.gethostname(), "run_name": self.run_dir.name,
            "started_by": self.started_by or None,
            "elapsed_s": round(self.clock(), 3) if self.clock is not None else None,
        }  # fmt: skip
        with self._lock:
            if self._ended:
                return
            self._ended = p.kind == "end"
            self._last = status
            self._put(status)

    def mark_stopping(self) -> None:
        """Show state "stopping" at once, unless the run has already ended."""
        with self._lock:
            if not self._ended and self._last is not None:
                self._last = {**self._last, "state": "stopping"}
                self._put(self._last)

    def _put(self, status: dict) -> None:
        try:
            write_status(self.run_dir, status)
        except OSError as exc:  # a full disk must not kill the run before a checkpoint does
            log.warning(
                "could not write %s (%s)", self.run_dir / "status.json", exc.strerror or exc
            )


def user_label(raw: str, via: str) -> str:
    """``started_by`` for a user name from a login or a proxy header: letters, digits, '@',
    '.', '_', '-' only (at most 80), then `` (via)``; "" when nothing is left."""
    user = re.sub(r"[^\w@.\-]", "", raw or "")[:80]
    return f"{user} ({via})" if user else ""


def login_label(via: str = "CLI") -> str:
    """``started_by`` for whoever runs this process ("alice (CLI)"), or ``via`` alone."""
    import getpass

    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # a container user without a passwd entry or LOGNAME
        user = ""
    return user_label(user, via) or via


def failure_text(exc: BaseException) -> str:
    """The one line a failed run records: the message of our own errors, the type and text of
    others, and what to do about the machine's limits (too many open files, a full disk)."""
    if isinstance(exc, CtsegError):
        return str(exc)
    # a loader worker's error arrives as the worker's whole traceback: its last line says it
    lines = [line for line in str(exc).splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        folder = Path(exc.filename).parent if exc.filename else None
        try:
            free = f" ({shutil.disk_usage(folder).free / 1e6:.1f} MB free)" if folder else ""
        except OSError:
            free = ""
        return (
            f"no space left on {folder or 'the disk'}{free}: free disk space, then continue the "
            "run (or start it again)"
        )
    emfile = isinstance(exc, OSError) and exc.errno == errno.EMFILE
    if emfile or "[Errno 24]" in last or "Too many open files" in last:
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):  # Windows
            soft = 1024
        return (
            f"too many open files (this process may open {soft}; ulimit -n): raise the limit, "
            f"e.g. `ulimit -n {max(4 * soft, 4096)}`, then continue the run"
        )
    if str(exc).startswith("Caught ") and ":" in last:  # "OSError: ..." as the worker raised it
        return last
    return f"{type(exc).__name__}: {' '.join(line.strip() for line in lines)}"


def write_error_log(run_dir: Path | None, text: str) -> Path | None:
    """An unexpected failure's traceback ``text``: into ``error.log`` of the run folder
    (status.json and the CLI keep one line), and the log at DEBUG; returns where it went, or
    None (no run folder, or one line at ERROR when it cannot be written: a full disk)."""
    log.debug("training failed:\n%s", text)
    if run_dir is None:
        return None
    try:
        atomic_write_text(run_dir / "error.log", text)
    except OSError as exc:
        log.error("could not write %s/error.log (%s)", run_dir, exc.strerror or exc)
        return None
    return run_dir / "error.log"
