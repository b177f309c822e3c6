"""The full check of a run configuration before training: settings, registries, model, data.

``RunConfig.validate()`` checks what a config can tell by itself; this adds what needs the
registries (model, loss, optimizer, scheduler, mixed precision), the model's own limits and,
on request, the dataset's splits. Every problem found is named in one ConfigError. Beside it,
what a start says without refusing: checkpoints that will not all fit on the disk, learned
structures that no subject of a split annotates, validation subjects that are training ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data.dataset_root import check_splits
from ..device import AMP_MODES
from ..errors import ConfigError
from ..labels import merged_annotated, value_of
from ..models import build_model
from ..models.checkpoint import estimated_checkpoint_bytes
from ..models.registry import MODELS, model_spec
from ..runs.run_folder import check_disk_space
from .losses import LOSSES
from .optim import OPTIMIZERS, SCHEDULERS


def registry_problems(cfg: RunConfig) -> list[str]:
    """What the registries refuse in ``cfg`` (unknown names, a loss that trains another output)."""
    m, t = cfg.model, cfg.train
    problems = [
        f"{what} {value!r} is not one of {', '.join(known)}"
        for what, value, known in (
            ("model", m.name, MODELS),
            ("loss", t.loss, LOSSES),
            ("optimizer", t.optimizer, OPTIMIZERS),
            ("scheduler", t.scheduler, SCHEDULERS),
            ("amp", t.amp, AMP_MODES),
        )
        if value not in known
    ]
    loss = LOSSES.get(t.loss)
    if loss is not None and loss.output_mode != m.output:
        problems.append(
            f"loss {t.loss!r} trains a {loss.output_mode} output but the model's output is "
            f"{m.output!r}; set model.output to {loss.output_mode!r} "
            "(training.presets.user_config does)"
        )
    if m.name in MODELS:
        problems.extend(MODELS[m.name].check(cfg))
    return problems


def check_run_config(cfg: RunConfig, check_data: bool = False) -> RunConfig:
    """Raise ConfigError on settings that cannot work; return ``cfg``.

    With ``check_data`` the dataset is opened and the train and validation splits must hold at
    least one subject each.
    """
    try:
        cfg.validate()
        static = []
    except ConfigError as exc:
        static = [str(exc).removeprefix("invalid settings: ")]
    problems = static + registry_problems(cfg)
    if problems:
        raise ConfigError("invalid settings: " + "; ".join(problems))
    if check_data:
        d = cfg.data
        check_splits(d.data_root, d.train_split, d.val_split, seed=d.seed)
    return cfg


def disk_space_warning(cfg: RunConfig, run_dir: Path, done_epochs: int) -> str | None:
    """Refuse a start without room for best.pth and last.pth (CtsegError); a one-line warning
    when the checkpoint_epoch<N>.pth files still to come will not fit, else None."""
    t = cfg.train
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        size = estimated_checkpoint_bytes(build_model(cfg.model), t.optimizer)
    every = t.checkpoint_every
    files = t.epochs // every - done_epochs // every if every else 0
    return check_disk_space(run_dir, size, files)


#: settings one kind of model does not use: given for the other kind, they are refused
SLICE_ONLY = {("data", "target_size"): "--size", ("data", "val_slices_per_subject"): "--val-slices"}
VOLUME_ONLY = {("data", "patch_size"): "--patch-size", ("data", "spacing_mm"): "--spacing",
               ("data", "padding"): "--padding"}  # fmt: skip


def unused_settings(cfg: RunConfig, given: set[tuple[str, str]]) -> str | None:
    """One line naming a setting ``given`` (section, field) that ``cfg``'s kind of model does
    not use (a 2D model's slice size for a 3D one, a 3D model's patch for a 2D one), or None:
    kept in config.json unused, it would read as if it had mattered."""
    try:
        volumetric = model_spec(cfg.model.name).spatial_dims == 3
    except ConfigError:  # an unknown model: check_run_config names it
        return None
    unused = [flag for key, flag in (SLICE_ONLY if volumetric else VOLUME_ONLY).items()
              if key in given]  # fmt: skip
    if not unused:
        return None
    kind, other = ("3D", "2D") if volumetric else ("2D", "3D")
    return (
        f"{', '.join(unused)} {'is a setting' if len(unused) == 1 else 'are settings'} of {other} "
        f"models, and {cfg.model.name} is a {kind} model: leave {'it' if len(unused) == 1 else 'them'} out"
    )


def unannotated_warnings(
    train_annotated: np.ndarray, val_annotated: np.ndarray, structures: Sequence[str]
) -> list[str]:
    """One line per split for the learned structures that none of its subjects annotates.

    ``*_annotated``: (S, 118) bool per label value (a mask file exists); a merge counts where
    all its members are annotated. Unannotated in training, a structure's output learns nothing
    (and its prior keeps it from ever being predicted); in validation, the mean validation Dice
    leaves it out. A misnamed mask file (not a TotalSegmentator v2 name) is the usual cause, a
    mask on another grid than its CT (left out, ``data.subject``) the other.
    """
    warnings = []
    for what, annotated, effect in (
        ("training", train_annotated, "their outputs learn nothing and are hardly ever predicted"),
        ("validation", val_annotated, "the mean validation Dice leaves them out"),
    ):
        table = merged_annotated(np.asarray(annotated, dtype=bool), structures)
        missing = [s for s in structures if not table[:, value_of(s)].any()]
        if missing:
            named = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            warnings.append(
                f"{len(missing)} of the {len(structures)} structures this run learns are "
                f"annotated in no {what} subject ({named}): {effect}; check their mask file "
                "names and grids (`ctseg info` lists unknown names and masks on another grid "
                "than their CT) or leave them out of the run"
            )
    return warnings


def split_overlap_warning(
    train_ids: Sequence[str], val_ids: Sequence[str], train_split: str, val_split: str
) -> str | None:
    """One line when the validation subjects include training ones (``train_split`` "all", or
    the same split twice), else None. Their Dice is measured on CTs the model trains on: it
    overstates the Dice, and best.pth and early stopping are chosen on it. Meant for a final
    model trained on every subject; so it is said, not refused."""
    shared = sorted(set(train_ids) & set(val_ids))
    if not shared:
        return None
    named = ", ".join(shared[:3]) + (" ..." if len(shared) > 3 else "")
    return (
        f"the training split {train_split!r} and the validation split {val_split!r} share "
        f"{len(shared)} of the {len(set(val_ids))} validation subjects ({named}): their Dice is "
        "measured on CTs the model trains on, so it overstates the Dice and best.pth is chosen "
        "on it; choose splits without a subject in common unless that is meant (a final model "
        "trained on every subject)"
    )
