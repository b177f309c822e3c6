"""Renaming a run folder: everything moves in one rename, and active or clashing runs are refused."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.errors import CtsegError
from ctseg_core.models.checkpoint import load_checkpoint
from ctseg_core.runs.listing import list_runs, ranked_checkpoints
from ctseg_core.runs.run_folder import read_history, read_status, rename_run, write_status
from ctseg_core.training.trainer import Trainer


def _files(run_dir: Path) -> dict[str, str]:
    """relative path -> sha1 of every file under ``run_dir``."""
    return {
        str(p.relative_to(run_dir)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


def test_a_trained_run_renamed_keeps_every_file_and_resumes_under_its_new_name(
    phantom_root, tmp_path, one_torch_thread
):
    config = RunConfig(
        DataConfig(data_root=str(phantom_root), target_size=(64, 64), batch_size=4,
                   val_slices_per_subject=4, structures=["liver", "spleen"]),
        ModelConfig(features=[4, 8, 16, 32], bottleneck=32),
        TrainConfig(epochs=1, steps_per_epoch=2, amp="off", sample_figure=False),
        run_name="first try",
    )  # fmt: skip
    old = tmp_path / "first try"
    assert Trainer(config, checkpoints_root=tmp_path).run() == "finished"
    (old / "evaluation").mkdir()  # as evaluating best.pth leaves it
    (old / "evaluation" / "evaluation_results_test.csv").write_text("subject,structure,dice\n")
    before = _files(old)
    updated_at = read_status(old)["updated_at"]

    new = rename_run(old, "unet lr1e-3")

    assert new == tmp_path / "unet lr1e-3" and not old.exists()
    after = _files(new)
    changed = {k for k in before if before[k] != after.get(k)}
    assert set(after) == set(before) and changed == {"config.json", "status.json"}
    assert json.loads((new / "config.json").read_text())["run_name"] == "unet lr1e-3"
    status = read_status(new)
    assert (status["run_name"], status["state"]) == ("unet lr1e-3", "finished")
    assert status["updated_at"] == updated_at  # not a new event of the run: the list keeps order
    assert load_checkpoint(new / "best.pth")["config"]["run_name"] == "first try"  # .pth as is
    assert [r.name for r in list_runs(tmp_path)] == ["unet lr1e-3"]
    assert list(ranked_checkpoints(tmp_path))[:2] == ["unet lr1e-3 / best.pth", "unet lr1e-3 / last.pth"]  # fmt: skip
    # a resume continues the run in its new folder and writes nothing under the old name
    assert Trainer.resume(new, epochs=2).run() == "finished"
    assert [r["epoch"] for r in read_history(new)] == [1, 2] and not old.exists()
    assert json.loads((new / "config.json").read_text())["run_name"] == "unet lr1e-3"


def _run(root: Path, name: str, **status) -> Path:
    """A run folder as written by a run (settings, status, a checkpoint)."""
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"run_name": name}))
    (run / "last.pth").write_bytes(b"a checkpoint")
    write_status(run, {"state": "finished", "epoch": 1, "run_name": name, **status})
    return run


def _refused(run: Path, new_name: str, match: str) -> None:
    before = _files(run)
    with pytest.raises(CtsegError, match=match) as exc:
        rename_run(run, new_name)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 400
    assert _files(run) == before  # nothing renamed, nothing rewritten


@pytest.mark.parametrize(
    "name", ["", "a/b", "..", "../escaped", "sub/..", ".hidden", "-rf", "trail ", "a\0b", "x" * 101]
)
def test_a_new_name_that_is_not_a_plain_folder_name_is_refused(tmp_path, name):
    run = _run(tmp_path, "r1")
    _refused(run, name, "must be a plain folder name of 1 to 100")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r1"]


def test_a_taken_name_or_a_folder_that_is_no_run_is_refused(tmp_path):
    run = _run(tmp_path, "r1")
    other = _run(tmp_path, "r2")
    _refused(run, "r2", r"r2 already exists; choose another name for r1")
    assert _files(other)["last.pth"] == hashlib.sha1(b"a checkpoint").hexdigest()
    (tmp_path / "empty").mkdir()  # even an empty folder: os.rename would replace it silently
    _refused(run, "empty", "empty already exists")
    (tmp_path / "a file").write_text("x")
    _refused(run, "a file", "a file already exists")
    _refused(run, "r1", "r1 already exists")  # its own name: nothing to do, said
    evaluations = tmp_path / "evaluations"  # the predictions folders' evaluations: no run
    evaluations.mkdir()
    with pytest.raises(CtsegError, match=r"is not a run folder \(no config.json\)"):
        rename_run(evaluations, "mine")
    assert evaluations.is_dir() and not (tmp_path / "mine").exists()


def test_an_active_run_is_refused_here_and_elsewhere_until_it_ends_or_goes_silent(tmp_path):
    host = socket.gethostname()
    other_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = _run(tmp_path, "busy", state="running", pid=other_process.pid, host=host)
        _refused(run, "calm", "is still running")
    finally:
        other_process.kill()
        other_process.wait()
    # this very process (the dashboard trains in a thread of its own process)
    write_status(run, {"state": "stopping", "pid": os.getpid(), "host": host})
    _refused(run, "calm", f"is still stopping \\(pid {os.getpid()} on ")
    write_status(run, {"state": "queued", "pid": 1, "host": "node-17"})
    _refused(run, "calm", "still queued .*pid 1 on node-17")
    # a node silent for two hours is taken as dead, and a dead local process as ended
    stale = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    text = (run / "status.json").read_text()
    updated = json.loads(text)["updated_at"]
    (run / "status.json").write_text(text.replace(updated, stale.isoformat(timespec="seconds")))
    run = rename_run(run, "calm")
    assert run == tmp_path / "calm" and (run / "last.pth").read_bytes() == b"a checkpoint"
    write_status(run, {"state": "running", "pid": other_process.pid, "host": host})  # gone now
    assert read_status(run)["state"] == "failed"
    assert rename_run(run, "calm 2") == tmp_path / "calm 2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calm 2"]
