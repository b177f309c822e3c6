"""A run's time budget (``TrainConfig.minutes``): its clock, the epochs that still fit, and the
progress that the cosine and poly schedules follow (``training.optim``).

The schedule's horizon is the number of epochs expected to fit: after ``done`` epochs, with
``more`` still fitting (within the budget and ``epochs``), the progress is
``done / (done + more)``, estimated again after every epoch and recorded as ``planned_epochs``
in the epoch's record: PyTorch's epoch-based schedule with its T_max moved to the epochs that
fit (exactly that schedule when ``epochs`` binds first). The progress never goes back: an
estimate that grows (a faster epoch) holds the lr until the progress catches up. A resume with
more minutes (or another ``epochs``) plans the horizon again from the records
(``resumed_progress``): a run the budget ended goes on at the lr of the schedule over its new
horizon, not at the 0 its old one ended at.

What the clock counts: training time, from the start of a run's first epoch through the training
steps, the validation and the files of every epoch (checkpoints, figures); preparing the data
and building the model before the first epoch do not count. It counts across resumes: every
epoch record (history.jsonl and the checkpoints' history, with or without a budget) holds
``elapsed_s``, the clock at the end of that epoch's validation, to the millisecond, and a resumed
run's clock starts from the last one. status.json holds the clock too (``elapsed_s``, at every
write): a run stopped or failed during an epoch is resumed from the clock at its end
(``stopped_clock``), so the partial epoch it threw away is charged, as are the last epoch's files.
Not counted: the files of the last epoch of a run that finished (written after its record), and
a partial epoch whose status.json was not written at the end (a killed process, a full disk).
A record without ``elapsed_s`` (a run from before) counts its ``seconds``.

The unit of the estimate is an epoch from one validation's end to the next (so the files of the
epoch before are in it): the differences of ``elapsed_s``. The run stops, "finished", when the
next epoch's validation is not expected to end within the budget: when no epoch of the mean of
the last three such durations fits between the last ``elapsed_s`` and the budget. The first
epoch of a process (from its start to its validation) is left out once another is measured: it
carries the warm-up (kernels' and the allocator's first calls, the cache's pages read from
disk); while it alone is measured the estimate errs long, so the stop comes early rather than
late (only a budget shorter than about two first epochs loses an epoch by it) and the first
horizon is short.
The first history plot's imports fall into the second epoch, diluted in the mean from the third.

At least one epoch always trains: ``Trainer.resume`` refuses a run whose budget has no room for
another by the same rule, from its records. An epoch slower than the estimate may end the run
past the budget by the difference.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from ..config import MAX_MINUTES, TrainConfig
from ..errors import ConfigError
from . import distributed as ddp


def trained_seconds(history: list[dict]) -> float:
    """Training seconds of a run's epoch records so far: the last ``elapsed_s``, plus the
    ``seconds`` of any record after it (or of all, for records from before ``elapsed_s``)."""
    total = 0.0
    for record in history:
        if record.get("elapsed_s") is not None:
            total = float(record["elapsed_s"])
        else:
            total += float(record.get("seconds") or 0.0)
    return total


#: more epochs than any run trains: what ``epochs_that_fit`` answers for a budget beyond them
MANY_EPOCHS = 10**15


def epochs_that_fit(left_s: float, epoch_s: float) -> int:
    """Whole epochs of ``epoch_s`` seconds within ``left_s`` seconds (0 when none, negative or
    NaN; at most ``MANY_EPOCHS``, so that a huge budget over a tiny epoch is no OverflowError)."""
    if not epoch_s > 0:
        return 0
    fit = left_s / epoch_s + 1e-9
    if not fit > 0:  # NaN too
        return 0
    return MANY_EPOCHS if fit >= MANY_EPOCHS else math.floor(fit)


def horizon(
    elapsed_s: float, epoch_s: float | None, budget_s: float | None, done: int, epochs: int
) -> int:
    """The epochs a run is expected to train in all, after ``done`` of at most ``epochs``.

    With a budget of ``budget_s`` seconds, ``elapsed_s`` of it used and epochs estimated at
    ``epoch_s``: ``done`` plus the epochs that still fit (within ``epochs``); else ``epochs``.
    E.g. 600 s, 23 s epochs, 230 s after 10 of at most 200: 10 + 16 = 26.
    """
    if budget_s is None or not epoch_s:
        return epochs
    return done + min(max(0, epochs - done), epochs_that_fit(budget_s - elapsed_s, epoch_s))


def mean_epoch_s(durations: list[float]) -> float | None:
    """The estimate of an epoch from those measured, in order (see the module docstring)."""
    measured = durations[1:] or durations
    last = measured[-3:]
    return sum(last) / len(last) if last else None


class Budget:
    """The clock of one run in this process. ``minutes`` None: no budget (the clock still runs,
    for ``elapsed_s`` in the records); ``history``: the epoch records of a resumed run."""

    def __init__(
        self, minutes: float | None, epochs: int, history: list[dict] = (), clock_s: float = 0.0
    ):
        """``clock_s``: the clock a resumed run starts from when more than its records' (a
        stopped partial epoch, ``stopped_clock``)."""
        self.seconds = None if minutes is None else float(minutes) * 60.0
        self.epochs = epochs
        self.already_s = max(trained_seconds(list(history)), clock_s)
        self.durations: list[float] = []  # epochs measured in this process, lap to lap, in s
        self.progress = 0.0  # of the schedule, after the last lap
        self._t0: float | None = None
        self._lap_s, self._lap_epoch = self.already_s, None  # the clock at the last lap

    def start(self) -> None:
        """An epoch starts; the first call starts the clock."""
        if self._t0 is None:
            self._t0 = time.monotonic()

    def elapsed_s(self) -> float:
        """Training seconds of the run, resumes included."""
        return self.already_s + (time.monotonic() - self._t0 if self._t0 is not None else 0.0)

    def lap(self, done: int) -> dict:
        """Epoch ``done`` has validated: its record's fields (``elapsed_s``; with a budget,
        ``planned_epochs``, the schedule's horizon, else ``epochs``) and ``progress`` set for
        the next epoch.
        Under torchrun the horizon is rank 0's, on every rank (the ranks keep the same lr)."""
        elapsed = round(self.elapsed_s(), 3)
        self.durations.append(elapsed - self._lap_s)
        self._lap_s, self._lap_epoch = elapsed, done
        fields: dict = {"elapsed_s": elapsed}
        planned = self.epochs
        if self.seconds is not None:
            est = self.epoch_s()
            planned = ddp.broadcast_object(horizon(elapsed, est, self.seconds, done, self.epochs))
            fields["planned_epochs"] = planned
        self.progress = max(self.progress, min(1.0, done / max(1, planned)))
        return fields

    def epoch_s(self, fallback: float | None = None) -> float | None:
        """An epoch's expected seconds; ``fallback`` (the trainer's guess from its step times)
        before a whole epoch is measured."""
        return mean_epoch_s(self.durations) or fallback

    def epochs_after(self, epoch: int, left_s: float = 0.0, fallback: float | None = None) -> int:
        """Epochs to train after ``epoch``, whose validation ends in ``left_s`` seconds (or has
        ended, at its lap): up to ``epochs``, and those the budget leaves room for (all of them
        while no estimate exists)."""
        more = max(0, self.epochs - epoch)
        est = self.epoch_s(fallback)
        if self.seconds is None or not est:
            return more
        end = self._lap_s if self._lap_epoch == epoch else self.elapsed_s() + left_s
        return min(more, epochs_that_fit(self.seconds - end, est))

    def plan(self, epoch: int, left_s: float, epoch_s: float) -> tuple[int, float]:
        """(planned epochs, ETA in seconds) while ``epoch`` has ``left_s`` seconds to go and
        later ones take ``epoch_s`` (the trainer's guess from its step times; with a budget, the
        measured epochs once there are any)."""
        more = self.epochs_after(epoch, left_s, epoch_s)
        return epoch + more, left_s + more * (self.epoch_s(epoch_s) if self.seconds else epoch_s)

    def spent(self, done: int) -> bool:
        """Whether the budget ends the run after ``done`` epochs (no other epoch fits, and
        ``epochs`` has not ended it); under torchrun rank 0 decides for all."""
        if self.seconds is None or done >= self.epochs:
            return False
        return bool(ddp.broadcast_object(not self.epochs_after(done)))

    def ended_text(self, done: int) -> str:
        """The final message of a run the budget ended after ``done`` epochs."""
        est = self.epoch_s() or 0.0
        return (
            f"the time budget of {self.seconds / 60:g} min ended the run after {done} "
            f"epoch{'s' if done != 1 else ''} ({self.elapsed_s() / 60:.1f} min trained; another "
            f"epoch would take about {est:.0f} s)"
        )


