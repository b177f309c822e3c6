"""The Evaluate page's Compare tab: two evaluations on disk side by side, structure by structure."""

from __future__ import annotations

import json
from pathlib import Path

import streamlit as st

from ctseg_core.evaluation.compare import OVERALL, compare_evaluations, comparison_dir
from dashboard import cached, cached_models, state
from dashboard.helpers import evalcharts
from dashboard.helpers.runs import run_title

EXPLAINED = (
    "B against A, structure by structure: for each metric the mean over the subjects both "
    "scored, the difference B − A, whether B is better or worse (by the metric's direction) and "
    "the p-value of a paired Wilcoxon signed-rank test over those subjects. A distance of a "
    "missed structure (inf) is counted, left out of the means and ranked in the test."
)


def _choice(label: str, key: str, options: list[str], titles: dict[str, str]) -> str | None:
    if st.session_state.get(key) not in (None, *options):  # that evaluation is gone
        del st.session_state[key]
    return st.selectbox(
        label, options, index=None, key=key, placeholder="Choose an evaluation",
        format_func=lambda option: titles.get(option, option),
        help="Evaluation folders under the checkpoints root: a run's evaluation*/, "
        "evaluations/<predictions folder>-<hash>/ and an nnU-Net model's "
        "evaluations/nnunet_<name>-<hash>/.",
    )  # fmt: skip


def model_of(folder: Path, splits: tuple[str, ...]) -> Path | None:
    """The nnU-Net model folder an evaluation scored (its ``source_<split>.json`` names one
    folder where a run's names checkpoint files), or None."""
    for split in splits:
        try:
            scored = json.loads((folder / f"source_{split}.json").read_text()).get("checkpoints")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(scored, list) and len(scored) == 1 and Path(scored[0]).is_dir():
            return Path(scored[0])
    return None


def evaluation_titles(found: dict) -> dict[str, str]:
    """Evaluation label -> "<model label> · <label>" for the evaluations of nnU-Net models
    (the label of ``cached_models.model_titles``, or "nnU-Net model <folder>" for one not
    listed), "<run> (3D)/evaluation" for a run's, with its kind as every run list shows it."""
    from ctseg_core.runs.listing import run_kind

    models = cached_models.model_titles()
    titles = {}
    for label, evaluation in found.items():
        model = model_of(evaluation.path, evaluation.splits)
        if model is not None:
            name = models.get(state.MODEL_PREFIX + str(model), f"nnU-Net model {model.name}")
            titles[label] = f"{name} · {label}"
            continue
        run, sep, rest = label.partition("/")
        kind = run_kind(evaluation.path.parent) if sep and run != "evaluations" else None
        if kind:
            titles[label] = f"{run_title(run, kind)}/{rest}"
    return titles


def section() -> None:
    """Choose A, B and a split they share; Compare writes the CSV and shows chart and table."""
    from ctseg_core.evaluation.compare import list_evaluations

    k = state.EVAL_FORM
    st.caption(EXPLAINED)
    root = cached.checkpoints_root()
    found = {e.label: e for e in list_evaluations(root)}
    if len(found) < 2:
        st.info(
            "Comparing needs two evaluations on disk: evaluate two checkpoints, or a checkpoint "
            "and a predictions folder, on the same subjects first.",
            icon=":material/info:",
        )
        return
    titles = evaluation_titles(found)
    cols = st.columns(2)
    with cols[0]:
        a = _choice("A (the baseline)", k.compare_a, list(found), titles)
    with cols[1]:
        b = _choice("B (compared with A)", k.compare_b, list(found), titles)
    if not a or not b:
        return
    if a == b:
        st.info("A and B are the same evaluation: choose another for B.", icon=":material/info:")
        return
    splits = [s for s in found[a].splits if s in found[b].splits]
    if not splits:
        st.info(
            state.plain(
                f"A holds the split(s) {', '.join(found[a].splits)} and B "
                f"{', '.join(found[b].splits)}: none in common; evaluate both on one split."
            ),
            icon=":material/info:",
        )
        return
    if st.session_state.get(k.compare_split) not in splits:
        st.session_state.pop(k.compare_split, None)
    cols = st.columns([1, 3], vertical_alignment="bottom")
    split = cols[0].selectbox("Split", splits, key=k.compare_split)
    if cols[1].button("Compare", type="primary", key=k.compare_go):
        out = comparison_dir(root, found[a].path, found[b].path)
        result = compare_evaluations(found[a].path, found[b].path, split, out)
        st.session_state[state.EVAL_COMPARISON] = {
            "choice": (a, b, split), "table": result.table, "csv": result.csv.read_bytes(),
            "out_dir": str(out), "notes": result.warnings, "titles": titles,
        }  # fmt: skip
    shown = st.session_state.get(state.EVAL_COMPARISON)
    if shown and shown["choice"] == (a, b, split):
        show_comparison(shown)


def show_comparison(info: dict) -> None:
    """The written comparison: notes, a metric picker, the sorted bars, the table, the CSV."""
    k = state.EVAL_FORM
    a, b, split = info["choice"]
    titles = info.get("titles") or {}
    a, b = titles.get(a, a), titles.get(b, b)
    st.caption(state.plain(f"A: {a} · B: {b} · {split} · written to {info['out_dir']}"))
    for note in info["notes"]:
        state.show_warning(note)
    table = info["table"]
    metrics = [m for m in evalcharts.METRIC_TITLES if m in set(table["metric"])]
    if st.session_state.get(k.compare_metric) not in (None, *metrics):
        del st.session_state[k.compare_metric]
    metric = st.segmented_control(
        "Metric", metrics, default=state.widget_default(k.compare_metric, metrics[0]),
        key=k.compare_metric, format_func=evalcharts.METRIC_TITLES.get, required=True,
    )  # fmt: skip
    if metric not in metrics:
        return
    rows = table[table["metric"] == metric]
    overall = rows[rows["structure"] == OVERALL].iloc[0].to_dict()
    st.markdown(evalcharts.comparison_summary(overall, metric))
    st.altair_chart(evalcharts.comparison_chart(rows, metric), width="stretch")
    if left_out := evalcharts.unplotted_structures(rows):
        st.caption(
            f"Not in the chart (no difference to draw: every pair missed in A or B; in the "
            f"table below): {state.plain(', '.join(left_out))}"
        )
    st.dataframe(evalcharts.comparison_table(rows, metric), hide_index=True)
    name = f"comparison_{split}.csv"
    st.download_button(
        state.plain(name), info["csv"], file_name=name, mime="text/csv",
        icon=":material/download:", key=k.compare_download,
    )  # fmt: skip
