"""Train page: renaming an ended run, and the choices of every page that named it."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from dashboard.helpers.run_actions import drawn

pytestmark = pytest.mark.timeout(300)

EVAL_CHECKPOINT = "ctseg_eval_checkpoint"
EXPLORE_CHECKPOINT = "ctseg_explore_checkpoint"


def _runs(tiny_run: Path, root: Path, *names: str) -> None:
    """Copies of the session's trained 1-epoch run (config, status, history, .pth files)."""
    for name in names:
        shutil.copytree(tiny_run, root / name)


def test_a_run_renamed_on_the_train_page_is_listed_and_chosen_under_its_new_name(
    app_env, tiny_run, monkeypatch, tmp_path, new_app, no_problems
):
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    _runs(tiny_run, tmp_path, "first", "second")
    (tmp_path / "first" / "evaluation").mkdir(exist_ok=True)  # the shared run may hold one
    (tmp_path / "first" / "evaluation" / "evaluation_results_test.csv").write_text("subject\n")
    at = new_app("train")
    at.session_state["ctseg_train_run"] = "first"
    at.session_state[EVAL_CHECKPOINT] = "first / best.pth"  # chosen earlier on Evaluate
    at.session_state[EXPLORE_CHECKPOINT] = "first / last.pth"  # and on Explore
    at.run()
    no_problems(at)
    assert at.selectbox(key="ctseg_train_run_pick").value == "first"
    at.selectbox(key="ctseg_train_resume_pick").set_value("first")
    at.text_input(key="ctseg_train_rename_to_first").set_value("unet v2")
    at.run()
    assert (tmp_path / "first").is_dir()  # typing (and Enter) renames nothing: the button does
    at.button(key=f"ctseg_train_rename_go_first_{drawn(tmp_path / 'first')}").click()
    at.run()
    no_problems(at)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["second", "unet v2"]
    assert (tmp_path / "unet v2" / "evaluation" / "evaluation_results_test.csv").is_file()
    assert [t.value for t in at.toast] == ["Renamed first to unet v2"]
    pick = at.selectbox(key="ctseg_train_run_pick")
    assert pick.value == "unet v2" and sorted(pick.options) == ["second (2D)", "unet v2 (2D)"]
    assert at.selectbox(key="ctseg_train_resume_pick").value == "unet v2"
    assert sorted(at.multiselect(key="ctseg_train_compare").value) == ["second", "unet v2"]
    assert not at.warning, [w.value for w in at.warning]
    assert {m.label: m.value for m in at.metric}["State"] == "finished"  # its view, not another
    # the choices of the other pages follow the run in this tab
    at.switch_page("app_pages/evaluate.py")
    at.run()
    no_problems(at)
    assert at.selectbox(key=EVAL_CHECKPOINT).value == "unet v2 / best.pth"
    at.switch_page("app_pages/explore.py")
    at.run()
    no_problems(at)
    assert at.selectbox(key=EXPLORE_CHECKPOINT).value == "unet v2 / last.pth"


def test_another_tab_that_named_the_old_run_falls_back_and_refusals_are_one_line(
    app_env, tiny_run, monkeypatch, tmp_path, new_app, no_problems
):
    from ctseg_core.runs.run_folder import rename_run, write_status
    from dashboard.state import plain

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    _runs(tiny_run, tmp_path, "old", "other", "busy")
    write_status(tmp_path / "busy", {"state": "running", "pid": os.getpid(),
                                     "host": socket.gethostname(), "epoch": 0, "epochs": 1})  # fmt: skip
    at = new_app("train")
    at.session_state["ctseg_train_run"] = "busy"
    at.run()
    no_problems(at)
    labels = [b.label for b in at.button]
    assert "Stop busy" in labels
    assert not [b for b in at.button if b.key.startswith("ctseg_train_rename_go_busy")]
    at.selectbox(key="ctseg_train_run_pick").set_value("old")
    at.run()
    at.text_input(key="ctseg_train_rename_to_old").set_value("other")  # taken
    at.button(key=f"ctseg_train_rename_go_old_{drawn(tmp_path / 'old')}").click()
    at.run()
    (error,) = [e.value for e in at.error]
    assert error == plain(
        f"cannot rename: {tmp_path / 'other'} already exists; choose another name for old"
    )
    at.text_input(key="ctseg_train_rename_to_old").set_value("../escaped")
    at.button(key=f"ctseg_train_rename_go_old_{drawn(tmp_path / 'old')}").click()
    at.run()
    (error,) = [e.value for e in at.error]
    assert error.startswith(plain("cannot rename: run name '../escaped' must be a plain folder"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "old", "other"]
    # another tab chose the run on Evaluate and Explore; someone renames it meanwhile
    other_tab = new_app("evaluate")
    other_tab.session_state[EVAL_CHECKPOINT] = "old / best.pth"
    other_tab.run()
    no_problems(other_tab)
    assert other_tab.selectbox(key=EVAL_CHECKPOINT).value == "old / best.pth"
    rename_run(tmp_path / "old", "renamed")
    other_tab.run()
    no_problems(other_tab)
    choice = other_tab.selectbox(key=EVAL_CHECKPOINT)
    assert not [o for o in choice.options if o.startswith("old ")]
    assert choice.options[0] == choice.value.replace(" / ", " (2D) / ")  # the first, as shown
    other_tab.session_state[EXPLORE_CHECKPOINT] = "old / last.pth"
    other_tab.switch_page("app_pages/explore.py")
    other_tab.run()
    no_problems(other_tab)
    assert other_tab.selectbox(key=EXPLORE_CHECKPOINT).value == "(none)"
    at.run()  # the Train tab watched it: it shows another run and no error
    no_problems(at)
    assert at.selectbox(key="ctseg_train_run_pick").value in ("busy", "other", "renamed")
