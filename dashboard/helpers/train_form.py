"""The Train page's form: presets, the settings users change most, and the RunConfig they make.

The preset select sits outside the form (choosing one rewrites the form at once); the rest is an
``st.form``, so moving a slider does not rerun the page.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import streamlit as st

from ctseg_core.access import check_allowed_path
from ctseg_core.config import RunConfig
from ctseg_core.errors import ConfigError
from ctseg_core.labels import MERGES
from ctseg_core.nnunet.finetune import finetune_changes
from ctseg_core.training.losses import LOSSES
from ctseg_core.training.memory import run_kind
from ctseg_core.training.optim import SCHEDULERS
from ctseg_core.training.parts import PATCH_STEPS
from ctseg_core.training.presets import PRESETS, preset, user_config
from dashboard import cached, state
from dashboard.helpers.train_kind import (
    kind_fields,
    kind_picker,
    kind_values,
    memory_note,
    presets_of_kind,
)

#: log-spaced (about x2 per step), plus every preset's own value so a preset shows exactly
LR_OPTIONS = sorted(
    {1e-5, 3e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 4e-3, 8e-3, 1e-2, 3e-2}
    | {make().train.lr for make in PRESETS.values()}
)
#: the Epochs slider's end: every preset's own value fits (gpu_3d: nnU-Net's 1000)
MAX_EPOCHS = max(200, *(make().train.epochs for make in PRESETS.values()))
WIDTHS = {"tiny (8)": 8, "small (16)": 16, "base (32)": 32, "wide (64)": 64}


def form_values(cfg: RunConfig) -> dict:
    """The form's widget values (by key) that show a configuration."""
    k = state.TRAIN_FORM
    width = cfg.model.features[0]
    return {
        k.epochs: cfg.train.epochs,
        k.minutes: float(cfg.train.minutes or 0.0),
        k.lr: min(LR_OPTIONS, key=lambda v: abs(math.log(v / cfg.train.lr))),
        k.batch: cfg.data.batch_size,
        k.size: cfg.data.target_size[0],
        k.width: next((n for n, w in WIDTHS.items() if w == width), "base (32)"),
        k.loss: cfg.train.loss,
        k.scheduler: cfg.train.scheduler,
        k.augment: cfg.data.augment,
        k.steps: cfg.train.steps_per_epoch or 0,
        k.val: cfg.data.val_slices_per_subject or 0,
        k.checkpoint_every: cfg.train.checkpoint_every,
        # an exact value typed beside the slider wins; 0 (or a preset's listed value) = slider
        k.lr_exact: 0.0 if cfg.train.lr in LR_OPTIONS else float(cfg.train.lr),
        k.tensorboard: cfg.train.tensorboard,
    }


def default_preset(root: str, kind: str = "2D") -> str:
    """For a slice kind: phantom_demo on a phantom dataset (the demo's or one made by
    ``ctseg demo-data``), else gpu where CUDA is present, else cpu. For 3D: gpu_3d on a real
    dataset where CUDA is present, else phantom_3d (the laptop's)."""
    from ctseg_core.data.phantom.dataset import MARKER

    phantom = (Path(root) / MARKER).is_file()
    import torch

    if kind == "3D":
        return "gpu_3d" if torch.cuda.is_available() and not phantom else "phantom_3d"
    if phantom:
        return "phantom_demo"
    return "gpu" if torch.cuda.is_available() else "cpu"


def preset_picker(root: str) -> RunConfig:
    """The Kind and preset selects; choosing either rewrites the form. Returns the preset's
    configuration."""
    k = state.TRAIN_FORM

    def apply() -> None:
        cfg = preset(st.session_state[k.preset], root)
        st.session_state.update(form_values(cfg) | kind_values(cfg))

    def kind_changed() -> None:
        kind = st.session_state[k.kind]
        if st.session_state.get(k.preset) not in presets_of_kind(kind):
            st.session_state[k.preset] = default_preset(root, kind)
            apply()

    if k.preset not in st.session_state:
        st.session_state[k.preset] = default_preset(root)
    kind = kind_picker(run_kind(preset(st.session_state[k.preset])), kind_changed)
    names = presets_of_kind(kind)
    if st.session_state[k.preset] not in names:  # e.g. a kind kept from another visit
        st.session_state[k.preset] = names[0]
    name = st.selectbox(
        "Start from preset",
        names,
        key=k.preset,
        on_change=apply,
        help="Fills the form; settings not on the form (HU window, augmentation strengths, "
        "early stopping) come from the preset too.",
    )
    base = preset(name, root)
    for key, value in form_values(base).items():
        st.session_state.setdefault(key, value)  # first visit: the form shows the preset
    return base