def recorded_epoch_s(history: list[dict]) -> float:
    """The estimate of an epoch from a run's epoch records (``mean_epoch_s`` of their laps; the
    last record's ``seconds`` for records from before ``elapsed_s``)."""
    laps = [float(r["elapsed_s"]) for r in history if r.get("elapsed_s") is not None]
    est = mean_epoch_s([b - a for a, b in zip([0.0, *laps], laps, strict=False)])
    return est or float(history[-1].get("seconds") or 0.0)


def resumed_progress(train: TrainConfig, history: list[dict], done: int) -> float:
    """The schedule's progress for a run resumed after ``done`` epochs (``history`` their
    records) with ``train``'s ``epochs`` and ``minutes``: ``done / horizon``, the horizon planned
    from the records (``done`` plus the epochs that fit the rest of the budget, as ``Budget.lap``
    plans it) or ``epochs``."""
    if not done or not history:
        return 0.0
    budget_s = None if train.minutes is None else train.minutes * 60.0
    est = recorded_epoch_s(history)
    planned = horizon(trained_seconds(history), est, budget_s, done, train.epochs)
    return min(1.0, done / max(1, planned))


def stopped_clock(run_dir: Path, done: int, history: list[dict]) -> float:
    """The clock a run resumes from after ``done`` epochs (``history`` their records): its
    status.json's ``elapsed_s`` when it was stopped or failed after that epoch (the partial
    epoch it threw away included), else the records' (``trained_seconds``)."""
    from ..runs.run_folder import read_status

    status, trained = read_status(run_dir), trained_seconds(history)
    clock = status.get("elapsed_s")
    if status.get("state") not in ("stopped", "failed") or status.get("epoch") != done:
        return trained
    ok = isinstance(clock, (int, float)) and not isinstance(clock, bool) and math.isfinite(clock)
    return max(trained, float(clock)) if ok else trained


