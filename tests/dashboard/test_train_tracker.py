"""Train page as a run tracker: the runs table (filter by text and tag), notes and tags, delete
after a confirmation (never an active run), samples of any epoch, per-step curves, and an exact
learning rate typed beside the slider."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)


def test_runs_table_filters_notes_are_saved_and_only_an_ended_run_is_deleted(
    app_env, tiny_run, monkeypatch, tmp_path, new_app, no_problems
):
    from ctseg_core.runs.notes import read_notes, write_notes
    from ctseg_core.runs.run_folder import write_status
    from dashboard.helpers.run_actions import drawn

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    for name in ("alpha", "beta", "busy"):
        shutil.copytree(tiny_run, tmp_path / name)
    alpha = f"alpha_{drawn(tmp_path / 'alpha')}"  # its buttons' keys: this run, as drawn
    typed = f"alpha_{drawn(tmp_path / 'alpha', settings=False)}"  # its notes' (a last.pth)
    write_notes(tmp_path / "beta", "wider model", "sweep")
    write_status(tmp_path / "busy", {"state": "running", "pid": os.getpid(),
                                     "host": socket.gethostname(), "epoch": 0, "epochs": 1})  # fmt: skip
    at = new_app("train")
    at.session_state["ctseg_train_run"] = "alpha"
    at.run()
    no_problems(at)
    table = _table(at)
    assert sorted(table["run"]) == ["alpha", "beta", "busy"]
    assert set(table["best val Dice"].dropna()) == {
        round(max(h["val_dice_mean"] for h in _history(tiny_run)), 4)
    }
    at.multiselect(key="ctseg_train_runs_tags").set_value(["sweep"])
    at.run()
    assert list(_table(at)["run"]) == ["beta"]
    at.multiselect(key="ctseg_train_runs_tags").set_value([])
    at.text_input(key="ctseg_train_runs_filter").set_value("ALPH")
    at.run()
    assert list(_table(at)["run"]) == ["alpha"]
    # notes and tags of the watched run
    at.text_area(key=f"ctseg_train_notes_{typed}").set_value("baseline for the sweep")
    at.text_input(key=f"ctseg_train_tags_{typed}").set_value("Baseline, sweep")
    at.button(key=f"ctseg_train_notes_save_{typed}").click()
    at.run()
    no_problems(at)
    assert read_notes(tmp_path / "alpha") == {
        "notes": "baseline for the sweep", "tags": ["baseline", "sweep"]
    }  # fmt: skip
    # an active run offers no Delete
    assert at.session_state["ctseg_train_run"] == "alpha"
    at.selectbox(key="ctseg_train_run_pick").set_value("busy")
    at.run()
    assert not [b for b in at.button if b.key.startswith("ctseg_train_delete_busy")]
    at.selectbox(key="ctseg_train_run_pick").set_value("alpha")
    at.run()
    at.button(key=f"ctseg_train_delete_{alpha}").click()
    at.run()
    no_problems(at)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["beta", "busy"]
    assert [t.value for t in at.toast] == ["Deleted alpha"]
    assert _table(at).empty  # the filter "ALPH" is still typed
    at.text_input(key="ctseg_train_runs_filter").set_value("")
    at.run()
    assert sorted(_table(at)["run"]) == ["beta", "busy"]


def _table(at):
    """The runs table (the frame with a "best epoch" column)."""
    (table,) = [d.value for d in at.dataframe if "best epoch" in d.value.columns]
    return table


def _history(run_dir: Path) -> list[dict]:
    from ctseg_core.runs.run_folder import read_history

    return read_history(run_dir)


def test_an_exact_learning_rate_typed_beside_the_slider_is_the_one_trained(
    app_env, new_app, no_problems, monkeypatch, tmp_path
):
    from ctseg_core.runs.run_folder import read_json

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    at = new_app("train")
    at.run()
    no_problems(at)
    at.number_input(key="ctseg_train_lr_exact").set_value(3.3e-4)
    at.checkbox(key="ctseg_train_tensorboard").check()
    at.number_input(key="ctseg_train_steps").set_value(1)
    at.slider(key="ctseg_train_epochs").set_value(1)
    at.text_input(key="ctseg_train_run_name").set_value("typed lr")
    at.button[[b.label for b in at.button].index("Start")].click()
    at.run()
    no_problems(at)
    train = read_json(tmp_path / "typed lr" / "config.json")["train"]
    assert (train["lr"], train["tensorboard"]) == (3.3e-4, True)
    from ctseg_core.training.job import get_job

    get_job().stop()
    assert get_job().wait(120)


def test_a_stale_page_deletes_or_renames_no_other_run_now_under_the_name(
    app_env, tiny_run, monkeypatch, tmp_path, new_app, no_problems
):
    """A page drawn for r1; another session renames r1 away and r2 (with notes) to r1. The
    stale page's Delete, Rename and Save notes must not act on the former r2 (found by a
    review: Delete removed it, keyed by the name alone)."""
    import json

    from ctseg_core.runs.notes import read_notes
    from ctseg_core.runs.run_folder import rename_run

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    for action in ("delete", "rename_go", "notes_save"):
        for name in ("r1", "r2", "r1_old"):
            shutil.rmtree(tmp_path / name, ignore_errors=True)
        for name in ("r1", "r2"):
            shutil.copytree(tiny_run, tmp_path / name)
        (tmp_path / "r2" / "notes.json").write_text(json.dumps({"notes": "keep me", "tags": []}))
        at = new_app("train")
        at.session_state["ctseg_train_run"] = "r1"
        at.run()
        no_problems(at)
        (stale,) = [b for b in at.button if b.key.startswith(f"ctseg_train_{action}_r1")]
        rename_run(tmp_path / "r1", "r1_old")  # another session, through the library
        rename_run(tmp_path / "r2", "r1")
        stale.click()  # on the page as it was drawn
        at.run()
        no_problems(at)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["r1", "r1_old"], action
        assert read_notes(tmp_path / "r1") == {"notes": "keep me", "tags": []}, action
        assert not at.toast, action
        # the page drawn anew offers it for the run it now shows
        (fresh,) = [b for b in at.button if b.key.startswith(f"ctseg_train_{action}_r1")]
        assert fresh.key != stale.key


def test_notes_being_typed_survive_a_resume_and_a_new_start_clears_them(
    app_env, tiny_run, make_tiny_config, monkeypatch, tmp_path, new_app, no_problems
):
    """The notes box and Save were keyed by config.json's inode and time too: a resume of the
    watched run (from any tab) rewrote it, the typed text was gone and a Save click dropped
    without a word; keyed by the folder alone, a new start in an empty run's folder showed (and
    would save) the earlier start's notes (both found by reviews)."""
    import json

    from test_train_ended_runs import _stopped_in_first_epoch

    from ctseg_core.fileio import atomic_write_json
    from ctseg_core.runs.notes import read_notes

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    shutil.copytree(tiny_run, tmp_path / "alpha")
    at = new_app("train")
    at.session_state["ctseg_train_run"] = "alpha"
    at.run()
    no_problems(at)
    (area,) = [a for a in at.text_area if a.key.startswith("ctseg_train_notes_alpha")]
    area.set_value("half-typed note")
    at.run()
    config = tmp_path / "alpha" / "config.json"
    atomic_write_json(config, json.loads(config.read_text()))  # as a resume's open_run
    (save,) = [b for b in at.button if b.key.startswith("ctseg_train_notes_save_alpha")]
    save.click()  # on the page drawn before the resume
    at.run()
    no_problems(at)
    assert read_notes(tmp_path / "alpha")["notes"] == "half-typed note"
    (area,) = [a for a in at.text_area if a.key.startswith("ctseg_train_notes_alpha")]
    assert area.value == "half-typed note"
    run_dir = _stopped_in_first_epoch(app_env, tmp_path, "again", make_tiny_config)
    at.session_state["ctseg_train_run"] = "again"
    at.run()
    (area,) = [a for a in at.text_area if a.key.startswith("ctseg_train_notes_again")]
    area.set_value("about the first try")
    at.run()
    (save,) = [b for b in at.button if b.key.startswith("ctseg_train_notes_save_again")]
    save.click()
    at.run()
    assert read_notes(run_dir)["notes"] == "about the first try"
    _stopped_in_first_epoch(app_env, tmp_path, "again", make_tiny_config)  # takes the folder
    assert read_notes(run_dir)["notes"] == ""
    at.run()
    no_problems(at)
    (area,) = [a for a in at.text_area if a.key.startswith("ctseg_train_notes_again")]
    assert area.value == ""


