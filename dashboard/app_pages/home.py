"""Home: choose the dataset, see what it holds, the runs under checkpoints/, links to the pages."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import cached, state
from dashboard.helpers import charts, runs
from dashboard.pages_index import PAGE_FILES

st.title("ctseg — multi-organ CT segmentation")


def choose_dataset() -> str | None:
    """The dataset path box; generates the phantom demo dataset on first start."""
    root = state.dataset_root()
    default, is_demo = cached.default_dataset()
    if root is None and is_demo:
        with st.spinner(
            f"First start: generating the phantom demo dataset in {state.plain(default)} …"
        ):
            cached.ensure_demo_dataset(default)
        st.session_state[state.DATASET] = default
        root = default
    with st.form("dataset_form", border=False):
        cols = st.columns([5, 1], vertical_alignment="bottom")
        typed = cols[0].text_input(
            "Dataset folder (TotalSegmentator layout: <id>/ct.nii.gz + <id>/segmentations/)",
            value=root or "",
            key="home_dataset_path",
        )
        submitted = cols[1].form_submit_button("Open", type="primary", width="stretch")
    if submitted and typed and typed != root:
        try:
            resolved = cached.checked_dataset_path(typed)
            index = cached.dataset_index(str(resolved))
            if not index.subjects:
                st.error(
                    state.plain(
                        f"{typed} holds no subject folders (<id>/ct.nii.gz); "
                        "give the folder that contains the subject folders"
                    )
                )
                _still_showing(root)
                return root
        except Exception as exc:
            state.show_error(exc)
            _still_showing(root)
            return root
        st.session_state[state.DATASET] = str(resolved)
        root = str(resolved)
        st.rerun()
    if root and Path(root).resolve() == Path(default).resolve() and is_demo:
        st.info(
            "This is the **synthetic phantom** demo dataset. To use real data, download the "
            "TotalSegmentator dataset (zenodo.org/records/10047292), unpack it and give its "
            "folder above, or start the dashboard with `CTSEG_DATA=/path/to/Totalsegmentator_dataset`.",
            icon=":material/info:",
        )
    return root


def _still_showing(root: str | None) -> None:
    if root:
        st.caption(f"Below: still the dataset {state.plain(root)}.")


def show_summary(root: str) -> None:
    summary = cached.prepared_summary(root)
    subjects = summary["subjects"]
    splits = summary["splits"]
    cols = st.columns(5)
    cols[0].metric("Subjects", len(subjects))
    cols[1].metric("Train", splits.get("train", 0))
    cols[2].metric("Val", splits.get("val", 0))
    cols[3].metric("Test", splits.get("test", 0))
    cols[4].metric("Axial slices", sum(s["slices"] for s in subjects))
    if subjects:
        spacing = [s["spacing_mm"] for s in subjects]
        lo = [min(sp[i] for sp in spacing) for i in range(3)]
        hi = [max(sp[i] for sp in spacing) for i in range(3)]
        st.caption(
            "Spacing range (mm, x / y / z): "
            + " / ".join(
                f"{a:.2f}–{b:.2f}" if a != b else f"{a:.2f}" for a, b in zip(lo, hi, strict=True)
            )
            + f" · split from {summary['split_source']}"
        )
    if summary["problems"]:
        with st.expander(f"{len(summary['problems'])} problem(s) found in the dataset"):
            for line in summary["problems"]:
                st.markdown(f"- {state.plain(line)}")  # names from the data, as plain text
    if st.button(
        "Read the dataset again", icon=":material/refresh:", key=state.HOME_REREAD,
        help="Files added, removed or replaced are seen by themselves; a mask rewritten in "
        "place under its own name is seen after this.",
    ):  # fmt: skip
        cached.forget_dataset(root)
        st.rerun()
    st.subheader("Structure coverage")
    st.caption("How many subjects contain each structure (non-empty mask), coloured by group.")
    spec = cached.coverage_spec(summary["coverage"])  # built once per coverage
    if spec is None:
        st.warning("No structure is present in any subject of this dataset.")
    else:
        st.vega_lite_chart(spec, width="stretch")
    with st.expander("Subjects"):
        st.dataframe(charts.subjects_table(subjects), hide_index=True)


def show_runs() -> None:
    st.subheader("Runs")
    root = cached.checkpoints_root()
    table = runs.runs_table(root)
    if table.empty:
        if not cached.show_runs_root_problem():  # "no run folders yet" only when it is so
            st.caption(
                f"No run folders under {state.plain(root)} yet — start one on the Train page."
            )
    else:
        st.caption(f"Run folders under {state.plain(root)}")
        st.dataframe(table, hide_index=True)


def show_links() -> None:
    st.subheader("Pages")
    cols = st.columns(4)
    cols[0].page_link(PAGE_FILES["train"], label="Train a model", icon=":material/model_training:")
    cols[1].page_link(PAGE_FILES["evaluate"], label="Evaluate a run", icon=":material/leaderboard:")
    cols[2].page_link(PAGE_FILES["explore"], label="Explore subjects", icon=":material/view_in_ar:")
    cols[3].page_link(
        PAGE_FILES["predict"], label="Predict on a new CT", icon=":material/online_prediction:"
    )


root = None
try:
    root = choose_dataset()
except Exception as exc:
    state.show_error(exc, "dataset")
show_links()
if root:
    state.guarded(lambda: show_summary(root), "dataset summary")
state.guarded(show_runs, "runs")
