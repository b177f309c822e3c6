"""A merged run's prediction (labels.MERGES: the lung lobes as "lungs", written with
lung_upper_lobe_left's value 10) is named "lungs" wherever it is shown: the Evaluate page's
scores of its predictions folder, Explore's structure picker, legend, volumes table and the
linked planes' names, and the Predict page's Slicer / ITK-SNAP files."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from ctseg_core.data.cache import open_cached
from ctseg_core.data.dataset_root import open_dataset
from ctseg_core.inference.label_files import write_label_files
from ctseg_core.labels import LABEL_OF, MERGES, NAME_OF, merge_lut, names_of
from dashboard.helpers.layer_names import (
    Layer,
    checkpoint_names,
    learned_values_for,
    present_names,
    values_for,
    visible_mask,
)

pytestmark = pytest.mark.timeout(300)

LOBES = MERGES["lungs"]
LUNGS = LABEL_OF[LOBES[0]]  # 10: the merge's value


class _Layer:
    def __init__(self, counts, names=None):
        self.counts, self.names = counts, names


def test_a_merged_layer_shows_its_value_as_the_merge_and_the_reference_its_members():
    reference = np.zeros(118, dtype=np.int64)
    reference[[LABEL_OF["liver"], *(LABEL_OF[n] for n in LOBES)]] = 5
    prediction = np.zeros(118, dtype=np.int64)
    prediction[[LABEL_OF["liver"], LUNGS]] = 7
    layers = [_Layer(reference), _Layer(prediction, {LUNGS: "lungs"})]
    assert present_names(layers) == ["liver", LOBES[0], "lungs", *LOBES[1:]]
    assert values_for(None, "lungs") == [LABEL_OF[n] for n in LOBES]
    assert values_for({LUNGS: "lungs"}, "lungs") == [LUNGS]
    assert values_for({LUNGS: "lungs"}, LOBES[0]) == []  # the prediction holds no single lobe
    assert np.flatnonzero(visible_mask({LUNGS: "lungs"}, ["liver", LOBES[1]])).tolist() == [
        LABEL_OF["liver"], LABEL_OF[LOBES[1]],
    ]  # fmt: skip
    prediction[LUNGS] = 0  # a prediction that missed the lungs: still offered beside the lobes
    assert "lungs" in present_names(layers)


def test_a_structure_its_model_does_not_learn_has_no_values_in_a_prediction_layer():
    counts = np.zeros(118, dtype=np.int64)
    merged = Layer("prediction", None, "p", counts, {LUNGS: "lungs"}, frozenset({"lungs", "aorta"}))
    assert learned_values_for(merged, "lungs") == [LUNGS]
    assert learned_values_for(merged, "aorta") == [LABEL_OF["aorta"]]
    assert learned_values_for(merged, LOBES[0]) == []  # held by its merge
    assert learned_values_for(merged, LOBES[1]) == []  # every member: not "unlearned"
    assert learned_values_for(merged, "liver") is None  # never learned: no evidence either way
    per_lobe = Layer("prediction", None, "p", counts, None, frozenset(LOBES[:2]))
    assert learned_values_for(per_lobe, "lungs") == [LABEL_OF[n] for n in LOBES[:2]]
    reference = Layer("reference", None, "r", counts)
    assert learned_values_for(reference, "liver") == [LABEL_OF["liver"]]


def test_a_folder_prediction_is_learned_as_its_ctseg_label_file_says(tmp_path):
    from dashboard.helpers.layer_names import folder_prediction_learned

    (tmp_path / "s0001.nii.gz").write_bytes(b"")  # only its name is read here
    liver = LABEL_OF["liver"]
    write_label_files(tmp_path / "s0001.nii.gz", [LUNGS, liver], names_of(["lungs"]))
    assert folder_prediction_learned("s0001", tmp_path) is None  # what was found, any tool's
    write_label_files(tmp_path / "s0001.nii.gz", [LUNGS, liver], names_of(["lungs"]), True)
    assert folder_prediction_learned("s0001", tmp_path) == {"lungs", "liver"}
    ctbl = tmp_path / "s0001.ctbl"  # edited by hand: a value no structure has is left out
    ctbl.write_text(ctbl.read_text() + "150 other 1 2 3 255\n")
    assert folder_prediction_learned("s0001", tmp_path) == {"lungs", "liver"}


def test_a_folder_prediction_in_a_models_own_values_is_shown_by_their_names(app_env, tmp_path):
    """``ctseg predict --model`` of a model with labels of its own writes its values and
    ``<id>_labels.json``; Explore showed value 1 as spleen whatever the names said."""
    from dashboard.cached_predictions import folder_prediction_zxy, prediction_source
    from dashboard.helpers.layer_names import folder_prediction_learned

    sid = open_dataset(app_env["data"]).subjects[0]
    labels = np.asarray(open_cached(app_env["data"], sid, app_env["cache"]).labels_xyz())
    first, second = np.argsort(np.bincount(labels.ravel())[1:])[-2:] + 1  # two it holds
    own = np.select([labels == first, labels == second], [1, 2], 0).astype(np.uint8)
    affine = open_cached(app_env["data"], sid, app_env["cache"]).affine
    nib.save(nib.Nifti1Image(own, affine), tmp_path / f"{sid}.nii.gz")
    source = prediction_source(str(app_env["data"]), sid, folder=str(tmp_path))
    names = {"1": NAME_OF[first], "2": NAME_OF[second]}
    (tmp_path / f"{sid}_labels.json").write_text(json.dumps(names))
    # its counts, meshes and volumes are kept by this key: names that came since change it
    assert prediction_source(str(app_env["data"]), sid, folder=str(tmp_path)) != source
    shown = folder_prediction_zxy(str(app_env["data"]), sid, str(tmp_path))
    expected = np.where(np.isin(labels, [first, second]), labels, 0).transpose(2, 0, 1)
    np.testing.assert_array_equal(shown, expected)
    assert folder_prediction_learned(sid, tmp_path) == set(names.values())


def _merged_predictions(dirs, folder, subjects) -> None:
    """Each subject's reference with its lobes merged, as `ctseg predict` writes a merged run's
    prediction: value 10 for the union, and the .ctbl / ITK-SNAP files naming it "lungs"."""
    folder.mkdir(parents=True, exist_ok=True)
    lut = merge_lut(["lungs"])
    for sid in subjects:
        entry = open_cached(dirs["data"], sid, dirs["cache"])
        labels = lut[np.asarray(entry.labels_xyz())]
        nib.save(nib.Nifti1Image(labels, entry.affine), folder / f"{sid}.nii.gz")
        values = np.flatnonzero(np.bincount(labels.ravel(), minlength=118)[1:]) + 1
        write_label_files(folder / f"{sid}.nii.gz", values, names_of(["lungs"]))


def test_a_merged_folder_is_scored_and_explored_as_lungs(
    app_env, tmp_path, evaluate_folder, no_problems
):
    index = open_dataset(app_env["data"])
    test_ids = index.subjects_in("test")
    with_lungs = [s for s in test_ids
                  if open_cached(app_env["data"], s, app_env["cache"]).voxel_counts[LUNGS]]  # fmt: skip
    assert with_lungs, "the phantom's test split has a thorax"
    _merged_predictions(app_env, tmp_path / "preds", test_ids)
    at = evaluate_folder(tmp_path / "preds")
    no_problems(at)
    results = at.session_state["ctseg_eval_result"]["results"]
    lungs = results[results["structure"] == "lungs"]
    assert len(lungs) == len(with_lungs) and np.allclose(lungs["dice"], 1.0)  # the union
    assert not set(results["structure"]) & set(LOBES)

    at.selectbox(key="ctseg_eval_worst").set_value("lungs")
    at.button(key="ctseg_eval_open").click()
    at.run()
    no_problems(at)
    assert at.multiselect(key="ctseg_explore_structures").value == ["lungs"]
    assert "lungs" in at.multiselect(key="ctseg_explore_structures").options
    subject = at.session_state["ctseg_explore_subject"]
    entry = open_cached(app_env["data"], subject, app_env["cache"])
    table = at.dataframe[0].value.set_index("structure")
    assert list(table.index) == ["lungs"]
    # zoomed to the union of the lobes, not to the first lobe's box
    zxy = np.argwhere(np.isin(np.asarray(entry.labels), [LABEL_OF[n] for n in LOBES]))
    box = tuple(zip(zxy.min(axis=0).tolist(), (zxy.max(axis=0) + 1).tolist(), strict=True))
    assert at.session_state["ctseg_explore_zoom"]["box_zxy"] == box
    union_ml = sum(entry.voxel_counts[LABEL_OF[n]] for n in LOBES) * np.prod(entry.spacing_mm)
    assert table.loc["lungs", "reference ml"] == pytest.approx(union_ml / 1000, abs=0.01)
    assert table.loc["lungs", "prediction ml"] == table.loc["lungs", "reference ml"]
    legends = [h.proto.body for h in at.get("html")]
    assert any(">lungs</span>" in h for h in legends), legends

    at.segmented_control(key="ctseg_explore_viewer").set_value("linked planes")
    at.switch_page("app_pages/explore.py")  # AppTest reruns the page it was started on
    at.run()
    no_problems(at)
    component = at.get("component_instance")[0].proto
    args = json.loads(component.json_args)
    assert args["layers"] == ["reference", "prediction"]
    assert args["names"][0][LUNGS] == LOBES[0] and args["names"][1][LUNGS] == "lungs"
    assert args["names"][1][LABEL_OF["liver"]] == "liver"


def test_a_merged_folder_without_its_label_files_is_scored_per_value_with_a_warning(
    app_env, tmp_path, evaluate_folder, no_problems
):
    index = open_dataset(app_env["data"])
    test_ids = index.subjects_in("test")
    folder = tmp_path / "preds"
    _merged_predictions(app_env, folder, test_ids)
    for path in [*folder.glob("*.ctbl"), *folder.glob("*_itksnap_labels.txt")]:
        path.unlink()  # copied without them
    at = evaluate_folder(folder)
    no_problems(at)
    results = at.session_state["ctseg_eval_result"]["results"]
    assert "lungs" not in set(results["structure"])  # per value: the union as the first lobe
    with_lobes = [s for s in test_ids
                  if sum(open_cached(app_env["data"], s, app_env["cache"]).voxel_counts[
                      LABEL_OF[n]] > 0 for n in LOBES) >= 2]  # fmt: skip
    # one box, the first subject's note, however many subjects; every note behind it
    shown = [w.value.replace("\\", "") for w in at.warning]  # Markdown escapes (state.plain)
    warned = [w for w in shown if "without its label file?" in w]
    assert len(warned) == 1 and f"put {with_lobes[0]}.ctbl beside it" in warned[0]
    assert len(with_lobes) == len(at.session_state["ctseg_eval_result"]["notes"]) > 0
    if len(with_lobes) > 1:
        (box,) = [e for e in at.expander if e.label == f"All {len(with_lobes)} warnings"]
        listed = " ".join(m.value.replace("\\", "") for m in box.markdown)
        assert all(f"put {s}.ctbl beside it" in listed for s in with_lobes)


def test_predict_names_a_merged_runs_value_in_the_label_files(
    app_env, tmp_path, new_app, no_problems, monkeypatch
):
    """A merged run's checkpoint (untrained; its lungs output biased to win everywhere) on the
    Predict page: the Slicer and ITK-SNAP downloads name value 10 "lungs"."""
    from ctseg_core.config import DataConfig, ModelConfig, RunConfig
    from ctseg_core.models import build_model
    from ctseg_core.models.checkpoint import checkpoint_structures, save_checkpoint

    cfg = RunConfig(
        data=DataConfig(target_size=(64, 64), structures=["liver", "lungs"]),
        model=ModelConfig(features=[4, 8], bottleneck=8),
    ).validate()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        head.bias[2] = 100.0  # channel 2: lungs
    save_checkpoint(tmp_path / "merged.pth", model, config=cfg)
    assert checkpoint_structures(tmp_path / "merged.pth") == ["liver", "lungs"]
    assert checkpoint_names(tmp_path / "merged.pth") == {LUNGS: "lungs"}  # Explore's, too

    from streamlit.delta_generator import DeltaGenerator

    offered = {}  # what the download buttons hand over (AppTest keeps no media after a run)
    original = DeltaGenerator.download_button

    def recording(self, label, data, *args, **kwargs):
        offered[label] = data
        return original(self, label, data, *args, **kwargs)

    monkeypatch.setattr(DeltaGenerator, "download_button", recording)
    at = new_app("predict")
    at.run()
    ct = (app_env["data"] / "s0003" / "ct.nii.gz").read_bytes()
    at.get("file_uploader")[0].set_value(("thorax.nii.gz", ct, "application/gzip"))
    at.selectbox(key="ctseg_predict_checkpoint").set_value("(upload a checkpoint)")
    at.run()
    weights = (tmp_path / "merged.pth").read_bytes()
    at.get("file_uploader")[1].set_value(("merged.pth", weights, "application/octet-stream"))
    at.run()
    at.button(key="ctseg_predict_go").click()
    at.run()
    no_problems(at)
    ctbl = offered["3D Slicer colour table (.ctbl)"]
    assert f"\n{LUNGS} lungs " in ctbl and LOBES[0] not in ctbl, ctbl
    assert '"lungs"' in offered["ITK-SNAP label file"]
    assert at.session_state["ctseg_predict_result"]["names"] == {LUNGS: "lungs"}
