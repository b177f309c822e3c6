"""The st.cache_* wrappers of nnU-Net model folders: the models under ``$CTSEG_MODELS``, their
loaded predictors and their predictions of cached subjects (kept with the checkpoints' in
``cached_predictions``' store).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from ctseg_core import settings
from dashboard.cached import cached_subject, subject_volume_id
from dashboard.cached_predictions import _kept_prediction


@st.cache_resource(show_spinner=False, ttl=30, max_entries=8)
def _models(roots: tuple[str, ...], data_roots: str) -> tuple[dict, dict]:
    from ctseg_core.nnunet.listing import list_models, model_labels

    skipped: dict[str, str] = {}
    labels = model_labels(list_models([Path(r) for r in roots], skipped))
    return labels, skipped


def _model_listing() -> dict:
    """label -> ModelEntry of the models under the model roots (looked at again after 30 s)."""
    roots = tuple(str(r) for r in settings.model_roots())
    return _models(roots, ":".join(settings.data_root_entries() or []))[0]


def show_skipped_models() -> None:
    """One warning line per folder under ``$CTSEG_MODELS`` left out of the model pickers (not
    a valid model, unreadable, or outside the allowed data roots), with its reason; shown
    under each picker that lists the models."""
    from dashboard.state import plain

    roots = tuple(str(r) for r in settings.model_roots())
    for reason in _models(roots, ":".join(settings.data_root_entries() or []))[1].values():
        st.warning(plain(f"Model left out: {reason}"), icon=":material/warning:")


def all_models() -> dict[str, object]:
    """Picker option (``state.MODEL_PREFIX`` + path) -> ``nnunet.listing.ModelEntry`` of every
    nnU-Net model under ``$CTSEG_MODELS``, by label (a copied-in model appears within 30 s)."""
    from dashboard.state import MODEL_PREFIX

    return {MODEL_PREFIX + str(entry.path): entry for entry in _model_listing().values()}


def model_titles() -> dict[str, str]:
    """Picker option -> the label it is shown with ("nnU-Net 3d_fullres: Dataset123_X (folds
    0,1)", with the path after it when two models share it)."""
    from dashboard.state import MODEL_PREFIX

    return {MODEL_PREFIX + str(entry.path): label for label, entry in _model_listing().items()}


@st.cache_resource(show_spinner=False, max_entries=2)
def _model_predictor(path: str, stamp: float):
    from ctseg_core.nnunet.model import NnunetPredictor

    return NnunetPredictor(path, device="auto", tta=True)


def _model_stamp(path: Path) -> float:
    """The newest mtime of a model's checkpoints (a retrained fold is loaded again)."""
    files = [*path.glob("fold_*/checkpoint_*.pth"), *path.glob("*/*/fold_*/checkpoint_*.pth")]
    return max((f.stat().st_mtime for f in files), default=0.0)


def model_predictor(path: str):
    """The loaded ``NnunetPredictor`` of a model folder (mirroring on, as ``ctseg predict
    --model``), kept for the two models used last."""
    return _model_predictor(str(path), _model_stamp(Path(path)))


def model_prediction_zxy(root: str, subject_id: str, model: str, progress=None) -> np.ndarray:
    """Prediction of an nnU-Net model folder on a cached subject, (Z, X, Y) uint8 ctseg values;
    computed once, kept like a checkpoint's (``progress`` only when computed)."""
    key = (subject_volume_id(root, subject_id), f"model:{model}", _model_stamp(Path(model)))

    def compute():
        entry = cached_subject(root, subject_id)
        return model_predictor(model).predict(entry.ct_volume(), progress=progress)

    return _kept_prediction(key, compute)


def model_names(model: str) -> dict[int, str]:
    """Value -> merge name of the merges an nnU-Net model predicts (its dataset.json names
    one, as an exported merged run's does); {} for none."""
    from dashboard.helpers.layer_names import merged_names

    return merged_names(model_predictor(model).structures)