def build_config(root: str, present: list[str]) -> RunConfig | None:
    """The training form; returns the config (the preset with the form's values) on Start."""
    k = state.TRAIN_FORM
    base = preset_picker(root)
    kind = st.session_state[k.kind]
    volumetric = kind == "3D"
    model_changes, model_error = {}, None
    if volumetric:  # a model folder's network, grid and normalisation replace the kind's
        try:  # the folder as last typed (its box comes below the fields it replaces)
            model_changes = _model_changes(base.model.deep_supervision)
        except ConfigError as exc:
            model_error = exc
    kind_changes = kind_fields(kind, base, model_changes)
    if volumetric:
        model_picker()
    kind_changes |= model_changes
    st.session_state.setdefault(k.only_present, True)
    memory_note(user_config(base, _changes(base, kind_changes, volumetric, present)))
    with st.form("train_form", enter_to_submit=False):  # Enter in the run name: no start
        c1, c2, c3 = st.columns(3)
        c1.slider("Epochs", 1, MAX_EPOCHS, key=k.epochs)
        c1.number_input(
            "Time budget (minutes, 0 = none)",
            0.0,
            10000.0,
            step=1.0,
            key=k.minutes,
            help="Training stops before an epoch that would not fit (Epochs is then an upper "
            "bound), and the cosine and poly schedules decay over the epochs that fit, "
            "estimated from the first ones. Preparing the data is not counted.",
        )
        c1.select_slider(
            "Learning rate (log scale)", LR_OPTIONS, format_func=lambda v: f"{v:.0e}", key=k.lr
        )
        c1.number_input(
            "Exact learning rate (0 = the slider's)",
            min_value=0.0,
            max_value=10.0,
            step=1e-5,
            format="%.2e",
            key=k.lr_exact,
            help="Type any value, e.g. 3.3e-4; it replaces the slider's value when not 0.",
        )
        c1.select_slider("Batch size", [1, 2, 4, 8, 16, 32], key=k.batch)
        if not volumetric:  # a 3D run's patch and widths are its own (above; the preset's)
            c2.select_slider("Target size (px)", [64, 96, 128, 192, 256, 384, 512], key=k.size)
            c2.selectbox("Model width", list(WIDTHS), key=k.width)
        c2.selectbox("Loss", list(LOSSES), format_func=lambda n: LOSSES[n].title, key=k.loss)
        c3.selectbox(
            "Scheduler",
            list(SCHEDULERS),
            format_func=lambda n: SCHEDULERS[n].title,
            key=k.scheduler,
        )
        c3.toggle("Augmentation", key=k.augment)
        c3.toggle(
            f"Only the {len(present)} present structures",
            key=k.only_present,
            help="The structures with voxels somewhere in this dataset. Off: all 117 "
            "TotalSegmentator structures (absent ones still get an output).",
        )
        with st.expander("Advanced"):
            a1, a2, a3 = st.columns(3)
            if volumetric:  # an epoch of patches; validation on whole volumes (no slices)
                patches = base.data.samples_per_epoch or PATCH_STEPS * base.data.batch_size
                steps = f"0 = the preset's {patches} patches, in batches"
            else:
                steps = "0 = one pass over the training slices"
            a1.number_input(f"Steps per epoch ({steps})", 0, 100000, key=k.steps)
            if not volumetric:
                a2.number_input("Validation slices per subject (0 = all)", 0, 10000, key=k.val)
            a3.number_input(
                "Keep checkpoint_epoch<N>.pth every N epochs (0 = none)",
                0,
                1000,
                key=k.checkpoint_every,
                help="best.pth and last.pth are always written. A checkpoint of the seed model "
                "with its Adam state takes about 93 MB.",
            )
            a1.checkbox(
                "Write TensorBoard files",
                key=k.tensorboard,
                help="Scalars per step and epoch and the sample images in <run>/tensorboard/; "
                "`tensorboard --logdir <checkpoints folder>` shows every run that has them.",
            )
        run_name = st.text_input(
            "Run name (empty = timestamp)",
            placeholder=dt.datetime.now().strftime("run-%Y%m%d-%H%M%S"),
            max_chars=100,
            key=k.run_name,
        )
        start = st.form_submit_button("Start", type="primary", icon=":material/play_arrow:")
    if not start:
        return None
    if model_error is not None:
        state.show_error(model_error, "cannot start from the model")
        return None
    changes = {
        ("data", "data_root"): root,
        ("data", "cache_dir"): str(cached.cache_dir()),
        **_changes(base, kind_changes, volumetric, present),
    }
    return user_config(base, changes, run_name=run_name.strip())


