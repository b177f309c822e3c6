"""A training run in a background thread: what the dashboard's Train page starts and watches.

One ``TrainingJob`` per process (``get_job()``): ``start(config)`` validates the settings and
creates the run folder in the caller's thread (so bad settings or an unwritable folder fail
there, with a message), then trains in a daemon thread. ``stop()`` asks the loop to end before
its next batch. ``snapshot()`` returns a frozen copy of the progress, safe to read from any
thread. A crash in the thread is recorded as state "failed" with the error text in
``snapshot().error`` and in status.json; it never leaves a silent dead thread.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RunConfig
from ..errors import CtsegError
from ..runs.run_folder import ACTIVE_STATES
from ..runs.status import Progress
from .trainer import Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSnapshot:
    """A read-only copy of the job's progress. ``state`` is "idle" before the first start."""

    state: str = "idle"
    run_dir: Path | None = None
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    loss: float | None = None
    lr: float | None = None
    eta_s: float | None = None
    error: str | None = None
    message: str = ""
    last_record: dict | None = None
    updated: float = field(default_factory=time.time)  # epoch seconds of this snapshot
    # which start or resume this is (a new one each time): a page that launched it knows it,
    # where a run name may since have been taken by another user's start in the same folder
    launch: str = ""

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE_STATES


class TrainingJob:
    """At most one training thread at a time; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._snapshot = JobSnapshot()
        self._trainer: Trainer | None = None

    @property
    def is_running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive()

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            return self._snapshot

    def start(
        self,
        config: RunConfig,
        checkpoints_root: str | Path | None = None,
        started_by: str = "",
        launch: str = "",
    ) -> Path:
        """Start training ``config`` in the background; returns the new run folder.

        ``started_by``: who asked (kept in status.json, see Trainer); ``launch``: the caller's
        id of this start, kept as ``JobSnapshot.launch`` (a new random one when empty)."""
        return self._launch(
            lambda kw: Trainer(config, checkpoints_root=checkpoints_root, in_thread=True, **kw),
            started_by,
            launch,
        )

    def resume(
        self,
        run_dir: str | Path,
        epochs: int | None = None,
        started_by: str = "",
        minutes: float | None = None,
        launch: str = "",
    ) -> Path:
        """Continue ``run_dir`` from its last.pth in the background (optionally to more epochs,
        or within ``minutes`` of training in all: see ``Trainer.resume``); ``launch`` as in
        ``start``."""
        return self._launch(
            lambda kw: Trainer.resume(
                run_dir, epochs=epochs, minutes=minutes, in_thread=True, **kw
            ),
            started_by,
            launch,
        )

    def stop(
        self, by: str = "", run_dir: str | Path | None = None, launch: str | None = None
    ) -> None:
        """Ask the running loop to stop before its next batch (returns at once).

        ``by``: who asked; the run's final message then says "stopped by request of <by>".
        ``run_dir`` and ``launch``: the run and the start or resume of it the caller means;
        another (the job moved on since the caller looked, e.g. a page clicked seconds later,
        or another user started a run under the same name) is left running."""
        with self._lock:
            trainer = self._trainer
            current, current_launch = self._snapshot.run_dir, self._snapshot.launch
        if run_dir is not None and (current is None or Path(current) != Path(run_dir)):
            return
        if launch is not None and launch != current_launch:
            return
        if by and trainer is not None:
            trainer.stopper.request(f"by request of {by}")
        self._stop.set()
        with self._lock:
            snap = self._snapshot
            if not snap.is_active:
                return
            self._snapshot = dataclasses.replace(snap, state="stopping", updated=time.time())
            trainer = self._trainer
        if trainer is not None:
            trainer.mark_stopping()  # unless it has just ended: its final state stays

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the thread ends (or ``timeout`` s); True when no thread is running."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.is_running

    def _launch(self, make_trainer, started_by: str, launch: str) -> Path:
        with self._lock:
            if self.is_running:
                raise CtsegError(
                    f"a training run is already running ({self._snapshot.run_dir}); "
                    "stop it or wait for it to finish before starting another"
                )
            self._stop = threading.Event()
            trainer = make_trainer(
                {"callbacks": [self._on_progress], "stop_event": self._stop,
                 "started_by": started_by}
            )  # fmt: skip
            self._trainer = trainer
            run_dir = trainer.open_run()
            self._snapshot = JobSnapshot(
                state="queued", run_dir=run_dir, epochs=trainer.config.train.epochs,
                epoch=int(trainer.resume_ckpt["epoch"]) if trainer.resume_ckpt else 0,
                launch=launch or uuid.uuid4().hex,
            )  # fmt: skip
            self._thread = threading.Thread(
                target=self._run, args=(trainer,), name="ctseg-training", daemon=True
            )
            self._thread.start()
        return run_dir

    def _run(self, trainer: Trainer) -> None:
        leave_room_for_the_host()
        try:
            trainer.run()
        except BaseException as exc:  # recorded for the page; status.json already says failed
            text = str(exc) if isinstance(exc, CtsegError) else f"{type(exc).__name__}: {exc}"
            log.warning("training run %s failed: %s", trainer.run_dir, text)
            with self._lock:
                self._snapshot = dataclasses.replace(
                    self._snapshot, state="failed", error=text, message=text, updated=time.time()
                )

    def _on_progress(self, p: Progress) -> None:
        with self._lock:
            old = self._snapshot
            state = p.state
            if self._stop.is_set() and state == "running":
                state = "stopping"
            self._snapshot = JobSnapshot(
                state=state, run_dir=p.run_dir, epoch=p.epoch, epochs=p.epochs,
                step=p.step if p.kind != "end" else old.step,
                steps_per_epoch=p.steps_per_epoch or old.steps_per_epoch,
                loss=p.loss if p.loss is not None else old.loss,
                lr=p.lr if p.lr is not None else old.lr, eta_s=p.eta_s, error=p.error,
                message=p.message or old.message,
                last_record=dict(p.record) if p.record else old.last_record, launch=old.launch,
            )  # fmt: skip


#: the training thread's nice value: the host's page threads are served first
TRAIN_NICE = 10


def leave_room_for_the_host() -> None:
    """Called in the training thread of a host process (the dashboard): lower this thread's
    priority (Linux: nice is per thread, and the torch worker threads and loader processes it
    starts inherit it) and keep one core free of torch's intra-op threads, so that the pages
    answer while a run trains (on 2 cores a page click took 9-12 s with both cores training).
    Elsewhere (no per-thread priority): the thread count only."""
    import torch

    cores = os.cpu_count() or 1
    if cores > 1 and torch.get_num_threads() >= cores:
        torch.set_num_threads(cores - 1)  # process-wide: the host's own inference too
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), TRAIN_NICE)
    except (AttributeError, OSError) as exc:  # not Linux, or not allowed
        log.debug("training thread keeps its priority (%s)", exc)


_JOB: TrainingJob | None = None
_JOB_LOCK = threading.Lock()


def get_job() -> TrainingJob:
    """The process-wide training job (created on first use)."""
    global _JOB
    with _JOB_LOCK:
        if _JOB is None:
            _JOB = TrainingJob()
        return _JOB
