"""A prediction's values read by the names that came with it (``evaluation.prediction_labels``):
an nnU-Net output folder's dataset.json (written by nnU-Net's own predictor), ``ctseg predict
--model``'s ``<id>_labels.json``, a TotalSegmentator ``--ml`` file's header label table. They
were read as TotalSegmentator v2 values whatever the names said (found by a review: liver at
value 2 was scored as kidney_right, every named structure "mislocated" or "missed")."""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from nnunet_kit import LABELS, write_model_folder

from ctseg_core.cli import main
from ctseg_core.errors import DataError
from ctseg_core.evaluation.evaluate import evaluate_predictions
from ctseg_core.evaluation.prediction_labels import prediction_names
from ctseg_core.labels import LABEL_OF

pytest.importorskip("nnunetv2")

KEY = ["subject", "structure"]
SCORES = ["dice", "iou", "hd95_mm", "surface_dice", "ref_volume_ml", "pred_volume_ml", "status"]


def _model(root):
    """A small random 2D nnU-Net model whose labels are its own: spleen 1, liver 2, aorta 3 (v2:
    1, 5, 52) and my_tumour 4 (no v2 structure)."""
    return write_model_folder(root, "2d", [5.0, 4.0], [32, 32], [0, 2, 1], mirror_axes=(0, 1))