def model_picker() -> None:
    """A 3D run's "Start from a model": an nnU-Net model folder and its fold (outside the form,
    so the memory estimate follows the model at once)."""
    k = state.TRAIN_FORM
    with st.expander("Start from a model", expanded=bool(st.session_state.get(k.init_from))):
        m1, m2 = st.columns([4, 1])
        m1.text_input(
            "nnU-Net model folder (empty = random weights)",
            key=k.init_from,
            placeholder="~/.totalsegmentator/nnunet/results/Dataset291_.../"
            "nnUNetTrainer__nnUNetPlans__3d_fullres",
            help="Fine-tune its weights: its network, patch, spacing and CT normalisation "
            "replace the 3D settings above; the structures it has keep its output channels, "
            "new ones start fresh.",
        )
        m2.text_input("Fold (empty = the first)", key=k.init_fold)
        st.multiselect(
            "Merge structures",
            list(MERGES),
            key=k.merge,
            help="Each merge is learned as one structure in place of its members: one output "
            "trained on their union, started from the model's member outputs, written with "
            "its first member's label value and scored against the union.",
        )


def _model_changes(deep_supervision: int) -> dict:
    """``finetune_changes`` of the model folder named on the form ({} when none is; the
    preset's ``deep_supervision`` clamped to the model's stages) and the merges picked."""
    k = state.TRAIN_FORM
    merges = list(st.session_state.get(k.merge) or [])
    changes = {("data", "merge"): merges} if merges else {}
    path = str(st.session_state.get(k.init_from) or "").strip()
    if not path:
        return changes
    folder = check_allowed_path(path)  # a served dashboard reads inside its data roots only
    fold = str(st.session_state.get(k.init_fold) or "").strip() or None
    return finetune_changes(folder, fold, deep_supervision=deep_supervision) | changes


def _changes(base: RunConfig, kind_changes: dict, volumetric: bool, present: list[str]) -> dict:
    """The form's settings (as last submitted, or the preset's) and the kind's fields as
    ``user_config`` changes to ``base``; ``present``: the dataset's structures with voxels."""
    v = {name: st.session_state[getattr(state.TRAIN_FORM, name)] for name in (
        "epochs", "minutes", "lr", "batch", "size", "width", "loss", "scheduler", "augment",
        "steps", "val", "checkpoint_every", "lr_exact", "tensorboard")}  # fmt: skip
    changes = {
        ("data", "batch_size"): v["batch"],
        ("data", "augment"): v["augment"],
        ("data", "val_slices_per_subject"): v["val"] or None,
        ("train", "epochs"): v["epochs"],
        ("train", "minutes"): float(v["minutes"]) or None,
        ("train", "lr"): float(v["lr_exact"]) or v["lr"],
        ("train", "tensorboard"): bool(v["tensorboard"]),
        ("train", "loss"): v["loss"],
        ("train", "scheduler"): v["scheduler"],
        ("train", "steps_per_epoch"): v["steps"] or None,
        ("train", "checkpoint_every"): v["checkpoint_every"],
        **kind_changes,
    }
    if st.session_state[state.TRAIN_FORM.only_present] and present:
        changes["data", "structures"] = list(present)
    if not volumetric:
        w = WIDTHS[v["width"]]
        changes |= {
            ("data", "target_size"): (v["size"], v["size"]),
            ("model", "features"): [w, 2 * w, 4 * w, 8 * w],
            # the preset's bottleneck-to-width ratio (16 for the seed model, 32 for the demo)
            ("model", "bottleneck"): base.model.bottleneck * w // base.model.features[0],
        }
    return changes
