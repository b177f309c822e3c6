"""Stopping a training run early: on request before its next batch, or when it stops improving.

Three ways in: the stop event (the dashboard's job, or ``request`` from a signal handler: the
CLI turns SIGTERM into one), and a ``stop_request.json`` in the run folder
(``runs.stop_request.request_stop``: the dashboard asks CLI and torchrun runs this way, or a ``touch``
on a cluster). One process looks at the folder at most once a second. Under torchrun the ranks
decide together on their first training step and every ``STOP_POLL_STEPS``-th after it, counted
over the run (an epoch may be shorter), which every rank reaches: a rank that stopped alone
would leave the others waiting in their next all-reduce; any rank's event or rank 0's look at
the folder stops them all.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

from ..runs.stop_request import stop_requested, stop_requested_by
from . import distributed as ddp

STOP_POLL_S = 1.0  # one process: seconds between looks for a stop request in the run folder
STOP_POLL_STEPS = 20  # torchrun: steps between looks (rank 0 looks; the ranks agree in one gather)


class StopRequested(Exception):
    """Raised inside the training loop when the run is to stop."""


class StopControl:
    """The stop decision of one rank. ``reason`` completes "stopped ..." in the status message."""

    def __init__(self, event: threading.Event | None, rank: int = 0, world: int = 1):
        self.event = event or threading.Event()
        self.rank, self.world = rank, world
        self.run_dir: Path | None = None  # set once the run folder exists
        self.reason = "by request"
        self._last_poll = 0.0
        self._steps = 0  # training steps checked, over the run: the ranks count alike

    def request(self, reason: str) -> None:
        """Stop before the next batch (safe from a signal handler or another thread)."""
        self.reason = reason
        self.event.set()

    def check(self, step: int | None = None) -> None:
        """Raise StopRequested when the run is to stop. ``step``: the training step; None in
        validation, where ranks do not look (their batch counts may differ by one)."""
        if self.world > 1:
            if step is None:
                return
            self._steps += 1  # not ``step``: it restarts each epoch, which may be shorter
            if (self._steps - 1) % STOP_POLL_STEPS:
                return
            asked = self.event.is_set() or (
                self.rank == 0 and self.run_dir is not None and stop_requested(self.run_dir)
            )
            if ddp.any_rank(asked):
                if not self.event.is_set():
                    self.reason = "by request (stop_request.json or another rank)"
                self.event.set()
                raise StopRequested
            return
        if not self.event.is_set() and self._folder_asks():
            by = stop_requested_by(self.run_dir)
            of = f" of {by}" if by else ""
            self.request(f"by request{of} (stop_request.json in the run folder)")
        if self.event.is_set():
            raise StopRequested

    def _folder_asks(self) -> bool:
        if self.run_dir is None:
            return False
        now = time.monotonic()
        if now - self._last_poll < STOP_POLL_S:
            return False
        self._last_poll = now
        return stop_requested(self.run_dir)


def epoch_score(record: dict) -> float:
    """Higher is better: mean val Dice, or minus the val loss when no Dice could be measured.

    -inf ("no score") when neither was measured or the value is NaN (a validation that diverged):
    a NaN would compare false with everything, and as the best so far (``max`` of a resumed run's
    scores) it would keep any later epoch from becoming best.pth.
    """
    if record.get("val_dice_mean") is not None:
        score = float(record["val_dice_mean"])
    elif record.get("val_loss") is not None:
        score = -float(record["val_loss"])
    else:
        return -math.inf
    return -math.inf if math.isnan(score) else score


def epochs_since_best(scores: list[float]) -> int:
    """Epochs after the first best score (early stopping counts them); 0 for none, and all of
    them when none scored (every one -inf), as the training loop counts them from the start."""
    if not scores:
        return 0
    best_at = max(range(len(scores)), key=lambda i: (scores[i], -i))
    if scores[best_at] == -math.inf:
        return len(scores)
    return len(scores) - 1 - best_at