def _nnunet_output(model, ct, out):
    """``out`` as nnU-Net's own predictor fills it: ``s0000.nii.gz``, dataset.json, plans.json."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    source = out.parent / "nnunet_input"
    source.mkdir()
    shutil.copyfile(ct, source / "s0000_0000.nii.gz")
    out.mkdir()
    predictor = nnUNetPredictor(use_mirroring=True, perform_everything_on_device=False,
                                device=torch.device("cpu"), allow_tqdm=False)  # fmt: skip
    predictor.initialize_from_trained_model_folder(str(model), (0,), "checkpoint_final.pth")
    predictor.predict_from_files_sequential(str(source), str(out), overwrite=True)
    return out


def _scores(table):
    return table.set_index(KEY)[SCORES].sort_index()


def _in_v2_values(folder, out, table):
    """A copy of ``folder``'s s0000.nii.gz with its values replaced by the v2 values the model's
    names stand for (my_tumour to background), and no table beside it."""
    img = nib.load(folder / "s0000.nii.gz")
    lut = np.zeros(256, np.uint8)
    for name, value in table.items():
        lut[value] = LABEL_OF.get(name, 0)
    out.mkdir()
    nib.save(nib.Nifti1Image(lut[np.asarray(img.dataobj)], img.affine, img.header),
             out / "s0000.nii.gz")  # fmt: skip
    return out


def test_an_nnunet_output_folder_is_scored_by_its_dataset_json(tmp_path, s0000_root):
    out = _nnunet_output(_model(tmp_path / "model"), s0000_root / "s0000" / "ct.nii.gz",
                         tmp_path / "nnunet_out")  # fmt: skip
    assert json.loads((out / "dataset.json").read_text())["labels"] == LABELS  # nnU-Net's copy
    raw = np.asarray(nib.load(out / "s0000.nii.gz").dataobj)
    assert {2, 3, 4} <= set(np.unique(raw))  # the random model labels liver, aorta, my_tumour
    cache = tmp_path / "cache"
    named = evaluate_predictions(s0000_root, "all", out, tmp_path / "ev", report=False,
                                 cache_dir=cache)  # fmt: skip
    # the model labels spleen, liver and aorta: only they are scored (not 114 "missed")
    assert sorted(named["structure"]) == ["aorta", "liver", "spleen"]
    plain = _in_v2_values(out, tmp_path / "v2", LABELS)
    expected = evaluate_predictions(s0000_root, "all", plain, tmp_path / "ev2", report=False,
                                    cache_dir=cache)  # fmt: skip
    expected = expected[expected["structure"].isin(["aorta", "liver", "spleen"])]
    pd.testing.assert_frame_equal(_scores(named), _scores(expected))
    notes = json.loads((tmp_path / "ev" / "source_all.json").read_text())["notes"]
    assert notes == [
        "s0000.nii.gz: dataset.json names 1 value as no TotalSegmentator v2 structure "
        "(4 'my_tumour'): not scored, read as background"
    ]


def test_ctseg_predict_of_a_model_with_its_own_labels_is_scored_as_the_model_is(
    tmp_path, s0000_root, capsys
):
    """``ctseg predict --model`` writes a model's own values and ``<id>_labels.json``; its
    evaluation equals ``ctseg evaluate --model`` of the same model on the same CT."""
    model = _model(tmp_path / "model")
    preds = tmp_path / "preds"
    assert main(["predict", "--model", str(model), "--ct", str(s0000_root / "s0000" / "ct.nii.gz"),
                 "--out", str(preds / "s0000.nii.gz"), "--device", "cpu"]) == 0  # fmt: skip
    assert json.loads((preds / "s0000_labels.json").read_text())["2"] == "liver"
    common = ["--data", str(s0000_root), "--split", "all", "--no-report", "--cache",
              str(tmp_path / "cache")]  # fmt: skip
    assert main(["evaluate", "--predictions", str(preds), "--out", str(tmp_path / "a"),
                 *common]) == 0  # fmt: skip
    assert main(["evaluate", "--model", str(model), "--out", str(tmp_path / "b"), "--device",
                 "cpu", *common]) == 0  # fmt: skip
    by_file, by_model = (pd.read_csv(tmp_path / x / "evaluation_results_all.csv") for x in "ab")
    assert sorted(by_file["structure"]) == ["aorta", "liver", "spleen"]
    pd.testing.assert_frame_equal(_scores(by_file), _scores(by_model))
    capsys.readouterr()
    assert main(["stats", "--ct", str(s0000_root / "s0000" / "ct.nii.gz"), "--labels",
                 str(preds / "s0000.nii.gz"), "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)
    assert {r["structure"] for r in rows} <= {"spleen", "liver", "aorta"}
    # ctseg export would write v2 names for those values: refused
    assert main(["export", "--labels", str(preds / "s0000.nii.gz"), "--out",
                 str(tmp_path / "export")]) == 2  # fmt: skip
    assert "s0000_labels.json names the values of" in capsys.readouterr().err


def _with_label_table(source, path, swap):
    """``source`` (a TotalSegmentator --ml file with its header's label table) saved to
    ``path`` with the values (and the table's keys) of the two named structures swapped."""
    img = nib.load(source)
    a, b = (LABEL_OF[n] for n in swap)
    data = np.asarray(img.dataobj).copy()
    data[np.asarray(img.dataobj) == a], data[np.asarray(img.dataobj) == b] = b, a
    (extension,) = img.header.extensions
    text = extension.get_content().decode()
    text = re.sub(rf'Key="{a}"', 'Key="@"', text).replace(f'Key="{b}"', f'Key="{a}"')
    text = text.replace('Key="@"', f'Key="{b}"')
    out = nib.Nifti1Image(data, img.affine)
    out.header.extensions.append(nib.nifti1.Nifti1Extension(0, text.encode()))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(out, path)
    return path


def test_a_totalsegmentator_file_in_another_order_is_read_by_its_header_table(
    tmp_path, s0000_root, extra_dir
):
    """TotalSegmentator's --ml files carry a Caret label table; one of another order (v1's,
    another task's) had its values scored as v2's: pancreas as aorta and aorta as pancreas."""
    source = extra_dir / "s0000_totalsegmentator_fast_multilabel.nii.gz"
    assert not prediction_names(source).renumbered  # v2's own order: read as it is
    assert prediction_names(source).scored == frozenset(range(1, 118))
    swapped = _with_label_table(source, tmp_path / "swapped" / "s0000.nii.gz",
                                ("pancreas", "aorta"))  # fmt: skip
    original = tmp_path / "original"
    original.mkdir()
    shutil.copyfile(source, original / "s0000.nii.gz")
    cache = tmp_path / "cache"
    a, b = (evaluate_predictions(s0000_root, "all", f, tmp_path / f"ev_{f.name}", report=False,
                                 cache_dir=cache) for f in (original, swapped.parent))  # fmt: skip
    pd.testing.assert_frame_equal(_scores(a), _scores(b))
    assert set(a.loc[a["structure"].isin(["aorta", "pancreas"]), "status"]) == {"detected"}


def test_tables_that_name_no_v2_structure_or_regions_are_refused_in_one_line(tmp_path):
    path = tmp_path / "s0000.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), path)
    (tmp_path / "s0000_labels.json").write_text(json.dumps({"1": "Liver", "2": "Spleen"}))
    with pytest.raises(DataError, match=r"names the values of s0000\.nii\.gz, none as a "
                       r"TotalSegmentator v2 structure \(value 1 'Liver'\)"):  # fmt: skip
        prediction_names(path)
    (tmp_path / "s0000_labels.json").unlink()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0,
                                                                  "kidneys": [2, 3]}}))  # fmt: skip
    with pytest.raises(DataError, match=r"label 'kidneys' is a region \(a list of values\)"):
        prediction_names(path)
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 5}}))
    named = prediction_names(path)  # v2's value for liver: read as it is, liver alone scored
    assert not named.renumbered and named.scored == frozenset({5})
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0}}))
    assert prediction_names(path).scored is None  # names nothing: read and scored as v2's


