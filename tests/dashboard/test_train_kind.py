"""Train page: the Kind choice (2D / 2.5D / 3D) filters the presets, shows a 3D run's patch size,
spacing and model, an estimate of memory before Start, and refuses a run that would not fit."""

from __future__ import annotations

import re

import pytest

from ctseg_core.device import resolve_device
from ctseg_core.models.registry import MODELS
from ctseg_core.training.presets import preset

pytestmark = pytest.mark.timeout(300)

K = "ctseg_train"


def _memory_text(at) -> str:
    texts = [c.value for c in at.caption] + [_unescaped(w.value) for w in at.warning]
    return next(t for t in texts if "memory: about" in t)


def _unescaped(text: str) -> str:
    """A warning or error as written (state.plain escapes Markdown with backslashes)."""
    return text.replace("\\", "")


def test_choosing_3d_offers_the_3d_presets_with_their_patch_spacing_model_and_memory(
    app_env, monkeypatch, tmp_path, new_app, no_problems
):
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    at = new_app("train")
    at.run()
    no_problems(at)
    # the phantom starts as a 2D run of phantom_demo: the slice presets only
    assert at.segmented_control(key=f"{K}_kind").value == "2D"
    assert at.selectbox(key=f"{K}_preset").options == ["phantom_demo", "cpu", "gpu"]
    text = _memory_text(at)
    assert text.startswith("2D run · memory: about") and "batch 4 of 128 x 128 slices" in text

    at.segmented_control(key=f"{K}_kind").set_value("3D")
    at.run()
    no_problems(at)
    assert at.selectbox(key=f"{K}_preset").options == ["phantom_3d", "gpu_3d"]
    assert at.selectbox(key=f"{K}_preset").value == "phantom_3d"  # the laptop's, on the phantom
    volumetric = [n for n, s in MODELS.items() if s.spatial_dims == 3]
    model = at.selectbox(key=f"{K}_model3d")
    assert len(volumetric) >= 2 and model.options == [MODELS[n].title for n in volumetric]
    assert model.value == "plain_unet3d"
    p = preset("phantom_3d").data
    patch = tuple(at.number_input(key=f"{K}_patch_{a}").value for a in "xyz")
    spacing = tuple(at.number_input(key=f"{K}_spacing_{a}").value for a in "xyz")
    assert patch == p.patch_size == (48, 48, 32) and spacing == p.spacing_mm == (4.0, 4.0, 4.0)
    text = _memory_text(at)
    assert text.startswith("3D run · memory: about") and "batch 1 of 48 x 48 x 32 patches" in text
    widths = "/".join(map(str, preset("phantom_3d").model.features))  # wider with AMX
    assert f"patches, stage widths {widths}" in text
    small = float(re.search(r"about ([\d.]+) GB", text).group(1))
    # the slice-only fields are gone (validation runs on whole volumes); an epoch is patches;
    # gpu_3d brings its own patch and spacing
    assert not [s for s in at.select_slider if s.key == f"{K}_size"]
    assert not [n for n in at.number_input if n.key == f"{K}_val"]
    steps = at.number_input(key=f"{K}_steps")
    assert steps.label == "Steps per epoch (0 = the preset's 100 patches, in batches)"
    at.selectbox(key=f"{K}_preset").set_value("gpu_3d")
    at.run()
    no_problems(at)
    assert tuple(at.number_input(key=f"{K}_patch_{a}").value for a in "xyz") == (128, 128, 128)
    assert at.number_input(key=f"{K}_spacing_x").value == 1.5
    text = _memory_text(at)
    assert "batch 2 of 128 x 128 x 128 patches" in text
    assert "500 patches" in at.number_input(key=f"{K}_steps").label
    assert float(re.search(r"about ([\d.]+) GB", text).group(1)) > 2 * small

    # 2.5D: the slice presets again, fed neighbouring slices
    at.segmented_control(key=f"{K}_kind").set_value("2.5D")
    at.run()
    no_problems(at)
    assert at.selectbox(key=f"{K}_preset").options == ["phantom_demo", "cpu", "gpu"]
    assert at.selectbox(key=f"{K}_context").value == 5
    assert "(5 context slices)" in _memory_text(at)
    assert _memory_text(at).startswith("2.5D run")


def test_start_refuses_a_3d_run_that_would_not_fit_with_its_numbers(
    app_env, monkeypatch, tmp_path, new_app
):
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    at = new_app("train")
    at.run()
    at.segmented_control(key=f"{K}_kind").set_value("3D")
    at.run()
    for axis in "xyz":  # 512^3 voxels: hundreds of GB
        at.number_input(key=f"{K}_patch_{axis}").set_value(512)
    at.run()
    assert "Start would be refused" in _memory_text(at)
    at.text_input(key=f"{K}_run_name").set_value("too-big")
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    errors = [_unescaped(e.value) for e in at.error]
    assert len(errors) == 1, errors
    assert re.search(
        r"cannot start: this run needs about [\d.]+ GB for one training step \(batch 1 of "
        r"512 x 512 x 512 patches, stage widths [\d/]+\) but the CPU memory has [\d.]+ GB free; lower "
        r"data.batch_size or data.patch_size",
        errors[0],
    ), errors[0]
    assert not (tmp_path / "too-big").exists()  # refused before anything was written


@pytest.mark.skipif(
    resolve_device("auto").type != "cpu", reason="the note is about training on a CPU"
)
@pytest.mark.parametrize("native_bf16", [False, True])
def test_a_3d_run_on_a_cpu_without_native_bf16_is_told_it_trains_slowly(
    app_env, monkeypatch, tmp_path, new_app, no_problems, native_bf16
):
    from ctseg_core import device

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: native_bf16)  # the CPU's flags
    at = new_app("train")
    at.run()
    no_problems(at)

    def told() -> bool:
        return any("no native bf16" in c.value for c in at.caption)

    assert not told()  # a 2D run is not concerned
    at.segmented_control(key=f"{K}_kind").set_value("3D")
    at.run()
    no_problems(at)
    assert told() is (not native_bf16)
