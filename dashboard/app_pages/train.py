"""Train: a form that starts, stops and resumes the shared training job; a live view of run folders.

The live view reads status.json and history.jsonl, so runs started from the CLI or torchrun show
up and update exactly like runs started here.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import streamlit as st

from ctseg_core.device import resolve_device
from ctseg_core.runs.run_folder import ACTIVE_STATES
from ctseg_core.training.checks import check_run_config
from ctseg_core.training.memory import check_fits
from dashboard import cached, state
from dashboard.helpers import resume_form, run_actions, run_charts, run_table, runs
from dashboard.helpers.train_form import build_config

REFRESH_S = 1.5  # the view of an active run
WATCH_S = 3.0  # new runs and state changes

st.title("Train")


def controls(root: str) -> None:
    summary = cached.prepared_summary(root)
    present = [s for s, n in summary["coverage"].items() if n > 0]
    config = build_config(root, present)
    job = cached.training_job()
    if config is not None:
        try:
            check_fits(config, resolve_device(config.train.device))  # before any data is read
            reused = _empty_run(config.run_name)
            launch = uuid.uuid4().hex
            run_dir = job.start(
                check_run_config(config, check_data=True), cached.checkpoints_root(), state.who(),
                launch,
            )  # fmt: skip
            _started_here(run_dir, launch)
            name = state.plain(Path(run_dir).name)
            note = f" in the folder of the earlier {name}, which trained no epoch" if reused else ""
            st.toast(f"Started {name}{note}", icon=":material/play_arrow:")
        except Exception as exc:
            state.show_error(exc, "cannot start")
    if job.is_running:
        snap = job.snapshot()
        name = snap.run_dir.name if snap.run_dir else "a run"
        st.info(
            f"This server is training {state.plain(name)} ({state.plain(snap.state)}); Start is "
            "refused until it ends or is stopped. Every browser tab sees this same job.",
            icon=":material/directions_run:",
        )
    cols = st.columns([1, 3, 1, 1], vertical_alignment="bottom")
    with cols[0]:
        stop_job(job)
    resumable = {
        r.name: r
        for r in _list_runs()
        if r.has_last and r.state in ("stopped", "failed", "finished")
    }
    pick = cols[1].selectbox(
        "Run to continue",
        list(resumable),
        format_func=runs.run_titles(resumable.values()),
        index=None,
        placeholder="a stopped, failed or finished run",
        key=state.TRAIN_FORM.resume_pick,
        help="Continues from its last.pth with its own settings, up to the epoch on the right.",
    )
    until = minutes = cap = budget = None
    if pick is not None:
        run = resumable[pick]
        cap, budget = resume_form.run_train_settings(run.run_dir)
        start_until, start_minutes = resume_form.resume_defaults(run.epoch, run.state, cap, budget)
        until = cols[2].number_input(
            "until epoch",
            min_value=run.epoch + 1,
            value=start_until,  # the run's own cap (status.json's epochs may be a budget's plan)
            key=f"{state.TRAIN_FORM.resume_epochs}_{pick}",
        )
        if budget is not None:  # a run with a time budget keeps one
            minutes = cols[2].number_input(
                "within minutes (in all)",
                min_value=0.1,
                value=start_minutes,
                key=f"{state.TRAIN_FORM.resume_minutes}_{pick}",
                help="The run's time budget, its earlier training included.",
            )
        _resume_note(pick)
    if cols[3].button(
        "Resume", icon=":material/resume:", disabled=pick is None, key=state.TRAIN_FORM.resume
    ):
        launch = uuid.uuid4().hex
        try:
            # the form's values as they stand: config.json's, which may be newer than the
            # settings last.pth holds (a resume stopped before its first epoch ended)
            run_dir = job.resume(
                cached.checkpoints_root() / pick, epochs=int(until), started_by=state.who(),
                minutes=minutes, launch=launch,
            )  # fmt: skip
        except Exception as exc:
            state.show_error(exc, "cannot resume")
        else:
            _started_here(run_dir, launch)
            st.rerun()  # redraw Stop (enabled) and the watched run


def _empty_run(name: str) -> bool:
    """Whether ``name`` is a run that ended before completing an epoch (a new start under its
    name takes its folder)."""
    from ctseg_core.runs.run_folder import RUN_NAME, ended_before_training

    if not name or not RUN_NAME.fullmatch(name):
        return False
    return ended_before_training(cached.checkpoints_root() / name)


def _started_here(run_dir: Path, launch: str) -> None:
    """Watch ``run_dir``, and remember that this browser session launched it (``launch``: the
    job's id of this start or resume, which Stop checks: another user may start a run under the
    same name once this one ends)."""
    name = Path(run_dir).name
    st.session_state[state.TRAIN_RUN] = name
    st.session_state.setdefault(state.TRAIN_STARTED, set()).add(name)
    st.session_state.setdefault(state.TRAIN_LAUNCHES, set()).add(launch)


def _resume_note(name: str) -> None:
    """What Resume does to the run's own folder, and whose run it is when not this session's."""
    from ctseg_core.runs.run_folder import read_status

    owner = read_status(cached.checkpoints_root() / name).get("started_by")
    whose = f" (started by {state.plain(owner)})" if owner else ""
    if name not in st.session_state.get(state.TRAIN_STARTED, set()):
        st.caption(
            f"Resume trains {state.plain(name)}{whose} further in its own folder: its last.pth, "
            "best.pth (when validation improves), history and status are updated as it trains."
        )


def stop_job(job) -> None:
    """Stop for the server's job: at once for a run this session launched; for one another
    tab or another user launched, after a confirmation that says whose it is."""
    if not job.is_running:
        st.button("Stop", icon=":material/stop:", disabled=True, key=state.TRAIN_FORM.stop)
        return
    snap = job.snapshot()
    run_dir, launch = snap.run_dir, snap.launch
    name = run_dir.name
    # keyed per start: a click from a page drawn for another run (or another start of a run
    # under this name) must not land on this one
    if launch in st.session_state.get(state.TRAIN_LAUNCHES, set()):
        if st.button("Stop", icon=":material/stop:", key=f"{state.TRAIN_FORM.stop}_{launch}"):
            job.stop(by=state.who(), run_dir=run_dir, launch=launch)
            st.toast("Stopping after the current step …")
        return
    from ctseg_core.runs.run_folder import read_status

    owner = read_status(run_dir).get("started_by") or "someone"
    with st.popover("Stop", icon=":material/stop:"):
        shown = state.plain(name)
        st.markdown(f"**{shown}** was started by {state.plain(owner)}, not from this browser tab.")
        if st.button(f"Stop {shown}", type="primary", key=f"{state.TRAIN_FORM.stop}_ok_{launch}"):
            job.stop(by=state.who(), run_dir=run_dir, launch=launch)
            st.toast(f"Stopping {shown} after the current step …")


def _list_runs():
    from ctseg_core.runs.listing import list_runs

    return list_runs(cached.checkpoints_root())


def _eta(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


@st.fragment(run_every=REFRESH_S)
def live_view(run_name: str, smoothing: float, log_y: bool) -> None:
    """The view of an active run, re-read from its folder every REFRESH_S seconds."""
    run_view(run_name, smoothing, log_y)


@st.fragment
def still_view(run_name: str, smoothing: float, log_y: bool) -> None:
    """The view of an ended run (no timer: nothing changes until the run list does)."""
    run_view(run_name, smoothing, log_y)


@st.fragment(run_every=WATCH_S)
def run_list_watcher(shown: tuple) -> None:
    """Reruns the page when a run appears (e.g. from the CLI) or a run changes state."""
    if tuple((r.name, r.state) for r in _list_runs()) != shown:
        st.rerun(scope="app")


def stop_button(run_dir: Path) -> None:
    """Stop for an active run this server did not start (the CLI, torchrun, another server):
    a stop request in its folder, which the trainer looks for about once a second."""
    from ctseg_core.runs.run_folder import read_status
    from ctseg_core.runs.stop_request import request_stop, stop_requested

    job = cached.training_job()
    if job.is_running and job.snapshot().run_dir == run_dir:
        return  # this server's own run: the Stop above ends it directly
    if stop_requested(run_dir):
        st.caption("Stop requested: the run ends before its next batch once it sees the request.")
        return
    status = read_status(run_dir)
    owner = status.get("started_by") or "someone"
    epoch = int(status.get("epoch") or 0)
    kept = (
        f"last.pth keeps epoch {epoch}, its last completed one"
        if epoch
        else "no epoch has completed yet, so it keeps no checkpoint"
    )
    with st.popover("Stop this run", icon=":material/stop:"):
        st.write(
            f"**{state.plain(run_dir.name)}** was started by {state.plain(owner)}, elsewhere "
            f"(the CLI, torchrun or another server). It stops before its next batch; {kept}."
        )
        label = f"Stop {state.plain(run_dir.name)}"
        if st.button(label, type="primary", key=state.TRAIN_FORM.stop_elsewhere):
            request_stop(run_dir, by=f"{state.who()} on {socket.gethostname()}")
            st.toast("Stop requested", icon=":material/stop:")


def run_view(run_name: str, smoothing: float, log_y: bool) -> None:
    """State, progress and curves of one run, read from its folder."""
    from ctseg_core.runs.run_folder import read_history, read_status

    run_dir = cached.checkpoints_root() / run_name
    status = read_status(run_dir)
    history = read_history(run_dir)
    epochs = status.get("epochs") or 0
    epoch = int(status.get("epoch") or 0)
    steps = status.get("steps_per_epoch") or 0
    step = int(status.get("step") or 0)
    run_state = status.get("state", "unknown")
    active = run_state in ACTIVE_STATES
    loss = status.get("loss")
    if loss is None and history:
        loss = history[-1].get("train_loss")
    cols = st.columns(5)
    cols[0].metric("State", state.plain(run_state))
    cols[1].metric("Epoch", f"{epoch} / {epochs or '?'}")
    cols[2].metric("Step", f"{step} / {steps or '?'}" if active else "—")
    cols[3].metric("ETA", _eta(status.get("eta_s")) if active else "—")
    cols[4].metric("Loss", "—" if loss is None else f"{loss:.4f}")
    done = (epoch + (step / steps if steps else 0)) / epochs if epochs else 0.0
    st.progress(min(max(done, 0.0), 1.0), text=state.plain(status.get("message") or ""))
    if status.get("started_by"):
        started = f"{status['started_by']} on {status.get('host') or '?'}"
        st.caption(f"Started by {state.plain(started)}")
    if status.get("error"):
        st.error(state.plain(f"{run_name}: {status['error']}"))
    if status.get("warning"):
        state.show_warning(f"{run_name}: {status['warning']}", icon=":material/warning:")
    if active:
        stop_button(run_dir)
    elif run_state in ("finished", "failed", "stopped"):
        run_actions.rename_popover(run_dir)
    run_table.notes_and_delete(run_dir, active)
    if run_state in ("failed", "stopped") and _empty_run(run_name):
        run_actions.empty_run(run_dir)
        return
    run_table.step_charts(run_dir, smoothing, log_y)  # moves while an epoch runs
    if not history:
        st.caption("No finished epoch yet; the epoch curves appear after the first one.")
        return
    specs = run_charts.epoch_chart_specs(run_dir, smoothing, log_y)  # built once per version
    left, right = st.columns(2)
    heat_col, sample_col = st.columns(2)
    for where, name in ((left, "loss"), (right, "dice"), (heat_col, "heat")):
        if specs[name] is not None:
            where.vega_lite_chart(specs[name], width="stretch")
    run_table.samples(run_dir, sample_col)


def watch() -> None:
    st.subheader("Live view")
    all_runs = _list_runs()
    run_list_watcher(tuple((r.name, r.state) for r in all_runs))
    if not all_runs:
        if not cached.show_runs_root_problem():  # "no run yet" only when it is so
            st.caption(f"No run folders under {state.plain(cached.checkpoints_root())} yet.")
        return
    names = [r.name for r in all_runs]
    if st.session_state.get(state.TRAIN_RUN) not in names:
        st.session_state[state.TRAIN_RUN] = names[0]  # the most recently updated
    cols = st.columns([2, 2, 1])

    def picked() -> None:
        st.session_state[state.TRAIN_RUN] = st.session_state[state.TRAIN_FORM.run_pick]

    # The watched run lives in its own key: the run list changes under the widget (new runs,
    # new order), which must not move the selection.
    run_name = st.session_state[state.TRAIN_RUN]
    st.session_state[state.TRAIN_FORM.run_pick] = run_name
    cols[0].selectbox(
        "Run", names, key=state.TRAIN_FORM.run_pick, on_change=picked,
        format_func=runs.run_titles(all_runs),
    )  # fmt: skip
    smoothing = cols[1].slider("Smoothing", 0.0, 0.95, 0.6, 0.05, key=state.TRAIN_FORM.smoothing)
    log_y = cols[2].toggle("Log y", False, key=state.TRAIN_FORM.log_y)
    run_state = next(r.state for r in all_runs if r.name == run_name)
    view = live_view if run_state in ACTIVE_STATES else still_view
    view(run_name, smoothing, log_y)


def compare() -> None:
    all_runs = _list_runs()
    if len(all_runs) < 2:
        return
    st.subheader("Compare runs")
    names = [r.name for r in all_runs]
    cols = st.columns([3, 1, 1])
    default = state.widget_default(state.TRAIN_FORM.compare, names[:2])  # set on a rename
    chosen = cols[0].multiselect(
        "Runs", names, default=default, key=state.TRAIN_FORM.compare,
        format_func=runs.run_titles(all_runs),
    )  # fmt: skip
    metric = cols[1].selectbox(
        "Curve", ["val_dice_mean", "val_loss", "train_loss", "lr"], key=state.TRAIN_FORM.metric
    )
    log_y = cols[2].toggle("Log y", False, key=state.TRAIN_FORM.compare_log)
    spec = run_charts.compare_spec([cached.checkpoints_root() / n for n in chosen], metric, log_y)
    if spec is None:
        st.caption("The chosen runs have no finished epoch yet.")
    else:
        st.vega_lite_chart(spec, width="stretch")


def main() -> None:
    renamed = st.session_state.pop(state.TRAIN_RENAMED, None)
    if renamed:  # before the widgets that may name the run are drawn
        state.follow_rename(*renamed)
        old, new = (Path(p).name for p in renamed)
        st.toast(state.plain(f"Renamed {old} to {new}"), icon=":material/edit:")
    root = state.dataset_root()
    if not root:
        st.info("Choose a dataset on Home first.")
        return
    st.caption(state.plain(f"Dataset: {root} · runs are written to {cached.checkpoints_root()}"))
    state.guarded(lambda: controls(root), "training controls")
    state.guarded(watch, "live view")
    state.guarded(run_table.runs_table, "runs table")
    state.guarded(compare, "compare runs")


state.guarded(main, "train")
