"""Evaluate: score a run's checkpoint (or a predictions folder) on a split; rank, inspect, download;
compare two evaluations on disk (the Compare tab, ``helpers/compare_view``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from ctseg_core.access import check_allowed_folder
from ctseg_core.evaluation.paths import (
    checkpoint_evaluation_dir,
    folder_evaluation_dir,
    model_evaluation_dir,
)
from dashboard import cached, cached_models, state
from dashboard.helpers import compare_view, eval_explore, evalcharts, runs

FROM_RUN = "a run's checkpoint or an nnU-Net model"
FROM_FOLDER = "a predictions folder (<id>.nii.gz)"

st.title("Evaluate")


def choose_source() -> tuple[list[str] | str, Path, str, str | None, str] | None:
    """(predictions argument, output folder, checkpoint label or "", nnU-Net model folder or
    None, title) from the source widgets; a model predicts as ``ctseg evaluate --model`` does
    (its mirroring on) and its tables go to ``evaluations/nnunet_<name>-<hash>``."""
    kind = st.segmented_control(
        "Predictions from", [FROM_RUN, FROM_FOLDER],
        default=state.widget_default(state.EVAL_FORM.kind, FROM_RUN), key=state.EVAL_FORM.kind,
        required=True,
    )  # fmt: skip
    if kind == FROM_RUN:
        checkpoints, models = cached.all_checkpoints(), cached_models.model_titles()
        cached_models.show_skipped_models()
        if not checkpoints and not models:
            st.info(
                "No checkpoints yet: train a run on the Train page, point CTSEG_MODELS at "
                "nnU-Net model folders, or evaluate a folder."
            )
            return None
        titles = runs.checkpoint_titles(checkpoints, models)
        label = st.selectbox(
            "Run / checkpoint or model", [*checkpoints, *models], key=state.EVAL_FORM.checkpoint,
            format_func=titles,
        )  # fmt: skip
        if label in models:
            entry = cached_models.all_models()[label]
            name = f"{entry.name}_{entry.configuration}"
            out = model_evaluation_dir(cached.checkpoints_root() / "evaluations", entry.path, name)
            return [], out, label, str(entry.path), models[label]
        path = Path(checkpoints[label])
        return [str(path)], checkpoint_evaluation_dir([path]), label, None, titles(label)
    folder = st.text_input(
        "Predictions folder (multilabel <subject id>.nii.gz files, TotalSegmentator v2 values)",
        key=state.EVAL_FORM.folder,
    )
    if not folder:
        return None
    resolved = check_allowed_folder(folder, "give the folder holding <id>.nii.gz files")
    out = folder_evaluation_dir(cached.checkpoints_root() / "evaluations", resolved)
    return str(resolved), out, "", None, ""


def _split_words(split: str) -> str:
    return "all splits" if split == "all" else f"the {split} split"


def choose_subjects(index, split: str, source) -> list[str]:
    """The subjects to score: those of the split (with a file in a predictions folder), all of
    them chosen by default and again whenever the folder or the split changes."""
    if source is None or not split:
        return []
    ids = index.subjects_in(split)
    label = "Subjects"
    predictions = source[0]
    if isinstance(predictions, str):  # a predictions folder: only the subjects it has
        from ctseg_core.evaluation.prediction_files import has_prediction

        folder = Path(predictions)
        have = [s for s in ids if has_prediction(folder, s)]
        if not have:
            found = [index.splits.get(s) for s in index.subjects if has_prediction(folder, s)]
            where = ", ".join(f"{name} ({found.count(name)})" for name in dict.fromkeys(found))
            st.info(
                f"The folder holds no `<subject id>.nii.gz` of {_split_words(split)}"
                + (f"; its predictions are of {where}: choose that split, or all." if where else
                   " nor of any other split."),
                icon=":material/info:",
            )  # fmt: skip
        elif len(have) < len(ids):
            label = f"Subjects (the folder has predictions of {len(have)} of the {len(ids)})"
        ids = have
    key = state.EVAL_FORM.subjects
    if st.session_state.get(state.EVAL_SUBJECTS_AMONG) != ids:  # a new folder or split
        st.session_state[state.EVAL_SUBJECTS_AMONG] = ids
        st.session_state[key] = list(ids)
    if not ids:
        return []
    return st.multiselect(
        label, ids, key=key, placeholder="Choose the subjects to score",
        help="All the subjects of the split (that the predictions folder has) by default.",
    )  # fmt: skip


def run_evaluation(root: str) -> None:
    index = cached.dataset_index(root)
    source = choose_source()
    splits = [s for s in ("test", "val", "train") if index.subjects_in(s)] + ["all"]
    top = st.columns([1, 3], vertical_alignment="bottom")
    split = top[0].selectbox("Split", splits, key=state.EVAL_FORM.split)
    with top[1]:
        subjects = choose_subjects(index, split, source)
    cols = st.columns([1, 3], vertical_alignment="bottom")
    report = cols[0].toggle(
        "Write figures", key=state.EVAL_FORM.report,
        help="Also write the report figures and 3D pages into the evaluation folder (slower).",
    )  # fmt: skip
    go = cols[1].button(
        "Evaluate", type="primary", disabled=source is None or not subjects,
        key=state.EVAL_FORM.go,
    )  # fmt: skip
    if not go or source is None:
        return
    predictions, out_dir, label, model, title = source
    from ctseg_core.evaluation.evaluate import evaluate_predictions

    bar = st.progress(0.0, text=f"Evaluating {_split_words(split)} …")

    def progress(done: int, total: int, subject: str) -> None:
        bar.progress(
            done / max(total, 1), text=state.plain(f"{done} / {total} subjects ({subject})")
        )

    try:
        results = evaluate_predictions(
            root, split, predictions, out_dir, progress=progress,
            cache_dir=cached.cache_dir(), subjects=subjects, report=report,
            model=model, tta=model is not None,
        )  # fmt: skip
    finally:
        bar.empty()
    if not label:  # a folder of predictions: Explore offers it as a source from now on
        folders = st.session_state.setdefault(state.EXPLORE_FOLDERS, [])
        if str(predictions) not in folders:
            folders.append(str(predictions))
    st.session_state[state.EVAL_RESULT] = {
        "results": results,
        "figures": _report_figures(out_dir, split),
        "split": split,
        "subjects": len(subjects),
        "skipped": dict(results.attrs.get("skipped", {})),
        "notes": list(results.attrs.get("notes", [])),
        "boxes": len(results.attrs.get("body_boxes", {})),
        "out_dir": str(out_dir),
        "checkpoint": label,
        "title": title,
        "folder": "" if label else str(predictions),
        "root": root,
        "form": _form_choice(),
    }


def _report_figures(out_dir: Path, split: str) -> dict[str, bytes]:
    """The PNG figures this evaluation wrote, as bytes (a served dashboard's user has no other
    way to them; read now, before another evaluation into the folder replaces them)."""
    import json

    try:
        names = json.loads((out_dir / f"source_{split}.json").read_text())["report_files"]
    except (OSError, ValueError, KeyError):
        return {}
    return {n: (out_dir / n).read_bytes() for n in names if n.endswith(".png")}


def _form_choice() -> tuple:
    """What the form asks to evaluate now: shown results of another choice are marked."""
    k = state.EVAL_FORM
    keys = (k.kind, k.checkpoint, k.folder, k.split, k.subjects)
    return tuple(st.session_state.get(key) for key in keys)


def show_results(info: dict) -> None:
    from ctseg_core.evaluation.tables import detection_table, summarize_results

    results: pd.DataFrame = info["results"]
    st.divider()
    scored = info.get("subjects", 0) - len(info.get("skipped") or {})
    st.subheader(f"Results on {_split_words(info['split'])} ({scored} subjects)")
    st.caption(
        state.plain(
            f"{info.get('title') or info['checkpoint'] or 'predictions folder'} · files in "
            f"{info['out_dir']}"
        )
    )
    if info.get("boxes"):
        st.caption(
            f"The 3D model labelled only the box around the body in {info['boxes']} CTs (the "
            f"rest is background; each box in source_{state.plain(info['split'])}.json)."
        )
    notes = info.get("notes") or []
    if notes:  # one box, however many subjects: the first note, the others behind it
        more = f" (and {len(notes) - 1} more like it, below)" if len(notes) > 1 else ""
        st.warning(state.plain(notes[0] + more), icon=":material/warning:")
        if len(notes) > 1:
            with st.expander(f"All {len(notes)} warnings"):
                st.markdown("\n".join(f"- {state.plain(note)}" for note in notes))
    skipped = info.get("skipped") or {}
    if skipped:
        st.warning(
            f"Not scored: {len(skipped)} of the {info.get('subjects')} subjects, left out of "
            f"these results (skipped_{state.plain(info['split'])}.csv lists each with its "
            "reason): " + ", ".join(state.plain(s) for s in skipped),
            icon=":material/warning:",
        )  # fmt: skip
        st.dataframe(evalcharts.skipped_table(skipped), hide_index=True)
    summary = summarize_results(results)
    metric = st.segmented_control(
        "Metric", list(evalcharts.METRIC_TITLES),
        default=state.widget_default(state.EVAL_FORM.metric, "dice"), key=state.EVAL_FORM.metric,
        format_func=evalcharts.METRIC_TITLES.get, required=True,
    )  # fmt: skip
    min_ml = st.number_input(
        "Hide structures whose reference is under (ml)", 0.0, 10000.0, step=0.1,
        key=state.EVAL_FORM.min_ml,
        help="Leaves out of the ranking and the worst cases the subject x structure pairs with a "
        "smaller reference (a one-voxel reference of 0.03 ml scores by chance).",
    )  # fmt: skip
    ranked = evalcharts.without_small_references(results, float(min_ml or 0.0))
    if len(ranked) < len(results):
        st.caption(f"{len(results) - len(ranked)} pairs with a reference under {min_ml} ml hidden")
    ranking = evalcharts.ranking(ranked, metric)
    st.markdown("**Per group**")
    st.dataframe(evalcharts.group_summary(results), hide_index=True)
    left, right = st.columns([3, 2])
    with left:
        st.markdown("**Structure ranking** (best first; hover for a structure's missed cases, "
                    "which a distance leaves out of its mean)")  # fmt: skip
        st.altair_chart(evalcharts.ranking_chart(ranking, metric), width="stretch")
    with right:
        st.markdown("**Distribution**")
        st.altair_chart(evalcharts.distribution_chart(results, metric), width="stretch")
    st.markdown(
        "**Success rates** (share of the group's scored subject x structure pairs at or above "
        "each Dice threshold; a missed structure scores 0)"
    )
    st.altair_chart(evalcharts.success_chart(results))
    with st.expander("Success rates per structure"):
        st.dataframe(evalcharts.success_rates(summary), hide_index=True)
    st.markdown("**Detection** (subject x structure)")
    few = results["subject"].nunique() <= evalcharts.DETECTION_FEW_SUBJECTS
    st.altair_chart(evalcharts.detection_chart(results), width="content" if few else "stretch")
    eval_explore.subject_rows(ranked, info)
    eval_explore.worst_case_link(ranked, evalcharts.ranking(ranked, "dice"), info)
    st.subheader("Downloads")
    split = info["split"]
    cols = st.columns(3)
    for col, (name, table) in zip(
        cols,
        (
            (f"evaluation_results_{split}.csv", results),
            (f"summary_{split}.csv", summary),
            (f"detection_{split}.csv", detection_table(results)),
        ),
        strict=True,
    ):
        col.download_button(
            name, table.to_csv(index=False), file_name=name, mime="text/csv",
            icon=":material/download:", key=f"{state.EVAL_FORM.download}_{name}",
        )  # fmt: skip
    with st.expander("All rows"):
        st.dataframe(results, hide_index=True)
    if info.get("figures"):
        with st.expander("Report figures (as written to the evaluation folder)"):
            for name, png in info["figures"].items():
                st.image(png, caption=state.plain(name))
                st.download_button(
                    state.plain(name), png, file_name=name, mime="image/png",
                    icon=":material/download:", key=f"{state.EVAL_FORM.download}_{name}",
                )  # fmt: skip


def evaluate_main() -> None:
    root = state.dataset_root()
    if not root:
        st.info("Choose a dataset on Home first.")
        return
    st.caption(f"Dataset: {state.plain(root)}")
    state.guarded(lambda: run_evaluation(root), "evaluation")
    info = st.session_state.get(state.EVAL_RESULT)
    if info and info.get("root") == root:
        if info.get("form") != _form_choice():
            what = info.get("title") or info["checkpoint"] or "the predictions folder"
            st.info(
                f"Below: the last results, of {state.plain(what)} on "
                f"{_split_words(info['split'])}; press Evaluate for the choice above.",
                icon=":material/history:",
            )
        for note in _changed_since(info):  # a resumed run rewrote the checkpoint scored
            st.warning(state.plain(note), icon=":material/update:")
        state.guarded(lambda: show_results(info), "results")


def _changed_since(info: dict) -> list[str]:
    """Notes for the checkpoints these results scored that have changed since (``paths.
    changed_checkpoints``, from the evaluation's source record): the results then describe
    another model than the file now holds."""
    import json

    from ctseg_core.evaluation.paths import changed_checkpoints

    try:
        source = json.loads((Path(info["out_dir"]) / f"source_{info['split']}.json").read_text())
    except (OSError, ValueError):
        return []
    return changed_checkpoints(source) if isinstance(source, dict) else []


def main() -> None:
    evaluate_tab, compare_tab = st.tabs(["Evaluate", "Compare two evaluations"])
    with evaluate_tab:
        evaluate_main()
    with compare_tab:
        state.guarded(compare_view.section, "comparison")


state.guarded(main, "evaluate")
