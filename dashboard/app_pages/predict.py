"""Predict: upload a CT, label it with a checkpoint, explore the result, download it."""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import streamlit as st

from ctseg_core.errors import CtsegError
from ctseg_core.labels import NUM_LABELS
from dashboard import cached, cached_models, cached_predictions, state
from dashboard.helpers import runs, uploads
from dashboard.helpers.viewer import Layer, volume_viewer

UPLOADED = "(upload a checkpoint)"

st.title("Predict")
st.caption(
    "Upload a CT as .nii / .nii.gz or a .zip of one DICOM series; it is labelled on this server "
    "and offered back as a multilabel NIfTI on the CT's own grid, with 3D Slicer and ITK-SNAP "
    "label files."
)


def choose_checkpoint(workdir: Path) -> str | None:
    """A checkpoint's path, or an nnU-Net model's picker option (``state.MODEL_PREFIX``)."""
    checkpoints = cached.all_checkpoints()
    models = cached_models.model_titles()
    options = [*checkpoints, *models, UPLOADED]
    choice = st.selectbox(
        "Checkpoint", options, key=state.PREDICT_VIEW.checkpoint,
        format_func=runs.checkpoint_titles(checkpoints, models),
        help="A run's checkpoint, or an nnU-Net model folder found under CTSEG_MODELS "
        "(TotalSegmentator's weights by default).",
    )  # fmt: skip
    cached_models.show_skipped_models()
    if choice in models:
        return choice
    if choice != UPLOADED:
        return checkpoints[choice]
    upload = st.file_uploader(
        "Checkpoint (.pth written by ctseg; loaded with torch.load(weights_only=True): tensors "
        "and plain data only, so it cannot run code)",
        key=state.PREDICT_VIEW.checkpoint_upload,
    )
    if upload is None:
        return None
    try:
        saved = uploads.save_checkpoint_upload(
            upload.name, upload.getvalue(), workdir / "checkpoint"
        )
    except CtsegError as exc:  # said here: the rest of the form stays (Predict disabled)
        state.show_error(exc)
        return None
    return str(saved)


def _named(text: str, ct_label: str) -> str:
    """``text`` naming the uploads instead of the server's temporary copies of them (a file
    unpacked from a zipped upload: its name in the zip), and the page's own checkbox where the
    library names the CLI's flag."""

    def label(match: re.Match) -> str:
        if match.group(1) != "ct":
            return Path(match.group(0)).name
        inner = match.group(2).strip("/").split("/")
        if len(inner) > 1:  # ct/dicom/00003_x.nii.gz: a file of the zip
            return f"{re.sub(r'^[0-9]{5}_', '', inner[-1])} (in {ct_label})"
        return ct_label

    # a file unpacked from the zip ("00003_IM (1).dcm"): its name may hold spaces and
    # parentheses, so it ends only before ": ", "; ", ", " or a ")" that closes the text
    text = re.sub(
        r"[^\s(]*ctseg-predict-[^\s/]*/ct/dicom/[0-9]{5}_(.+?)(?=: |; |, |\)(?:\s|$)|$)",
        lambda m: f"{m.group(1)} (in {ct_label})",
        text,
    )
    text = re.sub(r"[^\s(]*ctseg-predict-[^\s/]*/(ct|checkpoint)(/[^\s:;,()]*)?", label, text)
    return text.replace(
        "pass --resample-uneven (resample_uneven=True)",
        'tick "Resample a DICOM series with missing slices or uneven spacing" above',
    )


def _name_uploads(exc: CtsegError, ct_label: str) -> CtsegError:
    """The same error naming the uploads instead of the server's temporary copies of them:
    made without the class's own __init__, which may add its advice again or take more."""
    named = type(exc).__new__(type(exc))
    named.args = (_named(str(exc), ct_label),)
    named.__dict__.update(exc.__dict__)
    return named


