"""The Train page's kind of run (2D, 2.5D, 3D): the presets it offers, its own fields (context
slices; patch size, spacing and the 3D model), and the memory estimate shown before Start.

These widgets sit outside the training form, like the preset select: changing one redraws the
page at once, so the estimate follows the patch size. The form's own values (batch size, slice
size) count from the last Start or preset choice, and Start checks the final configuration again.
"""

from __future__ import annotations

import streamlit as st

from ctseg_core.config import RunConfig
from ctseg_core.models.registry import MODELS
from ctseg_core.runs.listing import KINDS
from ctseg_core.training.memory import (
    available_bytes,
    describe_step,
    estimate_training_bytes,
    format_gb,
    run_kind,
)
from ctseg_core.training.presets import PRESETS, preset
from dashboard import state

#: the neighbouring slices a 2.5D run offers (odd: the slice in the middle)
CONTEXT_OPTIONS = (3, 5, 7, 9)
DEFAULT_CONTEXT = 5
AXES = ("x", "y", "z")


def presets_of_kind(kind: str) -> list[str]:
    """The presets a kind offers: the 3D presets for "3D", the slice presets for "2D" and
    "2.5D" (a 2.5D run is a slice preset fed neighbouring slices)."""
    want = "3D" if kind == "3D" else "2D"
    return [name for name, make in PRESETS.items() if run_kind(make("")) == want]


def volumetric_models() -> list[str]:
    """The registered models with three spatial axes (``ModelSpec.spatial_dims`` 3)."""
    return [name for name, spec in MODELS.items() if spec.spatial_dims == 3]


def kind_values(cfg: RunConfig) -> dict:
    """The kind fields' widget values (by key) that show a configuration's 3D settings."""
    k = state.TRAIN_FORM
    values = {}
    if cfg.data.patch_size is not None:
        values |= {f"{k.patch}_{a}": int(v) for a, v in zip(AXES, cfg.data.patch_size, strict=True)}
    if cfg.data.spacing_mm is not None:
        values |= {
            f"{k.spacing}_{a}": float(v) for a, v in zip(AXES, cfg.data.spacing_mm, strict=True)
        }
    if cfg.model.name in MODELS and MODELS[cfg.model.name].spatial_dims == 3:
        values[k.model3d] = cfg.model.name
    return values


def kind_picker(default_kind: str, on_change) -> str:
    """The Kind select (2D / 2.5D / 3D); ``on_change`` runs when it changes."""
    k = state.TRAIN_FORM
    if st.session_state.get(k.kind) not in KINDS:
        st.session_state[k.kind] = default_kind
    return st.segmented_control(
        "Kind",
        KINDS,
        key=k.kind,
        required=True,
        on_change=on_change,
        help="2D: one axial slice at a time. 2.5D: the slice with its neighbours as channels. "
        "3D: patches of the volume resampled to one spacing (nnU-Net's networks).",
    )


def kind_fields(
    kind: str, base: RunConfig, model: dict | None = None
) -> dict[tuple[str, str], object]:
    """The kind's own fields; returns the changes they make to ``base`` (``user_config`` form).
    ``model``: a model folder's changes (``finetune_changes``): its network, patch and spacing
    replace the 3D fields, which are then shown disabled under a caption saying what is used."""
    k = state.TRAIN_FORM
    if kind == "2.5D":
        st.session_state.setdefault(k.context, DEFAULT_CONTEXT)
        context = st.selectbox(
            "Context slices", CONTEXT_OPTIONS, key=k.context,
            help="The slice and its neighbours above and below, fed as input channels.",
        )  # fmt: skip
        return {("data", "context_slices"): int(context)}
    if kind != "3D":
        return {("data", "context_slices"): 1}
    for key, value in kind_values(base).items():
        st.session_state.setdefault(key, value)
    models = volumetric_models()
    locked = bool(model and ("model", "name") in model)
    cols = st.columns([2, 1, 1, 1, 1, 1, 1])
    name = cols[0].selectbox(
        "3D model", models, key=k.model3d, format_func=lambda n: MODELS[n].title,
        disabled=locked,
    )  # fmt: skip
    patch = [
        cols[1 + i].number_input(
            f"patch {a} (voxels)", 16, 512, step=16, key=f"{k.patch}_{a}", disabled=locked
        )
        for i, a in enumerate(AXES)
    ]
    spacing = [
        cols[4 + i].number_input(
            f"spacing {a} (mm)",
            0.1,
            10.0,
            step=0.5,
            format="%.2f",
            key=f"{k.spacing}_{a}",
            disabled=locked,
        )
        for i, a in enumerate(AXES)
    ]
    if locked:
        size = " x ".join(str(int(p)) for p in model["data", "patch_size"])
        mm = " x ".join(f"{float(v):g}" for v in model["data", "spacing_mm"])
        st.caption(
            f"Started from the model below: its {MODELS[model['model', 'name']].title}, patches "
            f"of {size} voxels at {mm} mm and its CT normalisation are used, not these fields."
        )
    return {
        ("model", "name"): name,
        ("data", "patch_size"): tuple(int(p) for p in patch),
        ("data", "spacing_mm"): tuple(float(s) for s in spacing),
        ("data", "context_slices"): 1,
    }


def memory_note(config: RunConfig) -> None:
    """The estimate of one training step's memory against what the device has free: a caption
    when it fits, a warning when Start would be refused; for a 3D run on a CPU without native
    bf16, a caption that it trains in float32 and slowly."""
    from ctseg_core import device as hardware  # cpu_has_bf16 read at call time (tests set it)
    from ctseg_core.device import resolve_device

    try:
        device = resolve_device(config.train.device)
        needed = estimate_training_bytes(config, device)
        free = available_bytes(device)
    except Exception as exc:  # the estimate must not hide the form
        state.show_warning(f"No memory estimate: {exc}")
        return
    where = "CPU memory" if device.type == "cpu" else str(device)
    text = (
        f"{run_kind(config)} run · memory: about {format_gb(needed)} for one training step "
        f"({describe_step(config)}); the {where} has {format_gb(free)} free"
    )
    if needed > free:
        state.show_warning(text + ": Start would be refused", icon=":material/memory:")
    else:
        st.caption(text)
    if run_kind(config) == "3D" and device.type == "cpu" and not hardware.cpu_has_bf16():
        st.caption(
            ":material/speed: This CPU has no native bf16 (AMX or AVX-512 BF16), so a 3D run "
            "trains in float32, slower than on a CPU that has it: on such a CPU phantom_3d "
            "reached a mean Dice of 0.78 in 10 minutes, the 2D demo 0.75 "
            "(benchmarks/phantom_quality.py). A 3D run gains from more minutes."
        )


def default_kind(preset_name: str) -> str:
    """The kind of a preset (the Kind select's first value)."""
    return run_kind(preset(preset_name))
