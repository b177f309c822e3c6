"""Run folders for the pages: a table of runs, histories as DataFrames, and their Altair charts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from ctseg_core.labels import group_of, is_structure


def runs_table(root: Path) -> pd.DataFrame:
    """One row per run folder under ``root``: name, state, epoch, best val Dice, last update."""
    from ctseg_core.runs.listing import list_runs

    rows = [
        {
            "run": r.name,
            "kind": r.kind or "?",
            "state": r.state,
            "epoch": f"{r.epoch} / {r.epochs if r.epochs is not None else '?'}",
            "best val Dice": None if r.best_val_dice is None else round(r.best_val_dice, 4),
            "checkpoints": ", ".join(
                n for n, ok in (("best", r.has_best), ("last", r.has_last)) if ok
            ),
            "updated (UTC)": (r.updated_at or "").replace("T", " ").split("+")[0],
            "error": r.error or "",
        }
        for r in list_runs(root)
    ]
    return pd.DataFrame(rows)


def run_title(name: str, kind: str | None) -> str:
    """A run as the pickers show it: "name (3D)"; the bare name when its kind is unknown."""
    return f"{name} ({kind})" if kind else name


def checkpoint_title(path: str | Path) -> str:
    """A run's checkpoint as the pickers show it: "<run> (3D) / best.pth"."""
    from ctseg_core.runs.listing import run_kind

    run_dir = Path(path).parent
    return f"{run_title(run_dir.name, run_kind(run_dir))} / {Path(path).name}"


def run_titles(runs) -> Callable[[str], str]:
    """A ``format_func`` for a select of run names: each with its kind (``RunInfo.kind``)."""
    kinds = {r.name: r.kind for r in runs}
    return lambda name: run_title(name, kinds.get(name))


def checkpoint_titles(checkpoints: dict[str, str],
                      models: dict[str, str] | None = None) -> Callable[[str], str]:  # fmt: skip
    """A ``format_func`` for a select of checkpoint labels "<run> / <file>" (``label -> path``,
    ``cached.all_checkpoints``): "<run> (3D) / <file>"; an nnU-Net model's option (``models``:
    option -> label, ``cached_models.model_titles``) as its label, "nnU-Net 3d_fullres: Dataset123_X
    (folds 0,1)". Other options are shown as they are."""
    from ctseg_core.runs.listing import run_kind

    kinds: dict[Path, str | None] = {}
    for path in checkpoints.values():
        run_dir = Path(path).parent
        if run_dir not in kinds:
            kinds[run_dir] = run_kind(run_dir)

    def title(label: str) -> str:
        if models and label in models:
            return models[label]
        path = checkpoints.get(label)
        kind = kinds.get(Path(path).parent) if path else None
        run, sep, file = label.rpartition(" / ")
        return f"{run_title(run, kind)}{sep}{file}" if kind and sep else label

    return title


def history_frame(history: list[dict]) -> pd.DataFrame:
    """Epoch records -> a DataFrame with epoch, train_loss, val_loss, val_dice_mean, lr."""
    columns = ["epoch", "train_loss", "val_loss", "val_dice_mean", "lr", "seconds"]
    df = pd.DataFrame([{c: rec.get(c) for c in columns} for rec in history], columns=columns)
    return df.apply(pd.to_numeric, errors="coerce")


def smooth(values: pd.Series, weight: float) -> pd.Series:
    """TensorBoard-style exponential moving average, bias-corrected; weight 0 = raw."""
    if weight <= 0:
        return values
    out, last, norm = [], 0.0, 0.0
    for v in values:
        if v is None or not np.isfinite(v):
            out.append(np.nan)
            continue
        last = last * weight + (1 - weight) * v
        norm = norm * weight + (1 - weight)
        out.append(last / norm)
    return pd.Series(out, index=values.index)


