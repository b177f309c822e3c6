"""The Train page's charts and runs table, cached per version of the run files they are read from.

A live view reruns every 1.5 s in every open tab, and Altair spends ~0.1 s of CPU building and
validating each chart: on 2 cores beside a training run, that made every click wait. Here each
chart is built once per file version (and smoothing / log-y) and kept as the Vega-Lite spec that
``st.altair_chart`` would send; pages draw it with ``st.vega_lite_chart``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import cached
from dashboard.cached import vega_lite_spec as _spec


def _file_stamp(path: Path) -> tuple | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


@st.cache_data(max_entries=32, show_spinner=False)
def _epoch_loss_spec(run_dir: str, stamp, smoothing: float, log_y: bool) -> dict | None:
    from ctseg_core.runs.run_folder import read_history
    from dashboard.helpers import runs

    history = read_history(Path(run_dir))
    return (
        _spec(runs.loss_chart(runs.history_frame(history), smoothing, log_y)) if history else None
    )


@st.cache_data(max_entries=32, show_spinner=False)
def _epoch_dice_specs(run_dir: str, stamp) -> tuple:
    from ctseg_core.runs.run_folder import read_history
    from dashboard.helpers import runs

    history = read_history(Path(run_dir))
    if not history:
        return None, None
    return _spec(runs.dice_chart(runs.history_frame(history))), _spec(runs.dice_heatmap(history))


def epoch_chart_specs(run_dir: Path, smoothing: float, log_y: bool) -> dict:
    """{"loss", "dice", "heat": Vega-Lite spec or None} of a run's history.jsonl (see
    dashboard.helpers.runs), built once per version of the file, smoothing and log-y."""
    stamp = _file_stamp(Path(run_dir) / "history.jsonl")
    dice, heat = _epoch_dice_specs(str(run_dir), stamp)
    loss = _epoch_loss_spec(str(run_dir), stamp, float(smoothing), bool(log_y))
    return {"loss": loss, "dice": dice, "heat": heat}


@st.cache_data(max_entries=32, show_spinner=False)
def _step_loss_spec(run_dir: str, stamp, smoothing: float, log_y: bool) -> dict:
    from dashboard.helpers import tracker

    return _spec(tracker.step_loss_chart(cached.steps_frame(Path(run_dir)), smoothing, log_y))


@st.cache_data(max_entries=32, show_spinner=False)
def _step_side_specs(run_dir: str, stamp) -> tuple:
    from dashboard.helpers import tracker

    df = cached.steps_frame(Path(run_dir))
    return _spec(tracker.lr_chart(df)), _spec(tracker.machine_chart(df))


def step_chart_specs(run_dir: Path, smoothing: float, log_y: bool) -> dict:
    """{"loss", "lr", "machine": Vega-Lite spec or None} of a run's steps.jsonl (see
    dashboard.helpers.tracker); the run must have logged a step (``steps_frame`` not empty)."""
    stamp = _file_stamp(Path(run_dir) / "steps.jsonl")
    lr, machine = _step_side_specs(str(run_dir), stamp)
    loss = _step_loss_spec(str(run_dir), stamp, float(smoothing), bool(log_y))
    return {"loss": loss, "lr": lr, "machine": machine}


@st.cache_data(max_entries=4, show_spinner=False)
def _runs_overview(root: str, stamp: tuple):
    from dashboard.helpers.tracker import runs_overview

    return runs_overview(Path(root))


def runs_overview(root: Path):
    """``tracker.runs_overview`` of the root, read again only when a run's files changed."""
    from ctseg_core.runs.listing import runs_stamp

    return _runs_overview(str(root), runs_stamp(root))


@st.cache_data(max_entries=16, show_spinner=False)
def _compare_spec(run_dirs: tuple, stamps: tuple, metric: str, log_y: bool) -> dict | None:
    from ctseg_core.runs.run_folder import read_history
    from dashboard.helpers import runs

    histories = {Path(d).name: read_history(Path(d)) for d in run_dirs}
    return _spec(runs.compare_chart(histories, metric, log_y))


def compare_spec(run_dirs: list[Path], metric: str, log_y: bool) -> dict | None:
    """The Vega-Lite spec of ``runs.compare_chart`` over the runs' histories (None: no finished
    epoch among them), built once per version of their history.jsonl files."""
    stamps = tuple(_file_stamp(Path(d) / "history.jsonl") for d in run_dirs)
    return _compare_spec(tuple(str(d) for d in run_dirs), stamps, metric, bool(log_y))
