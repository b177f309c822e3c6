"""Reading run folders for the pages: a table of runs, histories as DataFrames, curve charts."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd


def _best_dice(history: list[dict]) -> tuple[float | None, int | None]:
    scored = [(h.get("val_dice_mean"), h.get("epoch")) for h in history]
    scored = [(d, e) for d, e in scored if d is not None]
    if not scored:
        return None, None
    return max(scored, key=lambda t: t[0])


def runs_table(root: Path) -> pd.DataFrame:
    """One row per run folder under ``root``: name, state, epoch, best val Dice, last update."""
    from ctseg_core.training.run_folder import list_runs, read_history, read_status

    rows = []
    root = Path(root)
    if not root.is_dir():
        return pd.DataFrame()
    for run_dir in list_runs(root):
        run_dir = Path(run_dir)
        status = read_status(run_dir) or {}
        history = read_history(run_dir) or []
        best, best_epoch = _best_dice(history)
        updated = status.get("updated") or status.get("time")
        if not isinstance(updated, str):
            mtime = (
                (run_dir / "status.json").stat().st_mtime
                if (run_dir / "status.json").exists()
                else run_dir.stat().st_mtime
            )
            updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))
        rows.append(
            {
                "run": run_dir.name,
                "state": status.get("state", "unknown"),
                "epoch": f"{status.get('epoch', len(history))} / {status.get('epochs', '?')}",
                "best val Dice": None if best is None else round(float(best), 4),
                "best epoch": best_epoch,
                "updated": updated,
                "error": status.get("error") or "",
            }
        )
    return pd.DataFrame(rows)
