"""The Train page's tracker widgets: the runs table (sortable, filterable), notes and tags,
delete with a confirmation, the per-step and machine curves, and the samples of any epoch."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import cached, state
from dashboard.helpers import run_actions, run_charts, tracker


def runs_table() -> None:
    """Every run with its settings and best results; a click on a header sorts it."""
    df = run_charts.runs_overview(cached.checkpoints_root())
    if df.empty:
        return
    st.subheader("Runs")
    k = state.TRAIN_FORM
    cols = st.columns([2, 2])
    text = cols[0].text_input("Filter", key=k.runs_filter, placeholder="any text: name, model …")
    all_tags = sorted({t for tags in df["tags"] for t in tags.split(", ") if t})
    tags = cols[1].multiselect("Tags", all_tags, key=k.runs_tags, placeholder="all runs")
    shown = tracker.filter_runs(df, text, tags)
    st.caption(f"{len(shown)} of {len(df)} runs · click a column header to sort")
    st.dataframe(
        shown, hide_index=True, width="stretch", key=k.runs_table,
        column_config={
            "lr": st.column_config.NumberColumn(format="%.2e"),
            "best val Dice": st.column_config.ProgressColumn(min_value=0, max_value=1,
                                                             format="%.4f"),
            "notes": st.column_config.TextColumn(width="medium"),
        },
    )  # fmt: skip


def notes_and_delete(run_dir: Path, active: bool) -> None:
    """Notes and tags of the watched run (saved on a click), and Delete after a confirmation;
    an active run cannot be deleted (the library refuses it too, wherever it trains)."""
    from ctseg_core.runs.notes import delete_run, read_notes, write_notes

    name, k = run_dir.name, state.TRAIN_FORM
    this = f"{name}_{run_actions.drawn(run_dir)}"  # a stale page's click lands on no other run
    notes_of = f"{name}_{run_actions.notes_key(run_dir, active)}"  # the same through a resume
    kept = read_notes(run_dir)
    with st.popover("Notes and tags", icon=":material/sticky_note_2:"):
        notes = st.text_area("Notes", kept["notes"], key=f"{k.notes}_{notes_of}", max_chars=10_000)
        tags = st.text_input("Tags (comma-separated)", ", ".join(kept["tags"]),
                             key=f"{k.tags}_{notes_of}", max_chars=400)  # fmt: skip
        if st.button("Save notes", key=f"{k.notes_save}_{notes_of}"):
            try:
                write_notes(run_dir, notes, tags)
            except Exception as exc:
                state.show_error(exc, "cannot save the notes")
            else:
                st.toast(f"Saved the notes of {state.plain(name)}", icon=":material/save:")
    if active:
        return
    with st.popover("Delete", icon=":material/delete:"):
        st.write(
            f"Delete **{state.plain(name)}** with all its checkpoints, history and evaluations? "
            "This cannot be undone."
        )
        if st.button(f"Delete {state.plain(name)}", type="primary", key=f"{k.delete}_{this}"):
            try:
                delete_run(run_dir)
            except Exception as exc:
                state.show_error(exc, "cannot delete")
                return
            st.session_state.pop(state.TRAIN_RUN, None)
            st.toast(f"Deleted {state.plain(name)}", icon=":material/delete:")
            st.rerun(scope="app")


def step_charts(run_dir: Path, smoothing: float, log_y: bool) -> bool:
    """Loss and learning rate per step and the machine's use; False when no step is logged."""
    df = cached.steps_frame(run_dir)
    if df.empty:
        return False
    last = df.iloc[-1]
    st.caption(
        f"{df.attrs.get('logged', len(df))} steps logged · last: epoch {int(last['epoch'])}, step {int(last['step'])}, "
        f"loss {last['loss']:.4f}",
        help="steps.jsonl of the run, appended every few seconds while it trains",
    )
    specs = run_charts.step_chart_specs(run_dir, smoothing, log_y)
    for where, name in zip(st.columns(3), ("loss", "lr", "machine"), strict=True):
        if specs[name] is not None:
            where.vega_lite_chart(specs[name], width="stretch")
    return True


def samples(run_dir: Path, where) -> None:
    """The sample predictions of any epoch (the last by default) in the column ``where``."""
    found = tracker.sample_epochs(run_dir)
    if not found:
        return
    epochs = list(found)
    epoch = epochs[-1]
    if len(epochs) > 1:
        epoch = where.select_slider(
            "Sample predictions of epoch", epochs, value=epochs[-1],
            key=f"{state.TRAIN_FORM.sample_epoch}_{run_dir.name}_{epochs[-1]}",
        )  # fmt: skip
    where.image(str(found[epoch]), caption=f"Sample predictions: epoch {epoch}")