def run_prediction() -> None:
    upload = st.file_uploader(
        "CT image", type=["nii", "gz", "zip"], key=state.PREDICT_VIEW.ct_upload
    )
    result = st.session_state.get(state.PREDICT_RESULT)
    if result and result.get("upload_id") != (upload.file_id if upload else None):
        del st.session_state[state.PREDICT_RESULT]  # another file (or none): not its labels
    workdir = Path(tempfile.mkdtemp(prefix="ctseg-predict-"))
    try:
        predict_upload(upload, workdir)
    except CtsegError as exc:
        raise _name_uploads(exc, uploads.upload_label(upload.name) if upload else "") from None
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def predict_upload(upload, workdir: Path) -> None:
    """The checkpoint choice and the Predict button; on a click, label the upload into the state."""
    from ctseg_core.data.domain import is_phantom_ct
    from ctseg_core.data.volume import hu_problem, save_on_original_grid
    from ctseg_core.inference.domain import domain_warnings
    from ctseg_core.inference.files import load_ct_noting
    from ctseg_core.inference.predictor import Predictor
    from dashboard.helpers.layer_names import checkpoint_names

    checkpoint = choose_checkpoint(workdir)
    resample = st.checkbox(
        "Resample a DICOM series with missing slices or uneven spacing onto a uniform grid "
        "(otherwise it is refused)",
        key=state.PREDICT_VIEW.resample_uneven,
    )
    go = st.button(
        "Predict",
        type="primary",
        disabled=upload is None or checkpoint is None,
        key=state.PREDICT_VIEW.go,
    )
    if not go:
        return
    uploads.ct_kind(upload.name)
    label = uploads.upload_label(upload.name)
    with st.spinner(f"Reading {state.plain(label)} …"):
        saved = uploads.save_ct_upload(upload.name, upload.getvalue(), workdir / "ct")
        ct, notes = load_ct_noting(saved, resample_uneven=resample)
    bar = st.progress(0.0, text="Predicting …")

    def progress(done: int, total: int, info: str = "") -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=state.plain(f"Predicting: {info}"))

    box = None
    if checkpoint.startswith(state.MODEL_PREFIX):  # as `ctseg predict --model` does
        model = cached_models.all_models()[checkpoint]
        domain, name = model_notes(model), cached_models.model_titles()[checkpoint]
        predictor = cached_models.model_predictor(str(model.path))
        labels_xyz = predictor.predict(ct, progress=progress)
        names = cached_models.model_names(str(model.path))
    else:
        uploaded = Path(checkpoint).is_relative_to(workdir)  # named as uploaded, not its copy
        domain = domain_warnings([checkpoint], ct.array.transpose(2, 0, 1), ct.spacing_mm,
                                 input_is_phantom=is_phantom_ct(saved), what=label,
                                 names=[Path(checkpoint).name] if uploaded else None)  # fmt: skip
        # named as the picker shows it ("tiny (2D) / best.pth": every run has a best.pth)
        name = Path(checkpoint).name if uploaded else runs.checkpoint_title(checkpoint)
        predictor = Predictor([checkpoint])  # as predict_volume, keeping its last_box
        labels_xyz = predictor.predict(ct, progress=progress)
        box = predictor.last_box  # a 3D model's box around the body
        names = checkpoint_names(checkpoint)  # a merge: named by the merge
    bar.empty()
    out = workdir / "labels.nii.gz"  # a fixed name: the upload's name never makes a path
    save_on_original_grid(labels_xyz, ct, out)
    st.session_state[state.PREDICT_RESULT] = {
        "name": uploads.result_stem(upload.name),
        "upload_id": upload.file_id,
        "ct_zxy": np.ascontiguousarray(ct.array.transpose(2, 0, 1)),
        "labels_zxy": np.ascontiguousarray(labels_xyz.transpose(2, 0, 1)),
        "spacing_mm": tuple(ct.spacing_mm),
        "affine": ct.affine,
        "nifti": out.read_bytes(),
        "checkpoint": name,
        "names": names,  # value -> merge name (labels.MERGES) where a value is a merge
        "learned": frozenset(predictor.structures),
        # what reading said (files left out, a resampled series, the series chosen), then HU
        "warnings": [_named(n, label) for n in [*notes, hu_problem(ct.array, label)] if n],
        "domain": domain,
        "body_box": None if box is None else [(s.start, s.stop) for s in box],
    }


def model_notes(model) -> list[str]:
    """What the page does not show of an nnU-Net model's labels (``ModelEntry.other_labels``)."""
    if not model.other_labels:
        return []
    return [
        f"The model's labels {', '.join(model.other_labels)} are no TotalSegmentator v2 "
        "structures: left out here; `ctseg predict --model` writes them with the model's own "
        "values and a <name>_labels.json."
    ]


def show_result(result: dict) -> None:
    from ctseg_core.inference.label_files import itksnap_text, label_entries, slicer_ctbl_text

    st.divider()
    labels = result["labels_zxy"]
    counts = np.bincount(labels.ravel(), minlength=NUM_LABELS)
    values = [int(v) for v in np.flatnonzero(counts[1:]) + 1]
    st.subheader(
        state.plain(f"{result['name']}: {len(values)} structures found ({result['checkpoint']})")
    )
    if result.get("body_box"):
        st.caption(cached_predictions.body_box_caption(result["body_box"]))
    for warning in result.get("warnings", []):
        state.show_warning(warning)
    for message in result.get("domain") or []:  # outside what the checkpoint was trained on
        state.show_warning(message)
    entries = label_entries(values, result.get("names"))  # a merge's value named by the merge
    cols = st.columns(3)
    cols[0].download_button(
        "Multilabel NIfTI", result["nifti"], file_name=f"{result['name']}_labels.nii.gz",
        mime="application/gzip", icon=":material/download:", key=state.PREDICT_VIEW.dl_nifti,
    )  # fmt: skip
    cols[1].download_button(
        "3D Slicer colour table (.ctbl)", slicer_ctbl_text(entries),
        file_name=f"{result['name']}_labels.ctbl", icon=":material/download:",
        key=state.PREDICT_VIEW.dl_ctbl,
    )  # fmt: skip
    cols[2].download_button(
        "ITK-SNAP label file", itksnap_text(entries),
        file_name=f"{result['name']}_labels_itksnap_labels.txt", icon=":material/download:",
        key=state.PREDICT_VIEW.dl_itk,
    )  # fmt: skip
    digest = hashlib.sha1(counts.tobytes()).hexdigest()[:12]
    source = f"predict:{result['name']}:{result['checkpoint']}:{digest}"
    layer = Layer("prediction", labels, source, counts, result.get("names"), result.get("learned"))
    volume_viewer(state.PREDICT_VIEW, result["ct_zxy"], [layer], result["spacing_mm"],
                  result["affine"], volume_id=source)  # fmt: skip


def main() -> None:
    state.guarded(run_prediction, "prediction")
    result = st.session_state.get(state.PREDICT_RESULT)
    if result:
        state.guarded(lambda: show_result(result), "result")


state.guarded(main, "predict")
