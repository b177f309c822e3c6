"""Whether a CT lies outside what a checkpoint was trained on: one-line warnings to show beside
its labels (``ctseg predict``'s log and notes, the Predict and Explore pages).

Five checks against the checkpoint's record (``data.domain``): a model trained on the synthetic
phantom applied to a CT that is not the phantom's; a voxel spacing more than ``SPACING_FACTOR``
times finer or coarser than the training CTs' along an axis; for a slice (2D, 2.5D) model, an
axial field of view as much smaller or larger (the model sees it resized to its slice size, so
its anatomy magnified or shrunk); for a volumetric model, an extent as much smaller along an
axis (its windows padded around little anatomy); body HU percentiles more than
``HU_MARGIN`` HU beyond the training CTs' range (a CT not in Hounsfield units, a wrong rescale,
another modality). A checkpoint without a record (written before records were kept) is checked
for the phantom only, when the dataset its config names is a phantom; others pass unchecked.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..data.domain import BODY_HU, PERCENTILES, body_hu_percentiles, is_phantom_root

#: spacing this many times finer or coarser than every training CT's counts as outside
SPACING_FACTOR = 1.5
#: a body HU percentile this far beyond the training CTs' range counts as outside
HU_MARGIN = 200.0


def checkpoint_training_data(path: str | Path) -> dict | None:
    """The training-data record of a checkpoint file, read without loading its weights.

    A checkpoint written before records were kept: ``{"source": "phantom", ...}`` when its
    config's ``data_root`` is a phantom dataset (still on this machine), else None. Raises the
    loader's one-line CtsegError for a file that is not a readable ctseg checkpoint.
    """
    import torch

    from ..models.checkpoint import load_checkpoint

    try:  # memory-mapped: the tensors are not read
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        ckpt = load_checkpoint(path)  # the same refusal as everywhere else, or a legacy file
    if not isinstance(ckpt, dict):
        return None
    record = ckpt.get("training_data")
    if isinstance(record, dict):
        return record
    root = ((ckpt.get("config") or {}).get("data") or {}).get("data_root")
    if root and is_phantom_root(root):
        return {"version": 1, "source": "phantom", "data_root": str(root)}
    return None


def outside_training_data(
    record: dict | None,
    spacing_mm: Sequence[float],
    ct_body_hu: Sequence[float] | None,
    *,
    input_is_phantom: bool,
    what: str = "the CT",
    model: str = "the checkpoint",
    field_of_view_mm: Sequence[float] | None = None,
    extent_mm: Sequence[float] | None = None,
) -> list[str]:
    """One-line warnings for a CT outside ``record`` (empty: inside it, or nothing recorded).

    ``spacing_mm``: the CT's voxel size along canonical x, y, z; ``ct_body_hu``: its
    ``body_hu_percentiles`` (None: no body voxels, which ``hu_problem`` reports);
    ``input_is_phantom``: the CT is the synthetic phantom's (``data.domain.is_phantom_ct``);
    ``field_of_view_mm``: its axial extent along x, y (voxels x spacing), None: not checked;
    ``extent_mm``: its extent along x, y, z, checked against a volumetric model's record.
    """
    if not record:
        return []
    found = []
    if record.get("source") == "phantom" and not input_is_phantom:
        found.append(
            f"{model} was trained on the synthetic phantom only, not on real CTs: its labels on "
            f"{what} do not follow the anatomy; use a checkpoint trained on real CTs"
        )
    spacing = record.get("spacing_mm")
    if spacing:
        axes = [
            f"{axis} {s:.3g} mm (trained on {lo:.3g}-{hi:.3g})"
            for axis, s, lo, hi in zip(
                "xyz", spacing_mm, spacing["min"], spacing["max"], strict=True
            )
            if s < lo / SPACING_FACTOR or s > hi * SPACING_FACTOR
        ]
        if axes:
            found.append(
                f"{what} has voxels of another size than the CTs {model} was trained on: "
                f"{', '.join(axes)}; expect poorer labels, or resample the CT nearer to that"
            )
    extent = record.get("slice_field_of_view_mm")
    if extent and field_of_view_mm is not None:
        axes = _axes_outside(field_of_view_mm, extent, larger_too=True)
        if axes:
            found.append(
                f"{what} covers another field of view than the CTs {model} was trained on: "
                f"{', '.join(axes)}; the model sees each slice resized to its own size, so the "
                "anatomy magnified or shrunk: expect poorer labels, or crop or pad the CT nearer "
                "to that"
            )
    covered = record.get("extent_mm")
    if covered and extent_mm is not None:
        axes = _axes_outside(extent_mm, covered, larger_too=False)
        if axes:
            found.append(
                f"{what} covers much less than the CTs {model} was trained on: "
                f"{', '.join(axes)}; its windows are padded around it, with little context: "
                "expect poorer labels"
            )
    body = record.get("body_hu")
    if body and ct_body_hu is not None and body.get("percentiles") == list(PERCENTILES):
        off = [
            f"p{q} {v:.0f} HU (trained on {lo:.0f} to {hi:.0f})"
            for q, v, lo, hi in zip(PERCENTILES, ct_body_hu, body["min"], body["max"], strict=True)
            if v < lo - HU_MARGIN or v > hi + HU_MARGIN
        ]
        if off:
            found.append(
                f"the intensities of {what} are unlike those of the CTs {model} was trained on "
                f"(voxels >= {BODY_HU} HU: {', '.join(off)}): is it a CT in Hounsfield units, "
                "with its rescale applied? Expect poorer labels"
            )
    return found


def _axes_outside(extent_mm: Sequence[float], trained: dict, larger_too: bool) -> list[str]:
    """ "x 95 mm (trained on 240-260)" for each axis of ``extent_mm`` (x, y[, z]) more than
    ``SPACING_FACTOR`` times smaller than ``trained``'s "min" (or, ``larger_too``, larger
    than its "max")."""
    return [
        f"{axis} {v:.0f} mm (trained on {lo:.0f}-{hi:.0f})"
        for axis, v, lo, hi in zip("xyz", extent_mm, trained["min"], trained["max"], strict=False)
        if v < lo / SPACING_FACTOR or (larger_too and v > hi * SPACING_FACTOR)
    ]


def domain_warnings(
    checkpoints: Sequence[str | Path],
    ct_zxy: np.ndarray,
    spacing_mm: Sequence[float],
    *,
    input_is_phantom: bool,
    what: str = "the CT",
    names: Sequence[str] | None = None,
    records: Sequence[dict | None] | None = None,
) -> list[str]:
    """``outside_training_data`` for each checkpoint of an ensemble, reading their records.

    ``ct_zxy``: (Z, X, Y) HU (``Volume.array.transpose(2, 0, 1)``, a view); ``names``: how to
    call each checkpoint (default ``<run folder>/<file>``); ``records``: their
    ``checkpoint_training_data``, read once by a caller that checks many CTs (default: read).
    """
    paths = [Path(p) for p in checkpoints]
    names = list(names) if names else [f"{p.parent.name}/{p.name}" for p in paths]
    if records is None:
        records = [checkpoint_training_data(p) for p in paths]
    ct_body_hu = body_hu_percentiles(ct_zxy)
    extent = [n * s for n, s in zip(ct_zxy.shape[1:], spacing_mm[:2], strict=True)]
    whole = [*extent, ct_zxy.shape[0] * spacing_mm[2]]
    found: list[str] = []
    for record, name in zip(records, names, strict=True):
        found += outside_training_data(record, spacing_mm, ct_body_hu,
                                       input_is_phantom=input_is_phantom, what=what, model=name,
                                       field_of_view_mm=extent, extent_mm=whole)  # fmt: skip
    return found


def split_domain_notes(found: dict[str, list[str]], scored: int, shown: int = 3) -> list[str]:
    """Notes for an evaluation from each scored subject's ``domain_warnings`` (``found``: id ->
    its warnings, none for a subject inside the training data): the first ``shown`` subjects'
    warnings, then one line counting the others (a phantom model on a real dataset would
    otherwise repeat one warning per subject)."""
    outside = [sid for sid, warnings in found.items() if warnings]
    notes = [w for sid in outside[:shown] for w in found[sid]]
    if len(outside) > shown:
        notes.append(
            f"{len(outside)} of the {scored} scored subjects lie outside what the checkpoint "
            f"was trained on ({len(outside) - shown} more than those named above): expect "
            "lower scores than on CTs like its training CTs"
        )
    return notes
