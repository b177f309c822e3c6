"""Merged structures (labels.MERGES): one output trained on the union of the members, written
with the first member's value, scored against the union of the members' references."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from ctseg_core.cli import main
from ctseg_core.data.dataset_root import open_dataset
from ctseg_core.errors import ConfigError
from ctseg_core.evaluation.evaluate import evaluate_predictions
from ctseg_core.evaluation.tables import subject_rows
from ctseg_core.inference.files import predict_file
from ctseg_core.labels import (
    LABEL_OF,
    MERGES,
    NUM_LABELS,
    class_lut,
    lr_swap_lut,
    merge_lut,
    merge_structures,
    merged_annotated,
    names_of,
)
from ctseg_core.models.checkpoint import load_model
from ctseg_core.training.presets import user_config

LOBES = MERGES["lungs"]  # values 10..14


def test_a_merge_maps_its_members_to_one_class_and_one_value():
    lut = class_lut(["liver", "lungs", "spleen"])
    assert lut[LABEL_OF["liver"]] == 1 and lut[LABEL_OF["spleen"]] == 3
    assert [int(lut[LABEL_OF[n]]) for n in LOBES] == [2] * 5
    assert int(lut[LABEL_OF["trachea"]]) == 0
    values = merge_lut(["lungs"])
    assert [int(values[LABEL_OF[n]]) for n in LOBES] == [10] * 5
    assert int(values[LABEL_OF["trachea"]]) == LABEL_OF["trachea"]
    assert names_of(["lungs"])[10] == "lungs" and names_of(["liver"])[10] == LOBES[0]
    # the merge's value stays itself when mirrored: it stands for both sides
    assert int(lr_swap_lut()[10]) == 12 and int(lr_swap_lut(["lungs"])[10]) == 10
    assert merge_structures(["liver", "rib_left_3", "spleen", "rib_right_1"], ["ribs"]) == [
        "liver", "ribs", "spleen",
    ]  # fmt: skip
    assert merge_structures(["liver", "lungs"], ["lungs"]) == ["liver", "lungs"]
    annotated = np.ones((2, NUM_LABELS), dtype=bool)
    annotated[1, LABEL_OF["lung_middle_lobe_right"]] = False
    merged = merged_annotated(annotated, ["lungs"])
    assert merged[:, 10].tolist() == [True, False]  # the union is whole only with every lobe
    assert not merged[:, 11:15].any() and merged[:, 5].all()


def test_a_merge_listed_with_its_members_or_unknown_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="lungs merges lung_upper_lobe_left, also listed"):
        user_config({}, {("data", "structures"): ["lungs", "lung_upper_lobe_left"]}).validate()
    with pytest.raises(ConfigError, match="unknown merge 'bones'; known: ribs, vertebrae, lungs"):
        user_config({}, {("data", "merge"): ["bones"]})
    config = user_config({}, {("data", "merge"): ["ribs", "vertebrae"]}).validate()
    assert len(config.data.structures) == 117 - 24 - 25 + 2
    assert config.model.out_channels == 1 + 117 - 24 - 25 + 2
    assert config.data.structures.index("vertebrae") == LABEL_OF["vertebrae_S1"] - 1


def test_scores_of_a_merge_count_the_union_of_its_members():
    """Three ribs in the reference, the merge's value on two of them and on 4 background voxels:
    Dice = 2 * 20 / (30 + 24), against the union, not against rib_left_1 alone."""
    reference = np.zeros((10, 10, 3), dtype=np.uint8)
    reference[0, :, 0], reference[1, :, 0], reference[2, :, 0] = 92, 93, 104
    prediction = np.zeros_like(reference)
    prediction[0:2, :, 0] = 92
    prediction[5, 0:4, 0] = 92
    structures = ["ribs"]
    annotated = merged_annotated(np.ones(NUM_LABELS, dtype=bool), structures)
    rows = subject_rows(
        "s", merge_lut(structures)[reference], prediction, (1.0, 1.0, 1.0), annotated,
        names=names_of(structures),
    )  # fmt: skip
    (row,) = [r for r in rows if r["structure"] == "ribs"]
    assert row["dice"] == pytest.approx(40 / 54)
    assert row["ref_volume_ml"] == pytest.approx(0.030) and row["group"] == "ribs"
    assert not [r for r in rows if r["structure"].startswith("rib_")]


def _volume(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_a_merged_run_trains_predicts_the_merged_value_and_is_scored_against_the_union(
    phantom_root, tmp_path, capsys
):
    runs, cache = tmp_path / "runs", tmp_path / "cache"
    argv = ["train", "--data", str(phantom_root), "--cache", str(cache), "--checkpoints",
            str(runs), "--run", "merged", "--structures", ",".join(["liver", *LOBES]),
            "--merge", "lungs", "--size", "64", "64", "--features", "8", "16", "32", "64",
            "--bottleneck", "64", "--batch-size", "8", "--epochs", "3", "--steps-per-epoch",
            "12", "--val-slices", "6", "--amp", "off", "--minutes", "0", "--lr", "3e-3"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    run = runs / "merged"
    assert json.loads((run / "label_map.json").read_text()) == {
        "0": "background", "1": "liver", "2": "lungs",
    }  # fmt: skip
    assert set(json.loads((run / "history.jsonl").read_text().splitlines()[0])["val_dice"]) == {
        "liver", "lungs",
    }  # fmt: skip
    state = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    assert state["config"]["data"]["structures"] == ["liver", "lungs"]
    model, _ = load_model(run / "best.pth")
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 64, 64)

    sid = open_dataset(phantom_root).subjects_in("test")[0]  # a thorax: all five lobes
    out = tmp_path / "pred" / f"{sid}.nii.gz"
    summary = predict_file(phantom_root / sid / "ct.nii.gz", [run / "last.pth"], out,
                           device="cpu", statistics=True)  # fmt: skip
    predicted = _volume(out)
    # the statistics name the merged value by the merge; so does `ctseg stats` on the file
    # (its .ctbl says so)
    table = pd.read_csv(summary["statistics"]).set_index("structure")
    assert table.loc["lungs", "voxels"] == (predicted == 10).sum() and LOBES[0] not in table.index
    argv = ["stats", "--ct", str(phantom_root / sid / "ct.nii.gz"), "--labels", str(out),
            "--out", str(tmp_path / "stats.csv")]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    stats = pd.read_csv(tmp_path / "stats.csv").set_index("structure")
    assert stats.loc["lungs", "voxels"] == (predicted == 10).sum()
    assert set(np.unique(predicted).tolist()) <= {0, LABEL_OF["liver"], 10}
    assert (predicted == 10).any()  # the merged lungs, with lung_upper_lobe_left's value
    assert set(summary["structures_found"]) <= {"liver", "lungs"}
    assert "10 lungs " in next(tmp_path.glob("pred/*.ctbl")).read_text()

    results = evaluate_predictions(
        phantom_root, "test", [run / "last.pth"], tmp_path / "eval", subjects=[sid],
        cache_dir=cache, device="cpu", mesh_subjects=0,
    )  # fmt: skip
    assert set(results["structure"]) == {"liver", "lungs"}
    row = results.set_index("structure").loc["lungs"]
    seg = phantom_root / sid / "segmentations"
    union = np.zeros(predicted.shape, dtype=bool)
    for name in LOBES:
        union |= _volume(seg / f"{name}.nii.gz") > 0
    lungs = predicted == 10
    dice = 2 * (lungs & union).sum() / (lungs.sum() + union.sum())
    voxel_ml = float(np.prod(nib.load(str(out)).header.get_zooms()[:3])) / 1000
    assert row["ref_volume_ml"] == pytest.approx(union.sum() * voxel_ml, rel=1e-6)
    assert row["pred_volume_ml"] == pytest.approx(lungs.sum() * voxel_ml, rel=1e-6)
    assert row["dice"] == pytest.approx(dice, abs=1e-9)
    first = _volume(seg / f"{LOBES[0]}.nii.gz") > 0
    assert union.sum() > 1.5 * first.sum()  # scoring one lobe alone would give other numbers
    summary = pd.read_csv(tmp_path / "eval" / "summary_test.csv")
    assert summary["structure"].tolist() == ["liver", "lungs"]

    # the folder `ctseg predict` wrote, evaluated as predictions: its .ctbl names value 10
    # "lungs", so it is scored as the run is (the union of the lobes) ...
    folder = tmp_path / "pred"
    rows = evaluate_predictions(
        phantom_root, "test", folder, tmp_path / "eval_folder", subjects=[sid], cache_dir=cache,
        mesh_subjects=1,
    )  # fmt: skip
    assert rows.attrs["notes"] == []
    rows = rows.set_index("structure")
    assert rows.loc["lungs", "dice"] == pytest.approx(dice, abs=1e-9)
    page = (tmp_path / "eval_folder" / f"3d_{sid}.html").read_text()  # its 3D page names it
    assert '"name":"lungs"' in page and LOBES[0] not in page
    assert rows.loc["lungs", "ref_volume_ml"] == pytest.approx(union.sum() * voxel_ml, rel=1e-6)
    assert not set(rows.index) & set(LOBES)  # the other lobes are part of the merge
    # ... and a folder without the label files is scored per value, as any tool's
    for path in [*folder.glob("*.ctbl"), *folder.glob("*_itksnap_labels.txt")]:
        path.unlink()
    rows = evaluate_predictions(
        phantom_root, "test", folder, tmp_path / "eval_plain", subjects=[sid], cache_dir=cache,
        report=False,
    )  # fmt: skip
    # ... with a warning naming the file and the fix: value 10 and no other lobe, five lobes in
    # the reference
    (note,) = rows.attrs["notes"]
    assert note.startswith(f"{sid}.nii.gz: value 10 (lung_upper_lobe_left) is predicted")
    source = json.loads((tmp_path / "eval_plain" / "source_test.json").read_text())
    assert source["notes"] == [note]  # kept with the tables
    assert f"put {sid}.ctbl beside it with the line '10 lungs 0 0 0 255'" in note
    (folder / f"{sid}.ctbl").write_text("10 lungs 0 0 0 255\n")  # the fix, as the note says
    fixed = evaluate_predictions(
        phantom_root, "test", folder, tmp_path / "eval_fixed", subjects=[sid], cache_dir=cache,
        report=False,
    ).set_index("structure")  # fmt: skip
    assert fixed.loc["lungs", "dice"] == pytest.approx(dice, abs=1e-9)
    (folder / f"{sid}.ctbl").unlink()
    rows = rows.set_index("structure")
    assert "lungs" not in rows.index
    first_dice = 2 * (lungs & first).sum() / (lungs.sum() + first.sum())
    assert rows.loc[LOBES[0], "dice"] == pytest.approx(first_dice, abs=1e-9)
    assert abs(first_dice - dice) > 0.05


def test_a_prediction_is_questioned_as_merged_only_where_a_label_file_would_fix_it(tmp_path):
    """Value 10 and no other lobe, with the five lobes annotated and two or more in the
    reference: one note, unless a label file lists value 10 (as a lobe or as "lungs") or a lobe
    is not annotated (the merge would not be scored then, so the advice would not help)."""
    from ctseg_core.inference.label_files import unnamed_merge_notes, write_label_files

    def rows(predicted, reference, annotated=LOBES):
        return [{"structure": n, "pred_volume_ml": float(n in predicted),
                 "ref_volume_ml": float(n in reference)} for n in annotated]  # fmt: skip

    path = tmp_path / "s0000.nii.gz"
    (note,) = unnamed_merge_notes(path, rows([LOBES[0]], LOBES[:2]))
    assert note.endswith("put s0000.ctbl beside it with the line '10 lungs 0 0 0 255'")
    assert unnamed_merge_notes(path, rows([LOBES[0]], LOBES[:1])) == []  # one lobe in reference
    assert unnamed_merge_notes(path, rows(LOBES[:2], LOBES)) == []  # another lobe predicted
    assert unnamed_merge_notes(path, rows([LOBES[0]], LOBES, annotated=LOBES[:4])) == []
    write_label_files(path, [5, 10], names_of(["liver", LOBES[0]]))  # a run learning the lobe
    assert unnamed_merge_notes(path, rows([LOBES[0]], LOBES)) == []


def test_a_label_file_naming_a_merge_at_another_value_is_refused_in_one_line(tmp_path):
    from ctseg_core.errors import DataError
    from ctseg_core.inference.label_files import merges_named, write_label_files

    labels = tmp_path / "s1.nii.gz"
    assert merges_named(labels) == []  # no label file: any tool's prediction
    write_label_files(labels, [5, 10], names_of(["liver", "lungs"]))
    assert merges_named(labels) == ["lungs"]
    (tmp_path / "s1.ctbl").unlink()  # the ITK-SNAP file says the same
    assert merges_named(labels) == ["lungs"]
    write_label_files(labels, [5, 10], {5: "ribs"})
    with pytest.raises(DataError, match=r"s1.ctbl names value 5 'ribs', which ctseg writes "
                       r"with value 92; correct the file or remove it$"):  # fmt: skip
        merges_named(labels)


def test_a_model_naming_a_merge_folds_the_members_it_also_lists_into_it():
    """dataset.json of an exported merged run: "lungs" is the merge, a lobe it lists (a
    placeholder) is predicted as lungs, a name outside ctseg's stays the model's own."""
    from ctseg_core.nnunet.labels import ctseg_names, model_structures, other_names

    names = {1: "liver", 2: "lungs", 3: "lung_lower_lobe_left", 4: "my_tumour"}
    assert ctseg_names(names) == {1: "liver", 2: "lungs", 3: "lungs"}
    assert model_structures(names) == ["liver", "lungs"]
    assert other_names(names) == {4: "my_tumour"}
