"""nnU-Net model folders on the Predict, Evaluate and Explore pages (AppTest): a folder under
$CTSEG_MODELS is offered beside the runs with its label, Predict writes its labels, Evaluate
scores it (the Dice of the library's prediction), Explore shows its prediction, and the Compare
tab puts its evaluation beside a ctseg run's, structure by structure.

The model is tiny, random and built with nnU-Net's own code (``tests/nnunet_kit.py``): two
folds, mirroring on one axis; every page predicts the phantom's 59 x 59 x 30 CTs in seconds.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from markdown_kit import as_shown

from ctseg_core.data.cache import open_cached
from ctseg_core.data.volume import load_ct
from ctseg_core.labels import LABEL_OF
from ctseg_core.nnunet.model import NnunetPredictor

pytest.importorskip("nnunetv2")
from nnunet_kit import write_model_folder

pytestmark = pytest.mark.timeout(300)

LABEL = "nnU-Net 3d_fullres: Dataset999_Tiny (folds 0,1)"
SUBJECT = "s0003"  # the phantom's val split: spleen, liver and aorta annotated


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """``<root>/Dataset999_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres``: spleen, liver, aorta
    and a label no TotalSegmentator v2 structure (my_tumour)."""
    root = tmp_path_factory.mktemp("nnunet_results")
    folder = write_model_folder(root / "Dataset999_Tiny", "3d_fullres", [4.5, 5.0, 4.0],
                                [16, 32, 32], [0, 2, 1], folds=2, mirror_axes=(0,))  # fmt: skip
    return root, folder


@pytest.fixture
def model_env(app_env, tiny_model, monkeypatch, one_torch_thread):
    monkeypatch.setenv("CTSEG_MODELS", str(tiny_model[0]))
    return app_env, tiny_model[1]


def _library_labels(folder, ct):
    return NnunetPredictor(folder, device="cpu").predict(ct)  # mirroring on, as the CLI's


def test_predict_page_offers_the_model_and_writes_its_labels(
    model_env, tmp_path, new_app, no_problems
):
    env, folder = model_env
    at = new_app("predict")
    at.run()
    picker = at.selectbox(key="ctseg_predict_checkpoint")
    assert LABEL in picker.options  # shown with its label beside the runs
    ct_path = env["data"] / SUBJECT / "ct.nii.gz"
    at.get("file_uploader")[0].set_value(("patient.nii.gz", ct_path.read_bytes(), "x"))
    picker.set_value(f"model: {folder}")
    at.run()
    at.button(key="ctseg_predict_go").click()
    at.run()
    no_problems(at)
    result = at.session_state["ctseg_predict_result"]
    assert result["checkpoint"] == LABEL
    (heading,) = [as_shown(h.value) for h in at.subheader if "structures found" in h.value]
    assert heading.endswith(f"({LABEL})")
    (tmp_path / "labels.nii.gz").write_bytes(result["nifti"])
    written = nib.load(tmp_path / "labels.nii.gz")
    ct = load_ct(ct_path)
    expected = _library_labels(folder, ct)
    # the NIfTI is on the upload's own grid (LPS here): the library's labels put back there
    on_disk = nib.as_closest_canonical(written)
    np.testing.assert_array_equal(np.asarray(on_disk.dataobj), expected)
    found = set(np.unique(expected)) - {0}
    assert found and found <= {LABEL_OF[s] for s in ("spleen", "liver", "aorta")}
    assert any(
        "my_tumour are no TotalSegmentator" in as_shown(w.value) for w in at.warning
    )  # said, not silently dropped


def test_evaluate_scores_the_model_explore_shows_it_and_compare_puts_it_beside_a_run(
    model_env, tiny_run, new_app, no_problems
):
    env, folder = model_env
    at = new_app("evaluate")
    at.run()
    picker = at.selectbox(key="ctseg_eval_checkpoint")
    assert LABEL in picker.options and any(o.startswith("tiny") for o in picker.options)
    # the run's evaluation first (A), then the model's (B), on the val split
    for choice in ("tiny / best.pth", f"model: {folder}"):
        at.selectbox(key="ctseg_eval_checkpoint").set_value(choice)
        at.selectbox(key="ctseg_eval_split").set_value("val")
        at.run()
        at.button(key="ctseg_eval_go").click()
        at.run()
        no_problems(at)
    info = at.session_state["ctseg_eval_result"]
    out_dir = env["checkpoints"] / "evaluations"
    assert info["out_dir"].startswith(str(out_dir / "nnunet_Dataset999_Tiny_3d_fullres-"))
    assert any(as_shown(c.value).startswith(f"{LABEL} · files in") for c in at.caption)
    results = info["results"].set_index(["subject", "structure"])
    assert set(results.index.get_level_values("structure")) == {"spleen", "liver", "aorta"}
    # its Dice is the library's prediction against the cached reference
    entry = open_cached(env["data"], SUBJECT, env["cache"])
    predicted_zxy = _library_labels(folder, entry.ct_volume()).transpose(2, 0, 1)
    reference_zxy = np.asarray(entry.labels)
    for structure in ("spleen", "liver", "aorta"):
        pred, ref = predicted_zxy == LABEL_OF[structure], reference_zxy == LABEL_OF[structure]
        dice = 2 * (pred & ref).sum() / (pred.sum() + ref.sum())
        assert results.loc[(SUBJECT, structure), "dice"] == pytest.approx(dice, abs=1e-6)

    # Explore: the model's prediction of the subject beside the reference
    at.switch_page("app_pages/explore.py")
    at.run()
    at.selectbox(key="ctseg_explore_subject").set_value(SUBJECT)
    at.selectbox(key="ctseg_explore_checkpoint").set_value(f"model: {folder}")
    at.run()
    no_problems(at)
    assert at.get("image")[0].proto.imgs[0].caption.startswith("reference | prediction")
    table = at.dataframe[0].value.set_index("structure")
    voxel_ml = float(np.prod(entry.spacing_mm)) / 1000
    for structure in ("liver", "aorta"):
        ml = (predicted_zxy == LABEL_OF[structure]).sum() * voxel_ml
        assert table.loc[structure, "prediction ml"] == pytest.approx(ml, abs=0.005)  # 0.01 ml
    # a structure the model does not learn is blank, not "0 ml", and the caption says why
    unlearned = [s for s in table.index if s not in ("spleen", "liver", "aorta")]
    assert unlearned and table.loc[unlearned, "prediction ml"].isna().all()
    assert table.loc[unlearned, "reference ml"].notna().all()
    assert any(as_shown(c.value).startswith("Blank in prediction: ") for c in at.caption), [
        c.value for c in at.caption
    ]

    # Compare: the run (A) against the model (B), titled as the model
    at.switch_page("app_pages/evaluate.py")
    at.run()
    model_eval = f"evaluations/{info['out_dir'].rsplit('/', 1)[1]}"
    a_box = at.selectbox(key="ctseg_eval_compare_a")
    assert f"{LABEL} · {model_eval}" in a_box.options
    a_box.set_value("tiny/evaluation")
    at.selectbox(key="ctseg_eval_compare_b").set_value(model_eval)
    at.run()
    at.selectbox(key="ctseg_eval_compare_split").set_value("val")
    at.button(key="ctseg_eval_compare_go").click()
    at.run()
    no_problems(at)
    table = at.session_state["ctseg_eval_comparison"]["table"]
    dice = table[table["metric"] == "dice"].set_index("structure")
    run = _run_results(env, "val")
    compared = [s for s in dice.index if s != "(all structures)"]
    assert compared and set(compared) <= {"spleen", "liver", "aorta"}  # what the model predicts
    for structure in compared:  # one subject: the means are its Dice on each side
        assert dice.loc[structure, "mean_b"] == results.loc[(SUBJECT, structure), "dice"]
        assert dice.loc[structure, "mean_a"] == pytest.approx(run[structure], abs=1e-9)
    assert any(f"B: {LABEL} · {model_eval}" in as_shown(c.value) for c in at.caption)


def _run_results(env, split):
    import pandas as pd

    table = pd.read_csv(
        env["checkpoints"] / "tiny" / "evaluation" / f"evaluation_results_{split}.csv"
    )
    return table.set_index("structure")["dice"]


def test_a_folder_that_is_not_a_model_is_named_in_one_warning_on_every_picker(
    app_env, tmp_path, monkeypatch, new_app, no_problems
):
    """A model folder without its dataset.json is left out of the pickers and said so, once,
    on Predict, Evaluate and Explore; the valid model beside it is still offered."""
    root = tmp_path / "models"
    write_model_folder(root / "Dataset999_Tiny", "3d_fullres", [4.5, 5.0, 4.0], [16, 32, 32],
                       [0, 2, 1])  # fmt: skip
    broken = write_model_folder(root / "Dataset998_Broken", "3d_fullres", [4.5, 5.0, 4.0],
                                [16, 32, 32], [0, 2, 1])  # fmt: skip
    (broken / "dataset.json").unlink()
    monkeypatch.setenv("CTSEG_MODELS", str(root))
    for page, picker in (("predict", "ctseg_predict_checkpoint"),
                         ("evaluate", "ctseg_eval_checkpoint"),
                         ("explore", "ctseg_explore_checkpoint")):  # fmt: skip
        at = new_app(page)
        at.run()
        no_problems(at)
        options = at.selectbox(key=picker).options  # as shown
        assert "nnU-Net 3d_fullres: Dataset999_Tiny (folds 0)" in options
        assert not [o for o in options if "Dataset998" in o]
        left_out = [as_shown(w.value) for w in at.warning if "Model left out" in w.value]
        assert len(left_out) == 1, (page, left_out)
        assert str(broken) in left_out[0] and "dataset.json" in left_out[0]
        assert "\n" not in left_out[0]
