"""Explore: a subject's CT with reference and (optionally) predicted labels, slices and 3D."""

from __future__ import annotations

import streamlit as st

from dashboard import cached, cached_models, cached_predictions, state
from dashboard.helpers import layer_names, niivue_view, runs
from dashboard.helpers.viewer import Layer, annotation_note, volume_viewer
from dashboard.pages_index import PAGE_FILES

NO_CHECKPOINT = "(none)"

st.title("Explore")


def main() -> None:
    root = state.dataset_root()
    if not root:
        st.info("Choose a dataset on Home first.")
        st.page_link(PAGE_FILES["home"], label="Home", icon=":material/home:")
        return
    index = cached.dataset_index(root)
    if not index.subjects:
        st.error(state.plain(f"{root} holds no subjects; choose another dataset on Home."))
        return
    if st.session_state.get(state.EXPLORE_SUBJECT) not in index.subjects:
        st.session_state[state.EXPLORE_SUBJECT] = index.subjects[0]
    checkpoints = cached.all_checkpoints()
    folders = [state.FOLDER_PREFIX + f for f in st.session_state.get(state.EXPLORE_FOLDERS, [])]
    models = cached_models.model_titles()
    options = [NO_CHECKPOINT, *checkpoints, *models, *folders]
    if st.session_state.get(state.EXPLORE_CHECKPOINT) not in options:
        st.session_state[state.EXPLORE_CHECKPOINT] = NO_CHECKPOINT
    cols = st.columns([1, 2])
    subject = cols[0].selectbox(
        "Subject",
        index.subjects,
        key=state.EXPLORE_SUBJECT,
        format_func=lambda s: f"{s} ({index.splits.get(s) or 'no split'})",
    )
    choice = cols[1].selectbox(
        "Prediction from",
        options,
        key=state.EXPLORE_CHECKPOINT,
        format_func=runs.checkpoint_titles(checkpoints, models),
        help="A run's checkpoint or an nnU-Net model under CTSEG_MODELS (predicted once per "
        "subject, then kept), or a folder of <id>.nii.gz predictions evaluated on the Evaluate "
        "page (any tool's).",
    )
    cached_models.show_skipped_models()
    with st.spinner(f"Opening {state.plain(subject)} …"):
        entry = cached.cached_subject(root, subject)
    # named with its files' version: a mask changed on disk is a new volume everywhere
    reference = f"ref:{cached.subject_volume_id(root, subject)}"
    layers = [Layer("reference", entry.labels, reference, entry.voxel_counts)]
    if choice.startswith(state.FOLDER_PREFIX):
        folder = choice.removeprefix(state.FOLDER_PREFIX)
        try:
            pred = cached_predictions.folder_prediction_zxy(root, subject, folder)
            source = cached_predictions.prediction_source(root, subject, folder=folder)
            names = layer_names.folder_prediction_names(subject, folder)
            learned = layer_names.folder_prediction_learned(subject, folder)
            counts = cached.label_counts(source, pred)
            layers.append(Layer("prediction", pred, source, counts, names, learned))
        except Exception as exc:
            state.show_error(exc, f"prediction from {folder}")
    elif choice != NO_CHECKPOINT:
        title = models.get(choice, choice)
        bar = st.progress(0.0, text=state.plain(f"Predicting {subject} with {title} …"))

        def progress(done: int, total: int, info: str = "") -> None:
            text = state.plain(f"Predicting {subject}: {info}")
            bar.progress(min(1.0, done / max(total, 1)), text=text)

        try:
            if choice in models:
                model = choice.removeprefix(state.MODEL_PREFIX)
                pred = cached_models.model_prediction_zxy(root, subject, model, progress)
                source = cached_predictions.prediction_source(root, subject, model=model)
                names = cached_models.model_names(model)
                learned = frozenset(cached_models.model_predictor(model).structures)
            else:
                checkpoint = str(checkpoints[choice])
                pred = cached_predictions.predicted_labels_zxy(root, subject, checkpoint, progress)
                source = cached_predictions.prediction_source(root, subject, checkpoint=checkpoint)
                names = layer_names.checkpoint_names(checkpoint)  # a merge: named by the merge
                learned = layer_names.checkpoint_learned(checkpoint)
                if box := cached_predictions.prediction_box(root, subject, checkpoint):
                    st.caption(cached_predictions.body_box_caption(box))
            counts = cached.label_counts(source, pred)
            layers.append(Layer("prediction", pred, source, counts, names, learned))
            if choice not in models:  # an nnU-Net model states no training domain
                for message in cached_predictions.domain_warnings(
                    root, subject, checkpoints[choice]
                ):
                    st.warning(state.plain(message), icon=":material/warning:")
        except Exception as exc:
            state.show_error(exc, f"prediction with {title}")
        finally:
            bar.empty()
    sx, sy, sz = entry.spacing_mm
    st.caption(
        f"{state.plain(subject)}: {' x '.join(map(str, entry.shape_xyz))} voxels, spacing "
        f"{sx:.2f} x {sy:.2f} x {sz:.2f} mm, {len(entry.present)} structures present"
    )
    annotation_note(entry.annotated, entry.unused_masks)
    if niivue_view.viewer_choice(state.EXPLORE_VIEWER) == "linked planes":
        niivue_view.niivue_viewer(state.EXPLORE_VIEW, entry.ct, layers, entry.affine,
                                  volume_id=cached.subject_volume_id(root, subject))  # fmt: skip
        return
    volume_viewer(state.EXPLORE_VIEW, entry.ct, layers, entry.spacing_mm, entry.affine,
                  volume_id=cached.subject_volume_id(root, subject))  # fmt: skip


state.guarded(main, "explore")
