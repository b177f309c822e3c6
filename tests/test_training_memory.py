"""Memory of a training step: a run's kind, the estimate against a real peak, and the refusal
of a run that would not fit, with its numbers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ctseg_core.errors import ConfigError
from ctseg_core.runs.listing import list_runs
from ctseg_core.runs.run_folder import write_status
from ctseg_core.training.memory import check_fits, estimate_training_bytes, run_kind
from ctseg_core.training.presets import preset, user_config

REPO = Path(__file__).resolve().parents[1]


def _step_memory():
    spec = importlib.util.spec_from_file_location("step_memory", REPO / "benchmarks/step_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _3d(patch=(64, 64, 32), batch=2):
    return user_config(preset("phantom_3d"), {("data", "patch_size"): patch,
                                             ("data", "batch_size"): batch})  # fmt: skip


def test_each_preset_has_its_kind_and_context_slices_make_a_2d_preset_2_5d():
    kinds = {name: run_kind(preset(name)) for name in ("phantom_demo", "cpu", "gpu", "phantom_3d", "gpu_3d")}  # fmt: skip
    assert kinds == {"phantom_demo": "2D", "cpu": "2D", "gpu": "2D", "phantom_3d": "3D", "gpu_3d": "3D"}  # fmt: skip
    stacked = user_config(preset("phantom_demo"), {("data", "context_slices"): 5})
    assert run_kind(stacked) == "2.5D"


def test_the_estimate_grows_linearly_with_the_patch_and_the_batch():
    one, two, four = (estimate_training_bytes(_3d(batch=b), "cpu") for b in (1, 2, 4))
    assert one < two < four
    # the per-sample part is the same for each added sample: memory linear in the batch
    assert four - two == pytest.approx(2 * (two - one), rel=1e-6)
    # and linear in the patch's voxels: 32x32x16 -> 64x64x32 adds 114,688 voxels,
    # 64x64x32 -> 128x128x64 eight times as many
    small, mid, large = (
        estimate_training_bytes(_3d(p, 1), "cpu")
        for p in ((32, 32, 16), (64, 64, 32), (128, 128, 64))
    )
    assert small < mid < large
    assert large - mid == pytest.approx(8 * (mid - small), rel=1e-6)
    # per sample of 96 x 96 x 64 patches: over 1 GB with 118 channels (the full-resolution
    # activations and the loss's float32 probabilities), the weights and Adam a few 100 MB
    wide = preset("phantom_3d")
    wide.data.patch_size, wide.data.batch_size = (96, 96, 64), 2
    gpu_like = estimate_training_bytes(wide, "cpu")
    assert 2.0e9 < gpu_like < 5.0e9


def test_a_run_that_needs_more_than_is_free_is_refused_with_both_numbers():
    config = preset("phantom_3d")
    needed = estimate_training_bytes(config, "cpu")
    assert check_fits(config, "cpu", available_bytes=needed + 1) == needed
    with pytest.raises(ConfigError) as err:
        check_fits(config, "cpu", available_bytes=10**8)
    message = str(err.value)
    assert f"needs about {needed / 1e9:.2f} GB" in message
    assert "batch 1 of 48 x 48 x 32 patches" in message
    assert "has 0.10 GB free" in message
    assert "lower data.batch_size or data.patch_size" in message


def test_the_estimate_is_within_a_factor_1_5_of_a_measured_3d_step():
    step_memory = _step_memory()
    data = {"patch_size": [32, 32, 32], "batch_size": 1}
    measured = step_memory.measure_in_subprocess("phantom_3d", data)
    estimate = estimate_training_bytes(_3d((32, 32, 32), 1), "cpu")
    assert 200e6 < measured < 600e6  # the measurement itself is sane: weights + Adam alone 91 MB
    assert 1 / 1.5 < estimate / measured < 1.5


def _run_folder(root: Path, name: str, config) -> Path:
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    write_status(run_dir, {"state": "finished", "epoch": 1, "epochs": 1})
    return run_dir


def test_listing_shows_the_kind_of_a_2d_a_2_5d_and_a_3d_run(tmp_path):
    _run_folder(tmp_path, "slices", preset("phantom_demo"))
    _run_folder(tmp_path, "stacks", user_config(preset("cpu"), {("data", "context_slices"): 5}))
    _run_folder(tmp_path, "volumes", preset("phantom_3d"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    kinds = {r.name: r.kind for r in list_runs(tmp_path)}
    assert kinds == {"slices": "2D", "stacks": "2.5D", "volumes": "3D", "broken": None}


def test_free_memory_is_no_more_than_a_containers_limit_leaves(tmp_path):
    """A cgroup limit of 2 GiB with 1.5 GiB used leaves 0.5 GiB, whatever the host has free
    (a served dashboard in a container read the host's MemAvailable); no limit ("max", or
    cgroup v1's 2**63 rounded to pages) leaves the host's figure; unreadable files are skipped."""
    from ctseg_core.device import host_free_bytes

    host = host_free_bytes(cgroup_files=())
    assert host > 0
    limit, usage = tmp_path / "memory.max", tmp_path / "memory.current"
    usage.write_text(str(3 * 2**29))
    assert host > 2**29  # this machine: so the limit binds below
    for text, expected in (
        (str(2**31), 2**29),
        ("max", None),  # the host's figure, which moves a little between two reads
        ("9223372036854771712", None),
        (str(2**30), 0),  # over its limit already
    ):
        limit.write_text(text + "\n")
        free = host_free_bytes(cgroup_files=((limit, usage),))
        assert free == (expected if expected is not None else pytest.approx(host, rel=0.05)), text
    missing = (tmp_path / "none", tmp_path / "none2")
    assert host_free_bytes(cgroup_files=(missing, (limit, usage))) == 0
