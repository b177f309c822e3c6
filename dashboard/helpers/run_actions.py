"""What the Train page offers for a run that has ended: rename it, or remove an empty one."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from ctseg_core.fileio import is_file
from dashboard import state


def drawn(run_dir: Path, settings: bool = True) -> str:
    """A widget-key part naming the run this page draws under its name: its folder's inode (a
    rename keeps it) and its config.json's (rewritten by a new start under the name). A click
    on a button keyed with it acts on that run alone: another run renamed into the name, or
    started under it since the page was drawn, draws other keys, and the click does nothing.
    ``settings`` False: the folder alone (``notes_key``)."""
    parts = []
    for path in (run_dir, run_dir / "config.json")[: 2 if settings else 1]:
        try:
            info = path.stat()
        except OSError:  # a folder gone or unreadable: nothing a stale click could match
            parts.append("0")
        else:
            parts.append(
                f"{info.st_ino}" if path == run_dir else f"{info.st_ino}.{info.st_mtime_ns}"
            )
    return "_".join(parts)


def notes_key(run_dir: Path, active: bool) -> str:
    """``drawn`` for the notes of a run: by its folder alone while it trains or once it has a
    last.pth (typed notes and their Save must survive its first checkpoint and a resume, which
    rewrites config.json; no new start can take such a folder), with config.json too for an
    empty run that has ended (a new start takes its folder: the earlier start's notes go)."""
    return drawn(run_dir, settings=not active and not is_file(run_dir / "last.pth"))


def empty_run(run_dir: Path) -> None:
    """A run that ended before completing an epoch: nothing to resume; its name can be used
    again, or the run removed after a confirmation."""
    from ctseg_core.runs.run_folder import remove_empty_run

    name = state.plain(run_dir.name)
    st.info(
        f"{name} ended before completing an epoch: it has no checkpoint to resume. Start a new "
        "run under the same name (it takes this folder) or remove this one.",
        icon=":material/info:",
    )
    with st.popover("Remove this run", icon=":material/delete:"):
        st.write(f"Remove the folder of **{name}**? It holds only its settings and status.")
        if st.button(
            f"Remove {name}",
            type="primary",
            key=f"{state.TRAIN_FORM.remove_empty}_{run_dir.name}_{drawn(run_dir)}",
        ):
            try:
                remove_empty_run(run_dir)
            except Exception as exc:
                state.show_error(exc, "cannot remove")
                return
            st.toast(f"Removed {name}", icon=":material/delete:")
            st.rerun(scope="app")


def rename_popover(run_dir: Path) -> None:
    """Rename for an ended run: whoever may remove a run may rename it. The library refuses an
    active run (also one trained elsewhere), a taken name and one that is not a folder name."""
    from ctseg_core.runs.run_folder import rename_run

    name = run_dir.name
    with st.popover("Rename", icon=":material/edit:"):
        new_name = st.text_input(
            "New name", value=name, max_chars=100, key=f"{state.TRAIN_FORM.rename_to}_{name}",
            help="Letters, digits, '.', '_', '-' and spaces. Its checkpoints and evaluations "
            "move with it; choices that name the old run point at the new one in this tab.",
        )  # fmt: skip
        # a button, not Enter: typing renames nothing (keys: no run name makes another's key)
        go = f"{state.TRAIN_FORM.rename_go}_{name}_{drawn(run_dir)}"  # this run's, as drawn
        if st.button("Rename", type="primary", key=go):
            try:
                new_dir = rename_run(run_dir, new_name.strip())
            except Exception as exc:
                state.show_error(exc, "cannot rename")
                return
            st.session_state[state.TRAIN_RENAMED] = (str(run_dir), str(new_dir))
            st.rerun(scope="app")
