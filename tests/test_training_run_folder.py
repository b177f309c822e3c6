"""Run folder readers used by the dashboard: status, history, run listing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ctseg_core.errors import CtsegError
from ctseg_core.runs.listing import list_runs
from ctseg_core.runs.run_folder import (
    default_checkpoints_root,
    ended_before_training,
    new_run_dir,
    read_history,
    read_status,
    remove_empty_run,
    write_history,
    write_status,
)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_running_status_of_a_dead_process_reads_as_failed(tmp_path):
    run = tmp_path / "r1"
    run.mkdir()
    base = {"state": "running", "epoch": 2, "host": socket.gethostname()}
    write_status(run, {**base, "pid": os.getpid()})
    assert read_status(run)["state"] == "running"
    write_status(run, {**base, "pid": _dead_pid()})
    status = read_status(run)
    assert status["state"] == "failed" and "nothing to resume: start it again" in status["error"]
    (run / "last.pth").write_bytes(b"a checkpoint")  # one epoch completed: that one is offered
    status = read_status(run)
    assert status["state"] == "failed" and "resume from last.pth" in status["error"]
    write_status(run, {**base, "pid": _dead_pid(), "host": "another-node"})
    assert read_status(run)["state"] == "running"  # cannot judge a process on another host


def test_history_round_trips_with_nan_as_null_and_runs_are_listed(tmp_path, monkeypatch):
    run = tmp_path / "r2"
    run.mkdir()
    (run / "config.json").write_text("{}")
    history = [
        {"epoch": 1, "train_loss": 1.5, "val_loss": 1.2, "val_dice_mean": 0.4,
         "val_dice": {"liver": 0.8, "spleen": float("nan")}, "lr": 1e-3, "seconds": 3.0},
        {"epoch": 2, "train_loss": 1.1, "val_loss": 1.0, "val_dice_mean": 0.6,
         "val_dice": {"liver": 0.9, "spleen": 0.3}, "lr": 1e-3, "seconds": 3.0},
    ]  # fmt: skip
    write_history(run, history)
    back = read_history(run)
    assert back[0]["val_dice"] == {"liver": 0.8, "spleen": None}
    assert json.loads((run / "training_history.json").read_text())["val_dice_mean"] == [0.4, 0.6]
    with open(run / "history.jsonl", "a") as handle:
        handle.write('{"epoch": 3, "train_lo')  # a torn line from a foreign writer is skipped
    assert len(read_history(run)) == 2
    write_status(run, {"state": "finished", "epoch": 2, "epochs": 2})
    (tmp_path / "not-a-run").mkdir()
    (runs,) = list_runs(tmp_path)
    assert (runs.name, runs.state, runs.epoch, runs.best_val_dice) == ("r2", "finished", 2, 0.6)
    assert read_status(tmp_path / "not-a-run") == {"state": "unknown", "error": None}
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    assert default_checkpoints_root() == tmp_path
    monkeypatch.delenv("CTSEG_CHECKPOINTS")
    monkeypatch.chdir(tmp_path)  # the CLI, started anywhere, uses the dashboard's default
    checkout = Path(__file__).resolve().parents[1]
    assert default_checkpoints_root() == checkout / "checkpoints"


def _empty_run(root, name: str, state: str = "failed"):
    """A run folder as a start that completed no epoch leaves it (settings, status, error.log)."""
    run = root / name
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "label_map.json").write_text("{}")
    (run / "error.log").write_text("Traceback ...\nRuntimeError: CUDA out of memory")
    write_status(run, {"state": state, "epoch": 0, "error": "CUDA out of memory"})
    return run


def test_a_name_of_a_run_that_trained_nothing_is_reused_cleanly_and_said(tmp_path, caplog):
    run = _empty_run(tmp_path, "early")
    with caplog.at_level("WARNING", logger="ctseg_core.runs.run_folder"):
        assert new_run_dir(tmp_path, "early") == run
    # the old start's error and status do not haunt the new run
    assert sorted(p.name for p in run.iterdir()) == []
    assert "was failed before completing an epoch" in caplog.text and str(run) in caplog.text
    # a file the run did not write is never deleted to make room
    run = _empty_run(tmp_path, "notes")
    (run / "notes.txt").write_text("keep me")
    with pytest.raises(CtsegError, match=r"holds notes\.txt, which a run that ended before"):
        new_run_dir(tmp_path, "notes")
    assert (run / "notes.txt").read_text() == "keep me" and (run / "error.log").is_file()


def test_only_a_run_that_ended_before_its_first_epoch_is_removed(tmp_path):
    empty = _empty_run(tmp_path, "empty", state="stopped")
    assert ended_before_training(empty)
    remove_empty_run(empty)
    assert not empty.exists()
    trained = _empty_run(tmp_path, "trained", state="stopped")
    (trained / "last.pth").write_bytes(b"a checkpoint")
    with pytest.raises(CtsegError, match="only a run that ended before its first epoch"):
        remove_empty_run(trained)
    assert (trained / "last.pth").is_file()
    running = _empty_run(tmp_path, "running", state="running")
    write_status(running, {"state": "running", "pid": os.getpid(), "host": socket.gethostname()})
    with pytest.raises(CtsegError, match="is running"):
        remove_empty_run(running)
    assert (running / "config.json").is_file()
    # a stale temporary file of an interrupted checkpoint write is no checkpoint
    torn = _empty_run(tmp_path, "torn", state="failed")
    (torn / ".tmp-last.pth.x1y2.pth").write_bytes(b"half")
    assert ended_before_training(torn)
    remove_empty_run(torn)
    assert not torn.exists()