def test_the_runs_filter_reads_a_run_without_a_best_dice():
    """A run in its first epoch (or stopped there) has no best Dice: under pandas 3 its NaN
    stopped the filter with a TypeError as soon as anything was typed (found by a review)."""
    import numpy as np
    import pandas as pd

    from dashboard.helpers.tracker import filter_runs

    df = pd.DataFrame({"run": ["early", "done"], "best val Dice": [np.nan, 0.5],
                       "best epoch": [np.nan, 3.0], "tags": ["", "sweep"]})  # fmt: skip
    assert list(filter_runs(df, "DONE")["run"]) == ["done"]
    assert list(filter_runs(df, "0.5")["run"]) == ["done"]
    assert list(filter_runs(df, "nan")["run"]) == []  # a missing value is no text


def test_notes_typed_during_the_first_epoch_survive_its_checkpoint(
    app_env, tiny_run, monkeypatch, tmp_path, new_app, no_problems
):
    """The notes box was keyed by config.json too while the run had no last.pth: the first
    checkpoint changed the key, and the text typed during epoch 1 was gone (found by a review
    in a browser)."""
    from ctseg_core.runs.run_folder import write_status

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    run = tmp_path / "first"
    shutil.copytree(tiny_run, run)
    (run / "last.pth").rename(tmp_path / "last.pth")  # in its first epoch: no checkpoint yet
    write_status(run, {"state": "running", "pid": os.getpid(), "host": socket.gethostname(),
                       "epoch": 0, "epochs": 2})  # fmt: skip
    at = new_app("train")
    at.session_state["ctseg_train_run"] = "first"
    at.run()
    no_problems(at)
    (area,) = [a for a in at.text_area if a.key.startswith("ctseg_train_notes_first")]
    area.set_value("typed during epoch 1")
    at.run()
    (tmp_path / "last.pth").rename(run / "last.pth")  # the first epoch ends
    at.run()
    (area,) = [a for a in at.text_area if a.key.startswith("ctseg_train_notes_first")]
    assert area.value == "typed during epoch 1"
