"""The three launchers of the trainer: the background job, the CLI, and torchrun (DDP on CPU)."""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from ctseg_core.cli import main
from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.errors import CtsegError
from ctseg_core.runs.run_folder import read_history, read_status
from ctseg_core.runs.stop_request import request_stop
from ctseg_core.training.job import TrainingJob, get_job

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--size", "64", "64", "--features", "8", "16", "32", "64", "--bottleneck", "64"]


def job_config(root, run_name, epochs=1, steps=3) -> RunConfig:
    return RunConfig(
        DataConfig(
            data_root=str(root), target_size=(64, 64), batch_size=2, val_slices_per_subject=4
        ),
        ModelConfig(features=[8, 16, 32, 64], bottleneck=64),
        TrainConfig(epochs=epochs, steps_per_epoch=steps, amp="off", sample_figure=False),
        run_name=run_name,
    )


def _wait_for(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def test_background_job_stops_within_one_batch_and_refuses_a_second_start(phantom_root, tmp_path):
    job = TrainingJob()
    assert job.snapshot().state == "idle"
    run_dir = job.start(job_config(phantom_root, "bg", epochs=50, steps=100), tmp_path)
    with pytest.raises(CtsegError, match="already running"):
        job.start(job_config(phantom_root, "second"), tmp_path)
    assert not (tmp_path / "second").exists()
    _wait_for(lambda: job.snapshot().step >= 2)
    job.stop()
    at_stop = job.snapshot()
    assert at_stop.state == "stopping"
    assert read_status(run_dir)["state"] in ("stopping", "stopped")  # the folder says so too
    assert job.wait(timeout=60)
    final = job.snapshot()
    assert final.state == "stopped" and final.epoch == 0
    assert final.step - at_stop.step <= 1  # at most the batch in flight when stop was asked
    status = read_status(run_dir)
    assert status["state"] == "stopped" and "stopped by request" in status["message"]
    assert not (run_dir / "last.pth").exists()  # no epoch completed, nothing half written
    assert get_job() is get_job()


def test_background_job_runs_to_the_end_and_resumes(phantom_root, tmp_path):
    job = TrainingJob()
    run_dir = job.start(job_config(phantom_root, "bg2", epochs=1), tmp_path)
    assert job.wait(timeout=120)
    snap = job.snapshot()
    assert snap.state == "finished" and snap.epoch == 1 and snap.last_record["epoch"] == 1
    assert job.resume(run_dir, epochs=2) == run_dir
    assert job.wait(timeout=120)
    assert job.snapshot().state == "finished"
    assert [r["epoch"] for r in read_history(run_dir)] == [1, 2]


@pytest.mark.skipif(sys.platform != "linux", reason="the fork start method is chosen on Linux")
def test_background_job_loader_workers_fork_rather_than_rerun_the_page(
    phantom_root, tmp_path, monkeypatch
):
    """Spawn/forkserver workers import ``__main__`` again, which under Streamlit is the page."""

    from ctseg_core.training.parts import _loader_workers

    # the job says it trains in a thread; the CLI and torchrun keep the default
    assert _loader_workers(2, in_thread=True) == (2, "fork")
    assert _loader_workers(2, in_thread=False) == (2, None)
    with monkeypatch.context() as patch:  # macOS and Windows start by spawn: in-process
        patch.setattr(sys, "platform", "darwin")
        assert _loader_workers(2, in_thread=True) == (0, None)

    config = job_config(phantom_root, "workers", epochs=1, steps=3)
    config.data.num_workers = 1
    job = TrainingJob()
    run_dir = job.start(config, tmp_path)
    assert job.wait(timeout=180)
    assert job.snapshot().state == "finished", job.snapshot().error
    assert read_history(run_dir)[0]["train_slices"] == 3 * 2
    assert job._trainer.in_thread  # the job told its trainer; nothing guesses from a thread


def test_a_crash_in_the_thread_becomes_status_failed(tmp_path):
    root = tmp_path / "broken"
    for sid in ("s1", "s2", "s3"):
        (root / sid / "segmentations").mkdir(parents=True)
        (root / sid / "ct.nii.gz").write_bytes(b"this is not a NIfTI file")
        (root / sid / "segmentations" / "liver.nii.gz").write_bytes(b"nor this")
    (root / "meta.csv").write_text("image_id;split\ns1;train\ns2;val\ns3;test\n")
    job = TrainingJob()
    run_dir = job.start(job_config(root, "crash"), tmp_path / "ckpt")
    assert job.wait(timeout=60)
    snap = job.snapshot()
    assert snap.state == "failed" and "could be prepared" in snap.error
    status = read_status(run_dir)
    assert status["state"] == "failed" and status["error"] == snap.error


def test_cli_trains_and_refuses_bad_settings(phantom_root, tmp_path, capsys):
    args = ["train", "--data", str(phantom_root), "--checkpoints", str(tmp_path), *TINY_ARGS]
    code = main([*args, "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                 "--val-slices", "2", "--amp", "off", "--run", "cli", "--json"])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"]["state"] == "finished" and out["last_epoch"]["epoch"] == 1
    assert main([*args, "--lr", "0"]) == 2
    assert "learning rate must be a number > 0" in capsys.readouterr().err
    assert main([*args, "--size", "72", "72"]) == 2
    assert "multiples of 16" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_starts_and_resumes_say_what_they_do(phantom_root, tmp_path, capsys):
    import torch

    from ctseg_core.runs.run_folder import write_status

    args = ["train", "--data", str(phantom_root), "--checkpoints", str(tmp_path), *TINY_ARGS,
            "--batch-size", "2", "--amp", "off", "--steps-per-epoch", "1"]  # fmt: skip
    assert main([*args, "--samples-per-epoch", "-1"]) == 2
    assert "samples per epoch must be >= 1, or unset" in capsys.readouterr().err
    if not torch.cuda.is_available():  # refused before a run folder is made
        assert main([*args, "--device", "cuda", "--run", "r"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "r").exists()
    # 0 validation slices means all of them, as on the Train page
    assert main([*args, "--epochs", "1", "--val-slices", "0", "--run", "r", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_epoch"]["val_dice_mean"] is not None
    run = tmp_path / "r"
    assert json.loads((run / "config.json").read_text())["data"]["val_slices_per_subject"] is None
    assert (run / "best.pth").is_file()
    assert read_status(run)["started_by"] == f"{getpass.getuser()} (CLI)"
    assert main([*args, "--epochs", "1", "--run", "r"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 2
    assert "has trained 1 of 1 epochs already; ask for more" in capsys.readouterr().err
    assert main(["train", "--resume", str(run / "last.pth")]) == 2  # a checkpoint of the run
    assert "has trained 1 of 1 epochs already; ask for more" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--lr", "0.1"]) == 2
    assert "--lr would not apply" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--checkpoints", "x"]) == 2
    assert "--checkpoints would not apply" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--epochs", "2", "--workers", "0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["last_epoch"]["epoch"] == 2 and out["status"]["state"] == "finished"
    # a run that failed before its first checkpoint gives its name back
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    write_status(crashed, {"state": "failed", "error": "no GPU"})
    assert main([*args, "--epochs", "1", "--val-slices", "1", "--run", "crashed"]) == 0
    assert read_status(crashed)["state"] == "finished"


def test_a_run_that_fails_while_training_exits_1_with_one_line(phantom_root, tmp_path):
    """A failure of the machine mid-run (here: no file may grow past 64 kB, so the first
    checkpoint cannot be written) is an unfinished result, not bad input."""
    import resource
    import subprocess

    from ctseg_core.data.prepare import prepare_dataset

    prepare_dataset(phantom_root, workers=1)  # the cache is written before the limit applies
    cmd = [sys.executable, "-m", "ctseg_core", "train", "--data", str(phantom_root),
           "--checkpoints", str(tmp_path), *TINY_ARGS, "--batch-size", "2", "--epochs", "1",
           "--steps-per-epoch", "1", "--val-slices", "1", "--run", "big", "--device", "cpu"]  # fmt: skip

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, 64_000))

    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=180, preexec_fn=small_files,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    (line,) = done.stderr.strip().splitlines()  # one line, no traceback
    # torch.save reports the short write as its own RuntimeError, whose words are kept (the
    # disk has room: a full one is tests/test_training_disk_full.py)
    big = tmp_path / "big"
    assert line.startswith(f"error: run {big} failed: cannot write {big}/best.pth (RuntimeError: ")
    assert line.endswith(
        f"no intact checkpoint in {big}: see why the write failed, then start a new run with "
        f"its settings, `ctseg train --config {big}/config.json --run NEW_NAME`"
    )
    status = read_status(tmp_path / "big")
    assert status["state"] == "failed" and status["error"] in line
    assert not (tmp_path / "big" / "last.pth").exists()  # no half-written checkpoint left
    # a loss that diverges is a run that failed too (1), not bad input (2)
    nan = subprocess.run(
        [*cmd[:-4], "--run", "nan", "--lr", "1e30", "--steps-per-epoch", "4", "--device", "cpu"],
        capture_output=True, text=True, timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert nan.returncode == 1, nan.stderr[-2000:]
    assert "failed: loss became" in nan.stderr and "lower the learning rate" in nan.stderr


def test_too_many_open_files_says_how_to_raise_the_limit():
    import errno

    from ctseg_core.runs.status import failure_text

    text = failure_text(OSError(errno.EMFILE, "Too many open files"))
    assert text.startswith("too many open files (this process may open ")
    assert "`ulimit -n " in text and text.endswith("then continue the run")
    assert failure_text(ValueError("x")) == "ValueError: x"
    # a loader worker's error carries the worker's traceback and no errno
    worker = OSError(
        "Caught OSError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        "last):\n  File \"x.py\", line 1\nOSError: [Errno 24] Too many open files: 'ct.npy'\n"
    )
    assert failure_text(worker).startswith("too many open files")
    other = RuntimeError("Caught ValueError in DataLoader worker\nTraceback:\nValueError: bad\n")
    assert failure_text(other) == "ValueError: bad"
    assert failure_text(RuntimeError("out of memory.\nSee the docs.")) == (
        "RuntimeError: out of memory. See the docs."  # one line, nothing dropped
    )


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("torch.distributed.run") is None or not dist.is_available(),
    reason="torch.distributed (torchrun) is not available",
)
def test_two_process_torchrun_writes_one_run_folder(phantom_root, tmp_path):
    # a fresh cache: rank 0 prepares it while rank 1 waits at the barrier
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "CTSEG_CACHE": str(tmp_path / "fresh-cache")}  # fmt: skip
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "ctseg_core",
        "train", "--data", str(phantom_root), "--checkpoints", str(runs), *TINY_ARGS,
        "--epochs", "2", "--steps-per-epoch", "2", "--batch-size", "2", "--val-slices", "3",
        "--amp", "off", "--run-name", "ddp",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert [p.name for p in runs.iterdir()] == ["ddp"]
    history = read_history(runs / "ddp")
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[0]["train_slices"] == 2 * 2 * 2  # two ranks x two steps x batch 2
    assert read_status(runs / "ddp")["state"] == "finished"


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("torch.distributed.run") is None or not dist.is_available(),
    reason="torch.distributed (torchrun) is not available",
)
def test_two_process_torchrun_trains_and_validates_a_3d_model(phantom_root, tmp_path):
    """nnU-Net's 3D U-Net under torchrun: its output layer below the deep-supervision levels in
    use gets no gradient (DDP must look for it), and each rank validates its own whole volumes
    with as many windows as they need (which DDP's forward would wait on): both once hung or
    failed at the second step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO),
           "CTSEG_CACHE": str(tmp_path / "cache")}  # fmt: skip
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "ctseg_core", "train", "--data", str(phantom_root), "--checkpoints", str(runs),
        "--model", "plain_unet3d", "--features", "8", "16", "32", "--patch-size", "32", "32",
        "16", "--spacing", "6", "6", "6", "--epochs", "2", "--steps-per-epoch", "2",
        "--batch-size", "1", "--amp", "off", "--run-name", "ddp3d",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    history = read_history(runs / "ddp3d")
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(r["val_loss"] > 0 for r in history)
    assert read_status(runs / "ddp3d")["state"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("how", ["folder", "sigterm"])
def test_a_stop_request_or_sigterm_stops_a_cli_or_torchrun_run(
    how, processes, phantom_root, tmp_path
):
    """What the dashboard's Stop does for a run it did not start (a stop request in the run
    folder), and what a job scheduler does at its time limit (SIGTERM, to torchrun's agent,
    which passes it on to every rank)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = ["-m", "ctseg_core"]
    if processes > 1:
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(processes), *launcher]  # fmt: skip
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, *launcher, "train", "--data", str(phantom_root), "--checkpoints",
        str(runs), *TINY_ARGS, "--epochs", "50", "--steps-per-epoch", "1000", "--batch-size",
        "2", "--amp", "off", "--run-name", "far",
    ]  # fmt: skip
    log = tmp_path / "train.log"  # a file, not a pipe nobody reads while the run goes on
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
        try:
            run_dir = runs / "far"
            _wait_for(lambda: read_status(run_dir).get("step", 0) >= 2, timeout=120)
            if how == "folder":
                request_stop(run_dir, by="test")
            else:
                proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            proc.kill()
    # 1: the CLI's exit code for a run that did not finish
    assert proc.returncode == 1, log.read_text()[-3000:]
    status = read_status(run_dir)
    expected = "stopped by request" if how == "folder" else "stopped by SIGTERM"
    assert status["state"] == "stopped" and expected in status["message"], status
    assert status["epoch"] == 0 and status["step"] < 1000  # within the first epoch
    assert not (run_dir / "stop_request.json").exists()  # answered, so a resume is not stopped


