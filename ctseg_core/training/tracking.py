"""The run folder's trackers, attached by the trainer on rank 0: the per-step log (always) and
TensorBoard event files (``train.tensorboard``)."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import RunConfig
from ..device import resolve_device
from ..runs.status import Callback
from ..runs.step_log import StepLog

log = logging.getLogger(__name__)


def tracking_callbacks(config: RunConfig, run_dir: Path, done_epochs: int) -> list[Callback]:
    """``[StepLog, TensorBoardLog?]`` for a run (re)starting after ``done_epochs`` epochs.

    A TensorBoard folder that cannot be created is logged and skipped (never fails a run)."""
    callbacks: list[Callback] = [
        StepLog(run_dir, done_epochs, device=str(resolve_device(config.train.device)))
    ]
    if config.train.tensorboard:
        from ..runs.tensorboard import TensorBoardLog

        try:
            callbacks.append(TensorBoardLog(run_dir, done_epochs))
        except OSError as exc:
            log.warning("no TensorBoard files for %s (%s)", run_dir, exc.strerror or exc)
    return callbacks
