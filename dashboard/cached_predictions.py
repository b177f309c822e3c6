"""The dashboard's predictions of cached subjects: a server-wide store of label volumes (a
checkpoint's, a predictions folder's; ``cached_models`` keeps nnU-Net models' in it too), the
keys that name them for the other caches, and a checkpoint's domain warnings per subject.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np
import streamlit as st

from dashboard.cached import cached_subject, subject_volume_id


@st.cache_resource(show_spinner=False)
def _prediction_store() -> dict:
    """Server-wide store of predicted label volumes: {(root, subject, checkpoint, mtime): array}.

    A plain dict rather than a cached function, so the progress bar shown while predicting is not
    recorded into (and replayed from) a Streamlit cache.
    """
    return {"lock": threading.Lock(), "items": OrderedDict(), "boxes": {}}


PREDICTIONS_KEPT = 4  # label volumes are ~1 byte/voxel: 4 full-size CTs are well under 1 GB


def predicted_labels_zxy(root: str, subject_id: str, checkpoint: str, progress=None) -> np.ndarray:
    """Prediction of a checkpoint on a cached subject, (Z, X, Y) uint8; computed once, kept.

    ``progress(done, total, info)`` is called only when the prediction is computed.
    """
    from ctseg_core.errors import DataError
    from ctseg_core.fileio import cannot_read, is_file
    from ctseg_core.inference.predictor import Predictor

    path = Path(checkpoint).expanduser().resolve()
    try:
        missing = not is_file(path)  # 3.14's Path.is_file: False behind a closed folder
    except OSError as exc:
        raise DataError(cannot_read(f"checkpoint {checkpoint}", exc, path)) from exc
    if missing:
        raise DataError(f"checkpoint {checkpoint} does not exist; pick another from the list")
    key = _checkpoint_key(root, subject_id, path)

    def compute():
        entry = cached_subject(root, subject_id)
        predictor = Predictor([str(path)])  # as predict_volume, keeping its last_box
        labels = predictor.predict(entry.ct_volume(), progress=progress)
        box = predictor.last_box  # a 3D model's box around the body, or None
        _prediction_store()["boxes"][key] = (
            None if box is None else [(s.start, s.stop) for s in box]
        )
        return labels

    return _kept_prediction(key, compute)


def prediction_box(root: str, subject_id: str, checkpoint: str) -> list[tuple[int, int]] | None:
    """The box around the body (RAS voxel [start, stop) per axis) that a 3D checkpoint labelled
    in its kept prediction of the subject (``predicted_labels_zxy``); None for a 2D model or a
    prediction not kept."""
    path = Path(checkpoint).expanduser().resolve()
    return _prediction_store()["boxes"].get(_checkpoint_key(root, subject_id, path))


def _checkpoint_key(root: str, subject_id: str, path: Path) -> tuple:
    """A checkpoint's prediction of a subject in the store: the subject's files as they are
    now (``cached.subject_volume_id``) and the checkpoint file's version."""
    return (subject_volume_id(root, subject_id), str(path), path.stat().st_mtime)


def body_box_caption(box) -> str:
    """What a 3D model labelled: the box around the body, inclusive RAS voxel indices."""
    spans = zip("xyz", box, strict=True)
    return (
        "The 3D model labelled the box around the body (RAS voxel indices "
        + ", ".join(f"{a} {lo}-{hi - 1}" for a, (lo, hi) in spans)
        + ", inclusive); the rest is background."
    )


@st.cache_data(show_spinner=False, max_entries=256)
def _domain_warnings(root: str, subject_id: str, checkpoint: str, version: str, mtime: float):
    from ctseg_core.data.domain import is_phantom_root
    from ctseg_core.inference.domain import domain_warnings

    entry = cached_subject(root, subject_id)
    return domain_warnings([checkpoint], entry.ct, entry.spacing_mm,
                           input_is_phantom=is_phantom_root(root), what=subject_id)  # fmt: skip


def domain_warnings(root: str, subject_id: str, checkpoint: str) -> list[str]:
    """Warnings for a subject outside what ``checkpoint`` was trained on (the phantom's model on
    a real CT, another voxel size, intensities not in HU); once per subject and checkpoint file."""
    path = Path(checkpoint).expanduser().resolve()
    mtime = path.stat().st_mtime if path.is_file() else 0.0
    version = cached_subject(root, subject_id).folder.name
    return _domain_warnings(str(root), subject_id, str(path), version, mtime)


def _kept_prediction(key: tuple, compute) -> np.ndarray:
    """The label volume kept under ``key`` in the server-wide store, else ``compute()``'s (X, Y, Z)
    labels as a read-only (Z, X, Y) uint8 array, kept (the oldest dropped past PREDICTIONS_KEPT).
    """
    store = _prediction_store()
    with store["lock"]:
        if key in store["items"]:
            store["items"].move_to_end(key)
            return store["items"][key]
    labels_zxy = np.ascontiguousarray(np.asarray(compute(), dtype=np.uint8).transpose(2, 0, 1))
    labels_zxy.flags.writeable = False
    with store["lock"]:
        store["items"][key] = labels_zxy
        while len(store["items"]) > PREDICTIONS_KEPT:
            store["items"].popitem(last=False)
    return labels_zxy


def prediction_source(
    root: str, subject_id: str, checkpoint: str = "", folder: str = "", model: str = ""
) -> str:
    """The cache key of a subject's prediction layer (label counts, volume stats, meshes, the
    browser's NIfTI bytes): the checkpoint, the model folder's checkpoints or the folder's file
    with its modification time, and the subject's files' version (``cached.subject_version``),
    so that a best.pth rewritten by a training run, a prediction file replaced, or the CT
    changed is never shown from stale caches.
    """
    from ctseg_core.evaluation.prediction_files import find_prediction

    subject = subject_volume_id(root, subject_id)
    if checkpoint:
        path = Path(checkpoint)
        return f"pred:{path}@{path.stat().st_mtime_ns}:{subject}"
    if model:  # an nnU-Net folder (or several parts): its newest checkpoint file
        stamps = [p.stat().st_mtime_ns for p in Path(model).rglob("checkpoint_*.pth")]
        return f"model:{model}@{max(stamps, default=0)}:{subject}"
    from ctseg_core.evaluation.prediction_labels import names_stamp

    path = find_prediction(Path(folder), subject_id)
    stamp = f"{path.stat().st_mtime_ns}/{names_stamp(path)}" if path is not None else 0
    return f"folder:{path}@{stamp}:{subject}"


def folder_prediction_zxy(root: str, subject_id: str, folder: str) -> np.ndarray:
    """A subject's prediction from a folder of ``<id>.nii.gz`` files (any tool), on the subject's
    cached grid as (Z, X, Y) uint8; read once per file version, kept like checkpoint predictions.
    """
    from ctseg_core.errors import DataError
    from ctseg_core.evaluation.prediction_files import find_prediction
    from ctseg_core.evaluation.prediction_labels import names_stamp, read_named_prediction

    path = find_prediction(Path(folder), subject_id)
    if path is None:
        raise DataError(f"{folder} holds no {subject_id}.nii.gz; pick another subject or source")
    stamp = (path.stat().st_mtime, names_stamp(path))
    key = (subject_volume_id(root, subject_id), str(path.resolve()), stamp)

    def compute():  # its values in v2's, by any names that came with it
        entry = cached_subject(root, subject_id)
        return read_named_prediction(
            path, entry.shape_xyz, entry.affine, entry.original_shape, entry.original_affine
        )[0]

    return _kept_prediction(key, compute)
