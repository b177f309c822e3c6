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
    assert "batch 2 of 64 x 64 x 48 patches" in _memory_text(at)  # phantom_3d's own
    at.text_input(key=f"{K}_init_from").set_value(str(folder))
    at.run()
    no_problems(at)
    assert "batch 2 of 24 x 32 x 16 patches" in _memory_text(at)

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