def _three_values(folder, values, ct):
    """``folder/s0000.nii.gz``: a 4 x 4 x 4 file whose first three x-slices hold ``values``, and
    an empty CT of its grid at ``ct``; returns ``folder``."""
    folder.mkdir()
    data = np.zeros((4, 4, 4), np.uint8)
    data[0], data[1], data[2] = values
    nib.save(nib.Nifti1Image(data, np.eye(4)), folder / "s0000.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), ct)
    return folder


def test_stats_and_export_read_the_names_too(tmp_path, s0000_root, extra_dir, capsys):
    """ctseg export wrote v2 names for a merge its dataset.json named, and that .ctbl then
    outranked the dataset.json (lungs scored as its first lobe); ctseg stats left a value named
    nowhere out without a word (found by a review)."""
    from ctseg_core.inference.label_files import LEARNED_NOTE
    from ctseg_core.labels import merge_lut, value_of

    folder = tmp_path / "preds"
    folder.mkdir()
    ref = nib.load(extra_dir / "s0000_totalsegmentator_multilabel.nii.gz")
    merged = merge_lut(["lungs"])[np.asarray(ref.dataobj)]
    nib.save(nib.Nifti1Image(merged, ref.affine), folder / "s0000.nii.gz")
    labels = {"background": 0, "lungs": value_of("lungs"), "liver": LABEL_OF["liver"]}
    (folder / "dataset.json").write_text(json.dumps({"labels": labels}))  # as export-nnunet's
    assert main(["export", "--labels", str(folder / "s0000.nii.gz"), "--out", str(folder)]) == 0
    ctbl = (folder / "s0000.ctbl").read_text().splitlines()
    assert LEARNED_NOTE in ctbl and any(line.split()[:2] == ["10", "lungs"] for line in ctbl)
    assert prediction_names(folder / "s0000.nii.gz").merges == ["lungs"]
    other = _three_values(tmp_path / "other", (1, 2, 3), tmp_path / "other" / "ct.nii.gz")
    (other / "dataset.json").write_text(json.dumps({"labels": {"liver": 1, "spleen": 2}}))
    capsys.readouterr()
    assert main(["stats", "--ct", str(other / "ct.nii.gz"), "--labels",
                 str(other / "s0000.nii.gz"), "--json"]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert {r["structure"] for r in json.loads(out.out)} == {"liver", "spleen"}
    assert "s0000.nii.gz: values 3 are named nowhere in dataset.json" in out.err


def test_a_models_list_in_v2_values_says_the_values_it_does_not_name(tmp_path, capsys):
    """dataset.json {"liver": 5} beside a file holding 5, 2 and 3: stats reported kidneys
    without a word, and export added them to the model's list, its .ctbl then outranking the
    dataset.json (found by a review). Values named nowhere are read as background, said."""
    folder = _three_values(tmp_path / "preds", (5, 2, 3), tmp_path / "ct.nii.gz")
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 5}}))
    assert main(["stats", "--ct", str(tmp_path / "ct.nii.gz"), "--labels",
                 str(folder / "s0000.nii.gz"), "--json"]) == 0  # fmt: skip
    out = capsys.readouterr()
    assert [r["structure"] for r in json.loads(out.out)] == ["liver"]
    assert "s0000.nii.gz: values 2, 3 are named nowhere in dataset.json" in out.err
    assert main(["export", "--labels", str(folder / "s0000.nii.gz"), "--out", str(folder),
                 "--all"]) == 2  # fmt: skip
    assert "dataset.json lists what its model labels; leave --all out" in capsys.readouterr().err
    assert main(["export", "--labels", str(folder / "s0000.nii.gz"), "--out", str(folder)]) == 0
    assert prediction_names(folder / "s0000.nii.gz").scored == frozenset({5})  # the .ctbl's now
