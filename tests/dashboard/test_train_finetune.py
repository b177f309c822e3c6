"""Train page: "Start from a model" takes an nnU-Net model folder's network, patch and spacing
for a 3D run, and a folder that is not a model is named in one line on Start."""

from __future__ import annotations

import pytest
from nnunet_kit import write_model_folder

pytest.importorskip("nnunetv2.utilities.get_network_from_plans")
pytestmark = pytest.mark.timeout(300)

K = "ctseg_train"


def _memory_text(at) -> str:
    texts = [c.value for c in at.caption] + [w.value.replace("\\", "") for w in at.warning]
    return next(t for t in texts if "memory: about" in t)


def test_start_from_a_model_takes_its_patch_and_names_a_broken_folder(
    app_env, monkeypatch, tmp_path, new_app, no_problems
):
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path / "runs"))
    folder = write_model_folder(tmp_path, "3d_fullres", [6.0, 6.0, 6.0], [16, 32, 24], [0, 1, 2])
    at = new_app("train")
    at.run()
    at.segmented_control(key=f"{K}_kind").set_value("3D")
    at.run()
    assert "batch 1 of 48 x 48 x 32 patches" in _memory_text(at)  # phantom_3d's own
    at.text_input(key=f"{K}_init_from").set_value(str(folder))
    at.run()
    no_problems(at)
    assert "batch 1 of 24 x 32 x 16 patches" in _memory_text(at)
    # the fields the model replaces are shown disabled, under what the run uses instead
    assert at.number_input(key=f"{K}_patch_x").disabled
    assert at.selectbox(key=f"{K}_model3d").disabled
    said = [c.value for c in at.caption if c.value.startswith("Started from the model")]
    assert said == [
        "Started from the model below: its 3D U-Net (nnU-Net's PlainConvUNet), patches of "
        "24 x 32 x 16 voxels at 6 x 6 x 6 mm and its CT normalisation are used, not these "
        "fields."
    ]

    at.text_input(key=f"{K}_init_from").set_value(str(tmp_path / "nothing"))
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    errors = [e.value.replace("\\", "") for e in at.error]
    assert len(errors) == 1, errors
    assert errors[0] == (
        f"cannot start from the model: model folder {tmp_path / 'nothing'} does not exist or "
        "is not a folder"
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_start_from_a_model_with_a_merge_trains_the_merged_output(
    app_env, monkeypatch, tmp_path, new_app, no_problems
):
    """The model's five lung lobes merged on the form: the run learns liver and lungs, its
    lungs output started from the five lobe outputs (init_from.json). The model has three
    stages: phantom_3d's deep supervision (2 extra heads) is clamped to the one it allows."""
    import json

    from ctseg_core.labels import MERGES
    from ctseg_core.training.job import get_job

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path / "runs"))
    labels = {"background": 0, "liver": 1, **{n: i for i, n in enumerate(MERGES["lungs"], 2)}}
    folder = write_model_folder(tmp_path, "3d_fullres", [6.0, 6.0, 6.0], [16, 32, 24], [0, 1, 2],
                                labels=labels)  # fmt: skip
    at = new_app("train")
    at.run()
    at.segmented_control(key=f"{K}_kind").set_value("3D")
    at.run()
    at.text_input(key=f"{K}_init_from").set_value(str(folder))
    at.multiselect(key=f"{K}_merge").set_value(["lungs"])
    at.run()
    no_problems(at)
    at.toggle(key=f"{K}_only_present").set_value(False)  # the model's structures
    at.slider(key=f"{K}_epochs").set_value(1)
    at.number_input(key=f"{K}_minutes").set_value(0.0)
    at.number_input(key=f"{K}_steps").set_value(1)
    at.text_input(key=f"{K}_run_name").set_value("merged")
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    no_problems(at)
    assert get_job().wait(240)
    run = tmp_path / "runs" / "merged"
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["structures"] == ["liver", "lungs"]
    assert config["data"]["padding"] == "normalised_zero"  # nnU-Net pads after normalising
    assert config["model"]["features"] == [4, 8, 16] and config["model"]["deep_supervision"] == 1
    assert json.loads((run / "init_from.json").read_text())["kept"]["lungs"] == [2, 3, 4, 5, 6]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_start_from_a_model_outside_the_data_roots_is_refused(
    app_env, monkeypatch, tmp_path, new_app
):
    """A served dashboard with CTSEG_DATA_ROOTS reads model folders inside them only (the box
    read any folder, and told what existed outside by its error)."""
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path / "runs"))
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(app_env["data"]))
    folder = write_model_folder(tmp_path, "3d_fullres", [6.0, 6.0, 6.0], [16, 32, 24], [0, 1, 2])
    at = new_app("train")
    at.run()
    at.segmented_control(key=f"{K}_kind").set_value("3D")
    at.run()
    at.text_input(key=f"{K}_init_from").set_value(str(folder))
    at.run()
    assert "batch 1 of 48 x 48 x 32 patches" in _memory_text(at)  # not the model's
    assert not at.number_input(key=f"{K}_patch_x").disabled
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    errors = [e.value.replace("\\", "") for e in at.error]
    assert len(errors) == 1 and "is outside the allowed data roots" in errors[0], errors
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
