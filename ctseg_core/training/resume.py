"""What a resumed run continues from: its run folder, its checkpoint loaded, its settings with
the epochs and time budget asked for (``Trainer.resume``)."""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..models.checkpoint import config_of, load_to_resume, resume_source
from ..runs.run_folder import refuse_if_active
from .budget import continue_budget


def prepare_resume(
    path: str | Path, epochs: int | None = None, minutes: float | None = None
) -> tuple[Path, dict, RunConfig]:
    """(run folder, checkpoint, config) to continue ``path`` (a run folder: its last.pth; or a
    checkpoint file of one) with ``epochs`` and ``minutes`` (None: as they were).

    ConfigError for a file outside a run folder, a run still training, a checkpoint that cannot
    be read (naming the intact ones of the run and the command that continues from one), and a
    run that has already trained all its epochs or used its time budget.
    """
    run_dir, source = resume_source(path)
    refuse_if_active(run_dir)
    ckpt = load_to_resume(run_dir, source)
    config = config_of(ckpt)
    if epochs is not None:
        config.train.epochs = int(epochs)
    done = int(ckpt["epoch"])
    if done >= config.train.epochs:
        raise ConfigError(
            f"run {run_dir} has trained {done} of {config.train.epochs} epochs already; "
            f"ask for more to continue (--epochs {done + 10}, say)"
        )
    continue_budget(run_dir, config.train, minutes, list(ckpt.get("history") or []))
    return run_dir, ckpt, config
