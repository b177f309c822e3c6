"""Evaluate's per-subject table: worst subject first, its worst structure's Dice as numpy counts
it; selecting a row opens Explore on that subject with the prediction and the 3D view."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from ctseg_core.data.cache import open_cached
from ctseg_core.data.dataset_root import open_dataset
from ctseg_core.labels import LABEL_OF, NAME_OF


def _predictions_with_half_a_liver(dirs, folder, subjects) -> str:
    """Each subject's reference as its prediction, but the second subject's liver loses its
    upper half of slices (written as a NIfTI on the CT's grid); returns that subject."""
    folder.mkdir(parents=True, exist_ok=True)
    for sid in subjects:
        entry = open_cached(dirs["data"], sid, dirs["cache"])
        labels_xyz = np.array(entry.labels_xyz())
        if sid == subjects[1]:
            z = np.flatnonzero((labels_xyz == LABEL_OF["liver"]).any(axis=(0, 1)))
            top = labels_xyz[:, :, z[len(z) // 2] :]
            top[top == LABEL_OF["liver"]] = 0
        nib.save(nib.Nifti1Image(labels_xyz, entry.affine), folder / f"{sid}.nii.gz")
    return subjects[1]


def test_a_subject_row_opens_its_slices_and_meshes_in_explore(
    app_env, tmp_path, evaluate_folder, no_problems
):
    ids = open_dataset(app_env["data"]).subjects  # 6, of every split: scored on "all"
    damaged = _predictions_with_half_a_liver(app_env, tmp_path / "preds", ids)
    at = evaluate_folder(tmp_path / "preds", split="all")
    no_problems(at)
    table = next(d for d in at.dataframe if "worst structure" in d.value.columns).value
    assert sorted(table["subject"]) == sorted(ids)
    # the damaged subject first, its liver the worst structure, with the Dice numpy counts
    entry = open_cached(app_env["data"], damaged, app_env["cache"])
    ref = np.asarray(entry.labels) == LABEL_OF["liver"]
    z = np.flatnonzero(ref.any(axis=(1, 2)))
    pred = ref.copy()
    pred[z[len(z) // 2] :] = False
    dice = 2 * (ref & pred).sum() / (ref.sum() + pred.sum())
    first = table.iloc[0]
    assert first["subject"] == damaged and first["worst structure"] == "liver"
    assert abs(first["worst Dice"] - dice) < 1e-3 and dice < 0.9
    others = table.iloc[1:]
    assert (others["mean Dice"] == 1.0).all() and (others["worst Dice"] == 1.0).all()
    present = {NAME_OF[k] for k in np.flatnonzero(entry.voxel_counts[1:]) + 1}
    assert first["structures scored"] == len(present) and first["missed"] == 0

    at.session_state["ctseg_eval_subject_rows_0"] = {
        "selection": {"rows": [0], "columns": [], "cells": []}
    }
    at.run()
    no_problems(at)
    assert at.session_state["ctseg_explore_subject"] == damaged
    assert at.selectbox(key="ctseg_explore_checkpoint").value == f"folder: {tmp_path / 'preds'}"
    assert at.get("image")[0].proto.imgs[0].caption.startswith("reference | prediction")
    number = at.slider(key="ctseg_explore_slice_axial").value  # at the liver's largest slice
    per_slice = ref.sum(axis=(1, 2))
    assert per_slice[number - 1] == per_slice.max()
    assert "ctseg_explore_zoom" not in at.session_state  # the whole slice, every structure
    assert at.multiselect(key="ctseg_explore_structures").value == []
    assert at.toggle(key="ctseg_explore_show3d").value is True
    meshes = at.multiselect(key="ctseg_explore_mesh_structures").value
    assert meshes[0] == "liver" and len(meshes) == min(3, len(present))
    assert at.get("plotly_chart"), "no 3D view"
    # back on Evaluate, the row that opened Explore does not open it again
    at.switch_page("app_pages/evaluate.py")
    at.run()
    no_problems(at)
    assert any("worst structure" in d.value.columns for d in at.dataframe)
    assert at.session_state["ctseg_eval_opened"] == 1