def loss_chart(df: pd.DataFrame, smoothing: float, log_y: bool, run: str = "") -> alt.Chart:
    """Train and validation loss over epochs: smoothed lines over the raw curves drawn faint."""
    long = df.melt("epoch", ["train_loss", "val_loss"], "curve", "loss").dropna()
    long["smoothed"] = np.nan
    for curve in ("train_loss", "val_loss"):
        sel = long["curve"] == curve
        long.loc[sel, "smoothed"] = smooth(long.loc[sel, "loss"], smoothing).to_numpy()
    scale = alt.Scale(type="log") if log_y else alt.Scale(zero=False)
    base = alt.Chart(long).encode(
        x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
        color=alt.Color(
            "curve:N",
            scale=alt.Scale(domain=["train_loss", "val_loss"], range=["#4fb3bf", "#f3a712"]),
            legend=alt.Legend(orient="top", title=None),
        ),
    )
    raw = base.mark_line(opacity=0.25, point=alt.OverlayMarkDef(opacity=0.25)).encode(
        y=alt.Y("loss:Q", scale=scale, title="loss")
    )
    smoothed = base.mark_line(strokeWidth=2.5).encode(
        y=alt.Y("smoothed:Q", scale=scale), tooltip=["epoch", "curve", "loss", "smoothed"]
    )
    return (raw + smoothed).properties(height=340, title=f"Loss {run}".strip())


def dice_chart(df: pd.DataFrame) -> alt.Chart | None:
    """Mean validation Dice over epochs with the best epoch marked."""
    d = df[["epoch", "val_dice_mean"]].dropna()
    if d.empty:
        return None
    best = d.loc[[d["val_dice_mean"].idxmax()]]
    line = (
        alt.Chart(d)
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y("val_dice_mean:Q", title="val Dice (mean)", scale=alt.Scale(domain=[0, 1])),
            tooltip=["epoch", "val_dice_mean"],
        )
    )
    star = (
        alt.Chart(best)
        .mark_point(shape="diamond", size=220, filled=True, color="#f3a712")
        .encode(x="epoch:Q", y="val_dice_mean:Q", tooltip=["epoch", "val_dice_mean"])
    )
    label = (
        alt.Chart(best)
        .mark_text(dy=-14, color="#f3a712")
        .encode(x="epoch:Q", y="val_dice_mean:Q", text=alt.Text("val_dice_mean:Q", format=".3f"))
    )
    return (line + star + label).properties(height=340, title="Validation Dice (best marked)")


def dice_heatmap(history: list[dict]) -> alt.Chart | None:
    """Per-structure validation Dice over epochs (structures absent from validation left out)."""
    rows = [
        {"epoch": rec.get("epoch"), "structure": name, "dice": value}
        for rec in history
        for name, value in (rec.get("val_dice") or {}).items()
        if value is not None
    ]
    if not rows:
        return None
    df = pd.DataFrame(rows)
    df["group"] = df["structure"].map(lambda s: group_of(s) if is_structure(s) else None)
    order = df.groupby("structure")["dice"].last().sort_values(ascending=False).index.tolist()
    height = max(120, 18 * len(order))  # a readable name on every row (none dropped)
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X("epoch:O"),
            y=alt.Y(
                "structure:N",
                sort=order,
                title=None,
                axis=alt.Axis(labelOverlap=False, labelLimit=200),
            ),
            color=alt.Color(
                "dice:Q", scale=alt.Scale(domain=[0, 1], scheme="viridis"), title="Dice"
            ),
            tooltip=["structure", "group", "epoch", alt.Tooltip("dice:Q", format=".3f")],
        )
        .properties(height=height, title="Per-structure validation Dice")
    )


def compare_chart(histories: dict[str, list[dict]], metric: str, log_y: bool) -> alt.Chart | None:
    """One metric of several runs overlaid, one colour per run."""
    frames = []
    for name, history in histories.items():
        df = history_frame(history)[["epoch", metric]].dropna()
        df["run"] = name
        frames.append(df)
    if not frames or all(f.empty for f in frames):
        return None
    data = pd.concat(frames)
    scale = alt.Scale(type="log") if log_y and metric != "val_dice_mean" else alt.Scale(zero=False)
    return (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", axis=alt.Axis(tickMinStep=1, format="d")),
            y=alt.Y(f"{metric}:Q", scale=scale, axis=alt.Axis(format=".3~g")),
            # a categorical palette: the theme's default shades one hue per run
            color=alt.Color(
                "run:N", scale=alt.Scale(scheme="tableau10"), legend=alt.Legend(orient="top")
            ),
            tooltip=["run", "epoch", metric],
        )
        .properties(height=300)
    )
