"""The tracker's data for the Train page: per-step curves, machine use, and the table of runs
with their settings, best results, notes and tags. Pure functions to frames and Altair charts."""

from __future__ import annotations

import math
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

#: at most this many points per step chart (a 100-epoch run of 137 steps has 13,700 steps)
MAX_POINTS = 2000


def steps_frame(steps: list[dict]) -> pd.DataFrame:
    """Step records (``runs.step_log``) -> columns epoch, step, x (epochs done: (epoch - 1) +
    step / steps_per_epoch, so epoch boundaries fall on whole numbers), loss, lr and machine
    use; evenly thinned to ``MAX_POINTS`` rows (the last row always kept)."""
    if not steps:
        return pd.DataFrame(columns=["epoch", "step", "x", "loss", "lr"])
    df = pd.DataFrame(steps)
    per_epoch = pd.to_numeric(df.get("steps_per_epoch"), errors="coerce").fillna(0)
    per_epoch = per_epoch.where(per_epoch > 0, df.groupby("epoch")["step"].transform("max"))
    df["x"] = df["epoch"] - 1 + df["step"] / per_epoch
    logged = len(df)
    if len(df) > MAX_POINTS:
        keep = np.unique(np.r_[np.linspace(0, len(df) - 1, MAX_POINTS).astype(int), len(df) - 1])
        df = df.iloc[keep]
    df = df.reset_index(drop=True)
    df.attrs["logged"] = logged  # the steps before thinning
    return df


def step_loss_chart(df: pd.DataFrame, smoothing: float, log_y: bool) -> alt.Chart:
    """Training loss per step over epochs (fractional), raw faint and smoothed on top."""
    from dashboard.helpers.runs import smooth

    d = df[["x", "epoch", "step", "loss"]].dropna().copy()
    d["smoothed"] = smooth(d["loss"], smoothing).to_numpy()
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    x = alt.X("x:Q", title="epoch", axis=alt.Axis(format="~g"))
    base = alt.Chart(d).encode(x=x)
    raw = base.mark_line(opacity=0.3, color="#4fb3bf").encode(
        y=alt.Y("loss:Q", scale=scale, title="train loss per step")
    )
    smoothed = base.mark_line(strokeWidth=2, color="#4fb3bf").encode(
        y=alt.Y("smoothed:Q", scale=scale), tooltip=["epoch", "step", "loss"]
    )
    return (raw + smoothed).properties(height=260, title=f"Loss per step ({len(d)} points)")


def lr_chart(df: pd.DataFrame) -> alt.Chart | None:
    """Learning rate per step (log scale); None without values."""
    d = df[["x", "epoch", "step", "lr"]].dropna() if "lr" in df else pd.DataFrame()
    d = d[d["lr"] > 0] if not d.empty else d
    if d.empty:
        return None
    return (
        alt.Chart(d)
        .mark_line(color="#f3a712", interpolate="step-after")
        .encode(
            x=alt.X("x:Q", title="epoch", axis=alt.Axis(format="~g")),
            y=alt.Y(
                "lr:Q",
                scale=alt.Scale(type="log"),
                title="learning rate",
                axis=alt.Axis(format=".1e"),
            ),
            tooltip=["epoch", "step", alt.Tooltip("lr:Q", format=".3e")],
        )
        .properties(height=260, title="Learning rate per step")
    )


MACHINE_CURVES = {
    "cpu_pct": "CPU (all cores)",
    "ram_pct": "RAM",
    "gpu_pct": "GPU use",
    "gpu_mem_pct": "GPU memory",
}


def machine_frame(df: pd.DataFrame) -> pd.DataFrame:
    """The machine samples of a steps frame as percentages: columns x, curve, percent."""
    d = df.copy()
    if "ram_used_mb" in d:
        d["ram_pct"] = 100 * d["ram_used_mb"] / d["ram_total_mb"]
    if "gpu_mem_mb" in d:
        d["gpu_mem_pct"] = 100 * d["gpu_mem_mb"] / d["gpu_mem_total_mb"]
    present = [c for c in MACHINE_CURVES if c in d]
    if not present:
        return pd.DataFrame(columns=["x", "curve", "percent"])
    long = d.melt("x", present, "curve", "percent").dropna()
    long["curve"] = long["curve"].map(MACHINE_CURVES)
    return long


