"""Run folder readers used by the dashboard: status, history, run listing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from ctseg_core.runs.run_folder import (
    default_checkpoints_root,
    list_runs,
    read_history,
    read_status,
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
