"""The files a completed epoch leaves in the run folder: checkpoints, history and its plot."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..errors import TrainingError
from ..fileio import DISK_FULL
from ..models.checkpoint import (
    CheckpointWriteError,
    continue_hint,
    estimated_checkpoint_bytes,
    no_space_text,
    save_checkpoint,
)
from ..runs.run_folder import write_history
from .figures import save_history_plot


def save_epoch(
    run_dir: Path,
    config: RunConfig,
    state: tuple,
    epoch: int,
    history: list[dict],
    improved: bool,
    training_data: dict | None,
) -> None:
    """Checkpoints (every ``checkpoint_every`` epochs, best.pth when ``improved``, last.pth),
    history and its plot of a completed epoch. ``state``: (model, optimizer, scheduler).

    TrainingError saying which checkpoints are intact and how to continue when one cannot be
    written (a full disk); the file it replaced stays whole.
    """
    model, optimizer, scheduler = state
    t = config.train
    args = (model, optimizer, scheduler, epoch, config, history)
    kw = {"training_data": training_data}
    try:
        if t.checkpoint_every and epoch % t.checkpoint_every == 0:
            save_checkpoint(run_dir / f"checkpoint_epoch{epoch}.pth", *args, **kw)
        if improved:
            save_checkpoint(run_dir / "best.pth", *args, **kw)
        save_checkpoint(run_dir / "last.pth", *args, **kw)
        write_history(run_dir, history)
        save_history_plot(history, run_dir / "training_history.png")
        return
    except CheckpointWriteError as exc:
        text = str(exc)
    except OSError as exc:
        size = estimated_checkpoint_bytes(model, t.optimizer)
        full = exc.errno in DISK_FULL
        text = no_space_text(run_dir, size) if full else f"cannot write to {run_dir} ({exc})"
    # out of the except block, so that nothing holds a failed write's file (and its space)
    first = "free disk space" if text.startswith("no space left") else "see why the write failed"
    raise TrainingError(f"{text}; {continue_hint(run_dir, first)}")