def machine_chart(df: pd.DataFrame) -> alt.Chart | None:
    """CPU, RAM (and GPU use and memory) in percent over the run; None without samples."""
    long = machine_frame(df)
    if long.empty:
        return None
    return (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(
            x=alt.X("x:Q", title="epoch", axis=alt.Axis(format="~g")),
            y=alt.Y("percent:Q", scale=alt.Scale(domain=[0, 100]), title="%"),
            color=alt.Color("curve:N", legend=alt.Legend(orient="top", title=None)),
            tooltip=["curve", alt.Tooltip("percent:Q", format=".0f"), "x"],
        )
        .properties(height=260, title="Machine")
    )


def sample_epochs(run_dir: Path) -> dict[int, Path]:
    """epoch -> samples/epoch_<N>.png of a run, by epoch."""
    found = {}
    for path in (Path(run_dir) / "samples").glob("epoch_*.png"):
        digits = path.stem.rpartition("_")[2]
        if digits.isdigit():
            found[int(digits)] = path
    return dict(sorted(found.items()))


def runs_overview(root: Path) -> pd.DataFrame:
    """One row per run folder under ``root``: name, state, kind, the settings that tell runs
    apart (model, loss, optimizer, lr, batch, size), epochs, best val Dice and its epoch, tags,
    notes and last update; newest first."""
    from ctseg_core.runs.listing import list_runs
    from ctseg_core.runs.notes import read_notes
    from ctseg_core.runs.run_folder import read_history, read_json

    rows = []
    for r in list_runs(root):
        cfg = read_json(r.run_dir / "config.json") or {}
        model, data, train = (cfg.get(k) or {} for k in ("model", "data", "train"))
        dices = [(h.get("val_dice_mean"), h.get("epoch")) for h in read_history(r.run_dir)]
        dices = [d for d in dices if isinstance(d[0], (int, float))]
        best = max(dices, default=(None, None))
        notes = read_notes(r.run_dir)
        size = data.get("patch_size") or data.get("target_size")
        rows.append({
            "run": r.name, "state": r.state, "kind": r.kind or "?",
            "model": model.get("name"), "loss": train.get("loss"),
            "optimizer": train.get("optimizer"), "lr": train.get("lr"),
            "batch": data.get("batch_size"),
            "size": " x ".join(map(str, size)) if isinstance(size, list) else None,
            "epochs": f"{r.epoch} / {r.epochs if r.epochs is not None else '?'}",
            "best val Dice": None if best[0] is None else round(best[0], 4),
            "best epoch": best[1], "tags": ", ".join(notes["tags"]), "notes": notes["notes"],
            "updated (UTC)": (r.updated_at or "").replace("T", " ").split("+")[0],
        })  # fmt: skip
    return pd.DataFrame(rows)


def _text(value) -> str:
    """A table cell as the text a filter looks in: "" for a missing value."""
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "" if missing or value is pd.NA else str(value)


def filter_runs(df: pd.DataFrame, text: str = "", tags: list[str] = ()) -> pd.DataFrame:
    """Rows whose any column contains ``text`` (case-insensitive) and that carry every tag."""
    if df.empty:
        return df
    keep = pd.Series(True, index=df.index)
    if text.strip():
        needle = text.strip().lower()
        # cell by cell: pandas 3's astype(str) keeps a missing number (a run's empty best
        # Dice) as NaN, which " ".join refused (found by a review)
        joined = df.apply(lambda row: " ".join(_text(v) for v in row), axis=1).str.lower()
        keep &= joined.str.contains(needle, regex=False)
    for tag in tags:
        keep &= df["tags"].str.split(", ").apply(lambda have, t=tag: t in have)
    return df[keep]
