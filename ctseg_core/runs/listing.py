"""Listing runs and their checkpoints, and ranking every checkpoint under a root (the pages)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .run_folder import default_checkpoints_root, read_history, read_json, read_status

#: what a run trains on: slices, slices with their neighbours as channels, or 3D patches
KINDS = ("2D", "2.5D", "3D")


def config_kind(config: dict) -> str:
    """ "3D", "2.5D" or "2D" for a configuration in ``RunConfig.to_dict()`` form (config.json).

    3D: the model is registered with ``spatial_dims`` 3 (a name the registry does not know
    counts as 3D when ``data.patch_size`` is set); 2.5D: a slice model fed
    ``data.context_slices`` > 1 neighbouring slices; else 2D.
    """
    from ..models.registry import MODELS

    model, data = (
        config.get(k) if isinstance(config.get(k), dict) else {} for k in ("model", "data")
    )
    spec = MODELS.get(str(model.get("name", "unet")))
    volumetric = spec.spatial_dims == 3 if spec else data.get("patch_size") is not None
    if volumetric:
        return "3D"
    context = data.get("context_slices") or 1
    return "2.5D" if isinstance(context, int) and context > 1 else "2D"


def run_kind(run_dir: str | Path) -> str | None:
    """The kind of the run in ``run_dir`` from its config.json (None: missing or unreadable)."""
    config = read_json(Path(run_dir) / "config.json")
    return config_kind(config) if isinstance(config, dict) else None


@dataclass
class RunInfo:
    """One run folder as the dashboard lists it."""

    name: str
    run_dir: Path
    state: str
    epoch: int
    epochs: int | None
    best_val_dice: float | None
    updated_at: str | None
    error: str | None
    has_best: bool
    has_last: bool
    kind: str | None = None  # "2D", "2.5D" or "3D" (config_kind); None: config.json unreadable


def list_runs(checkpoints_root: str | Path | None = None) -> list[RunInfo]:
    """Run folders (holding config.json) under the root, most recently updated first."""
    root = Path(checkpoints_root) if checkpoints_root else default_checkpoints_root()
    if not root.is_dir():
        return []
    runs = []
    for run_dir in root.iterdir():
        if not run_dir.is_dir() or not (run_dir / "config.json").is_file():
            continue
        status = read_status(run_dir)
        dices = [r.get("val_dice_mean") for r in read_history(run_dir)]
        dices = [d for d in dices if isinstance(d, (int, float))]
        runs.append(
            RunInfo(
                name=run_dir.name,
                run_dir=run_dir,
                state=str(status.get("state", "unknown")),
                epoch=int(status.get("epoch") or 0),
                epochs=status.get("epochs"),
                best_val_dice=max(dices) if dices else None,
                updated_at=status.get("updated_at"),
                error=status.get("error"),
                has_best=(run_dir / "best.pth").is_file(),
                has_last=(run_dir / "last.pth").is_file(),
                kind=run_kind(run_dir),
            )
        )
    runs.sort(key=lambda r: (r.updated_at or "", r.name), reverse=True)
    return runs


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