def continue_budget(
    run_dir: Path,
    train: TrainConfig,
    minutes: float | None,
    history: list[dict],
    clock_s: float = 0.0,
) -> None:
    """Set a resumed run's budget to ``minutes`` in all (None: as it was; 0: none, for a run
    that had none: a budget once given stays, its schedule depends on it), then ConfigError
    when the budget has no room for an epoch as long as the run's last one (``clock_s``: the
    run's clock, when more than its records', ``stopped_clock``)."""
    if minutes is not None:
        if not 0 <= minutes <= MAX_MINUTES:
            raise ConfigError(
                f"time budget must be > 0 and at most {MAX_MINUTES:.0f} minutes, or 0 for none "
                f"(got {minutes})"
            )
        if not minutes and train.minutes is not None:
            raise ConfigError(
                f"run {run_dir} trains within {train.minutes:g} minutes and keeps a time "
                "budget: ask for more minutes, or start a new run without one"
            )
        train.minutes = float(minutes) or None
    if train.minutes is None or not history:
        return
    used, est = max(trained_seconds(history), clock_s), recorded_epoch_s(history)
    if not epochs_that_fit(train.minutes * 60 - used, est):
        raise ConfigError(
            f"run {run_dir} has trained {used / 60:.1f} of its {train.minutes:g} minutes "
            f"already (an epoch takes about {est:.0f} s); ask for more time to continue "
            f"(--minutes {math.ceil(train.minutes + 5)}, say)"
        )
