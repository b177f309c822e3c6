"""Listing a run's checkpoints and ranking every checkpoint under a root (CLI and pages)."""

from __future__ import annotations

from pathlib import Path

from .run_folder import list_runs


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """Checkpoints of a run: best.pth and last.pth first, then checkpoint_epoch<N>.pth by N."""
    run_dir = Path(run_dir)
    named = [run_dir / n for n in ("best.pth", "last.pth") if (run_dir / n).is_file()]

    def epoch_of(p: Path) -> int:
        digits = "".join(c for c in p.stem if c.isdigit())
        return int(digits) if digits else -1

    per_epoch = sorted(run_dir.glob("checkpoint_epoch*.pth"), key=epoch_of)
    return named + per_epoch


def ranked_checkpoints(checkpoints_root: str | Path) -> dict[str, Path]:
    """``"<run> / <file>"`` -> checkpoint path, over every run folder under the root.

    The run with the best validation Dice comes first (then the newest; runs without a Dice
    last): a page picks the first by default, and a 2-epoch test run must not be the model a
    user predicts with. An absent root gives {}.
    """
    root = Path(checkpoints_root)
    if not root.is_dir():
        return {}
    runs = list_runs(root)  # newest first; sorted() keeps that order among equals
    runs = sorted(runs, key=lambda r: -r.best_val_dice if r.best_val_dice is not None else 1.0)
    return {
        f"{run.name} / {ckpt.name}": ckpt for run in runs for ckpt in checkpoint_files(run.run_dir)
    }