def test_torchrun_ranks_look_for_a_stop_in_epochs_shorter_than_their_interval(tmp_path):
    """The ranks looked on steps 20, 40 ... of each epoch, so a run of 10-step epochs never
    looked: a stop request (or SIGTERM) was ignored to the end (found by a review). They look on
    their first step and every STOP_POLL_STEPS-th after it, counted over the run."""
    from ctseg_core.training.stopping import STOP_POLL_STEPS, StopControl, StopRequested

    control = StopControl(None, rank=0, world=2)  # rank 0 of two: looks at the folder
    control.run_dir = tmp_path
    request_stop(tmp_path, by="test")
    with pytest.raises(StopRequested):
        control.check(1)  # the first step looks
    control = StopControl(None, rank=0, world=2)
    control.run_dir = tmp_path
    (tmp_path / "stop_request.json").unlink()
    steps = 0
    with pytest.raises(StopRequested):
        for _epoch in range(5):
            for step in range(1, 11):  # epochs of 10 steps
                steps += 1
                control.check(step)
                if steps == 2:
                    request_stop(tmp_path, by="test")
    assert steps == STOP_POLL_STEPS + 1  # the next look, in the third epoch


def test_cli_flags_override_a_preset(phantom_root):
    from ctseg_core.cli import build_parser
    from ctseg_core.cli.cmd_train import build_config

    args = build_parser().parse_args(
        ["train", "--preset", "phantom_demo", "--data", str(phantom_root), "--lr", "0.01",
         "--structures", "liver,spleen", "--context", "3", "--deep-supervision", "1",
         "--vessel-contrast", "0.25", "--checkpoint-every", "0"]
    )  # fmt: skip
    config = build_config(args).validate()
    assert config.model.deep_supervision == 1 and config.data.vessel_contrast_prob == 0.25
    assert config.train.checkpoint_every == 0  # the preset's 10 overridden, also by a 0
    assert config.data.curve_prob == 0.5  # from the preset
    assert config.model.features == [16, 32, 64, 128] and config.data.hu_window == (-400.0, 600.0)
    assert config.train.lr == 0.01 and config.data.data_root == str(phantom_root)
    assert (config.model.in_channels, config.model.out_channels) == (3, 3)


