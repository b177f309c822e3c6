"""Evaluate -> Explore: a worst case or a subject's row of the results opens Explore on that
subject, with the evaluated checkpoint, model or predictions folder as its prediction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from ctseg_core.labels import GROUPS, member_values
from dashboard import cached, state
from dashboard.helpers import evalcharts, viewer
from dashboard.pages_index import PAGE_FILES

#: structures a subject's row shows in 3D: its worst scored ones (each a reference and a
#: prediction surface; more makes the first view slow on a full-size CT)
MESH_STRUCTURES = 3
#: row height of the per-subject table in px, set rather than left to Streamlit's default so
#: the browser test finds a row on the grid's canvas from it
SUBJECT_ROW_PX = 35


def open_in_explore(
    info: dict, subject: str, structure: str | None, zoom: bool, mesh: list[str] | None = None
) -> None:
    """Switch to Explore on ``subject`` with this evaluation's prediction beside the reference.

    ``structure``: open at the axial slice with the most reference voxels of it (the middle
    slice when None or absent from the reference); ``zoom``: cropped to its bounding box and
    only it picked (else every structure of every group); ``mesh``: open the server slice view
    with its 3D view on, showing these structures (None leaves the viewer as the user had it).
    """
    root = info["root"]
    entry = cached.cached_subject(root, subject)
    z = entry.num_slices // 2
    box = None
    if structure is not None:
        # a merge (labels.MERGES): the slice with the most voxels of its members together
        members = member_values(structure)
        per_slice = np.isin(np.asarray(entry.labels), members).sum(axis=(1, 2))
        z = int(per_slice.argmax()) if per_slice.any() else z
        box = cached.structure_box_zxy(root, subject, members) if zoom else None
    st.session_state[state.EXPLORE_SUBJECT] = subject
    volume = cached.subject_volume_id(root, subject)  # as Explore names it
    viewer.show_volume_at(
        state.EXPLORE_VIEW, volume, "axial", z + 1,
        None if box is None else {"structure": structure, "box_zxy": box},
    )  # fmt: skip
    st.session_state[state.EXPLORE_PLANE] = "axial"
    # a merge is one choice: the reference's members and the prediction's merged value
    picked = [structure] if zoom and structure else []
    viewer.choose_structures(state.EXPLORE_STRUCTURES, picked)
    viewer.choose_structures(state.EXPLORE_VIEW.groups, list(GROUPS))
    if st.session_state.get(state.EXPLORE_VIEW.alpha, 1.0) <= 0:  # overlays hidden earlier
        st.session_state[state.EXPLORE_VIEW.alpha] = viewer.DEFAULT_ALPHA
    if mesh is not None:  # the 3D view lives in the server slice view
        st.session_state[state.EXPLORE_VIEWER] = "slices"
        st.session_state[state.EXPLORE_VIEW.show3d] = True
        if mesh:
            st.session_state[state.EXPLORE_VIEW.mesh_structures] = list(mesh)
        else:  # nothing scored: the 3D view's own default (the first structures)
            st.session_state.pop(state.EXPLORE_VIEW.mesh_structures, None)
    if info.get("folder"):  # Explore reads the folder's prediction of the subject
        st.session_state[state.EXPLORE_CHECKPOINT] = state.FOLDER_PREFIX + info["folder"]
    else:
        st.session_state[state.EXPLORE_CHECKPOINT] = info["checkpoint"] or "(none)"
    st.switch_page(PAGE_FILES["explore"])


def worst_case_link(results: pd.DataFrame, ranking: pd.DataFrame, info: dict) -> None:
    """A structure picker (worst first) and a button opening its worst subject, zoomed to it."""
    st.subheader("Open a worst case in Explore")
    cols = st.columns([3, 1], vertical_alignment="bottom")
    structure = cols[0].selectbox(
        "Structure (worst first)",
        list(ranking["structure"][::-1]) or sorted(results["structure"].unique()),
        key=state.EVAL_FORM.worst,
    )
    case = evalcharts.worst_case(results, structure) if structure else None
    if case is None:
        cols[0].caption("No scored subject for this structure.")
        return
    subject, dice = case
    cols[0].caption(
        f"Worst: {state.plain(subject)}" + ("" if np.isnan(dice) else f" (Dice {dice:.3f})")
        + " — opens at the axial slice with the most reference voxels of it, zoomed to it"
    )  # fmt: skip
    if cols[1].button("Open in Explore", icon=":material/open_in_new:", key=state.EVAL_FORM.open):
        open_in_explore(info, subject, structure, zoom=True)


def subject_rows(results: pd.DataFrame, info: dict) -> None:
    """The per-subject table, worst first; selecting a row opens that subject in Explore
    (slices at its worst structure, reference and prediction, and their surfaces in 3D)."""
    st.subheader("Per subject")
    st.caption(
        "Select a row to open the subject in Explore: its slices at the worst structure, the "
        "reference and this evaluation's prediction, and their surfaces in 3D."
    )
    table = evalcharts.subject_table(results)
    # a new key after each hand-over: the selection that opened Explore does not open it again
    # when this page is shown next
    key = f"{state.EVAL_FORM.subject_rows}_{st.session_state.get(state.EVAL_OPENED, 0)}"
    event = st.dataframe(
        table, hide_index=True, on_select="rerun", selection_mode="single-row", key=key,
        width="stretch", row_height=SUBJECT_ROW_PX,
    )  # fmt: skip
    rows = event.selection.rows if event is not None else []
    if not rows:
        return
    subject = str(table.iloc[rows[0]]["subject"])
    part = results[(results["subject"] == subject) & results["dice"].notna()]
    worst = list(part.sort_values("dice", kind="stable")["structure"][:MESH_STRUCTURES])
    st.session_state[state.EVAL_OPENED] = st.session_state.get(state.EVAL_OPENED, 0) + 1
    open_in_explore(info, subject, worst[0] if worst else None, zoom=False, mesh=worst)
