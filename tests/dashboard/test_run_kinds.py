"""A run's kind (2D, 2.5D, 3D) wherever runs are listed: the runs table, the Train page's run
pickers and the checkpoint pickers of Evaluate, Explore and Predict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctseg_core.runs.run_folder import write_status
from ctseg_core.training.presets import preset, user_config

pytestmark = pytest.mark.timeout(300)


def _run(root: Path, name: str, config) -> Path:
    """A finished run folder with config.json and an (unloadable) best.pth and last.pth."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()), encoding="utf-8")
    write_status(run_dir, {"state": "finished", "epoch": 1, "epochs": 1})
    for file in ("best.pth", "last.pth"):
        (run_dir / file).write_bytes(b"")
    return run_dir


@pytest.fixture
def kinds_root(tmp_path) -> Path:
    _run(tmp_path, "slices", preset("phantom_demo"))
    _run(tmp_path, "stacks", user_config(preset("cpu"), {("data", "context_slices"): 5}))
    _run(tmp_path, "volumes", preset("phantom_3d"))
    return tmp_path


def test_the_runs_table_and_the_checkpoint_titles_name_each_runs_kind(kinds_root):
    from dashboard.helpers.runs import checkpoint_titles, runs_table

    table = runs_table(kinds_root)
    assert dict(zip(table["run"], table["kind"], strict=True)) == {
        "slices": "2D", "stacks": "2.5D", "volumes": "3D"
    }  # fmt: skip
    checkpoints = {"volumes / best.pth": str(kinds_root / "volumes" / "best.pth"),
                   "slices / last.pth": str(kinds_root / "slices" / "last.pth")}  # fmt: skip
    title = checkpoint_titles(checkpoints)
    assert title("volumes / best.pth") == "volumes (3D) / best.pth"
    assert title("slices / last.pth") == "slices (2D) / last.pth"
    assert title("(none)") == "(none)"  # an option that is no checkpoint is shown as it is


def test_the_pages_pickers_show_each_runs_kind(app_env, monkeypatch, kinds_root, new_app):
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(kinds_root))
    at = new_app("train")
    at.run()
    assert set(at.selectbox(key="ctseg_train_run_pick").options) == {
        "slices (2D)", "stacks (2.5D)", "volumes (3D)"
    }  # fmt: skip
    assert set(at.selectbox(key="ctseg_train_resume_pick").options) == {
        "slices (2D)", "stacks (2.5D)", "volumes (3D)"
    }  # fmt: skip
    assert "volumes (3D)" in at.multiselect(key="ctseg_train_compare").options
    for page, key in (("evaluate", "ctseg_eval_checkpoint"), ("predict", "ctseg_predict_checkpoint"),
                      ("explore", "ctseg_explore_checkpoint")):  # fmt: skip
        at = new_app(page)
        at.run()
        options = at.selectbox(key=key).options
        assert "volumes (3D) / best.pth" in options, (page, options)
        assert "stacks (2.5D) / last.pth" in options, (page, options)