def test_settings_that_would_be_ignored_are_refused_in_one_line(phantom_root, tmp_path, capsys):
    """Accepted and then unused or misapplied (found by a review): a --config replaced the
    --preset, --fold without --init-from trained from scratch, a 3D model took --size and a 2D
    one --patch-size into config.json unused, --patience -1 ended a run after one epoch, and a
    hand-edited config.json of wrong types stopped with a raw TypeError."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": {"data_root": str(phantom_root)}}))
    base = ["train", "--data", str(phantom_root), "--checkpoints", str(tmp_path / "runs")]
    cases = {
        "give --preset or --config, not both": ["--preset", "phantom_3d", "--config", str(config)],
        "--fold picks a fold of --init-from's model": ["--fold", "1"],
        "--size is a setting of 2D models, and plain_unet3d is a 3D model": [
            "--preset", "phantom_3d", "--size", "64", "64"],
        "--patch-size, --spacing are settings of 3D models, and unet is a 2D model": [
            "--patch-size", "32", "32", "32", "--spacing", "2", "2", "2"],
        "early stopping patience must be >= 0 epochs": ["--patience", "-1"],
    }  # fmt: skip
    for said, flags in cases.items():
        assert main([*base, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert err.startswith("error: ") and said in err and err.count("\n") == 1, err
    for field, value, said in (
        ("data", {"target_size": 64}, "data.target_size must be a list of 2 (got 64)"),
        ("train", {"epochs": "5"}, "train.epochs must be a whole number (got '5')"),
        ("data", {"structures": "liver"}, "data.structures must be a list (got 'liver')"),
        (
            "model",
            {"features": [8, "16"]},
            "model.features must be a list, each item a whole number (got [8, '16'])",
        ),
    ):
        config.write_text(json.dumps({field: value}))
        assert main([*base, "--config", str(config)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {config}: {said}\n", err
    assert not (tmp_path / "runs").exists()
    import numpy as np  # a checkpoint's config may hold numpy's scalars: still numbers

    loaded = RunConfig.from_dict({"train": {"epochs": np.int64(3), "lr": np.float32(1e-3)},
                                  "data": {"spacing_mm": [np.float64(2), 2, 2]}})  # fmt: skip
    assert loaded.train.epochs == 3 and loaded.data.spacing_mm == (2.0, 2, 2)
    # a 3D stage's kernel or stride: one int for all three axes, or three (a review found
    # such configs refused, every run of them unloadable)
    model = {"name": "plain_unet3d", "features": [8, 16], "kernel_sizes": [3, [3, 3, 1]],
             "strides": [1, [2, 2, 1]]}  # fmt: skip
    assert RunConfig.from_dict({"model": model}).model.strides == [1, [2, 2, 1]]
    from ctseg_core.models import build_model

    model["kernel_sizes"] = [np.int64(3), [3, 3, np.int64(1)]]  # numpy's ints build it too
    assert build_model(RunConfig.from_dict({"model": model}).model) is not None
