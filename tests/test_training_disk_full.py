"""A disk that fills up during training, and checkpoints cut short: the run ends "failed" with
what to free and how to continue, the last complete checkpoint stays whole, and a resume from a
broken last.pth names the intact checkpoints and the command that continues from one.

The full disk is a fault injected below our code: from the chosen torch.save on, no file may
grow past 64 kB (RLIMIT_FSIZE, so torch's own writer fails as it does on a full disk, with its
own "unexpected pos" RuntimeError and the temporary file held open), and the file system
reports 428 kB free (shutil.disk_usage).
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shlex
import shutil
import signal
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from ctseg_core.cli import main
from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.models import build_model
from ctseg_core.models.checkpoint import (
    CheckpointWriteError,
    continue_hint,
    intact_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from ctseg_core.runs.run_folder import read_history, read_status, write_status
from ctseg_core.runs.status import StatusFile, failure_text
from ctseg_core.training.trainer import Trainer

TINY_ARGS = ["--size", "64", "64", "--features", "8", "16", "32", "64", "--bottleneck", "64"]
FREE_WHEN_FULL = 428_000  # what the machine had left


class FullDisk:
    """From the ``after``-th next torch.save on, the disk is full (see the module docstring)."""

    def __init__(self, monkeypatch):
        self.saves, self.after, self.full, self.limited = 0, None, False, False
        self._real_save, self._real_usage = torch.save, shutil.disk_usage
        monkeypatch.setattr(torch, "save", self._save)
        monkeypatch.setattr(shutil, "disk_usage", self._usage)
        self._limit = resource.getrlimit(resource.RLIMIT_FSIZE)
        self._sigxfsz = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a kill

    def _save(self, obj, f, *args, **kwargs):
        self.saves += 1
        if self.after is not None and self.saves > self.after and not self.limited:
            self.full = self.limited = True
            resource.setrlimit(resource.RLIMIT_FSIZE, (64_000, self._limit[1]))
        return self._real_save(obj, f, *args, **kwargs)

    def _usage(self, path):
        real = self._real_usage(path)
        return real._replace(free=FREE_WHEN_FULL) if self.full else real

    def free_space(self) -> None:
        self.full = self.limited = False
        self.after = None
        resource.setrlimit(resource.RLIMIT_FSIZE, self._limit)

    def close(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, self._limit)
        signal.signal(signal.SIGXFSZ, self._sigxfsz)


@pytest.fixture
def full_disk(monkeypatch):
    disk = FullDisk(monkeypatch)
    yield disk
    disk.close()


def _open_deleted_files(name_part: str) -> list[str]:
    targets = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return [t for t in targets if name_part in t and t.endswith("(deleted)")]


def _needs_mb(text: str) -> float:
    """M of "a checkpoint needs M MB" in ``text``."""
    return float(re.search(r"a checkpoint needs ([\d.]+) MB", text).group(1))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/self/fd")
def test_a_checkpoint_write_that_fails_keeps_the_old_file_and_says_why(tmp_path, full_disk):
    config = RunConfig(DataConfig(), ModelConfig(features=[8, 16, 32, 64], bottleneck=64))
    model = build_model(config.model)
    path = tmp_path / "last.pth"
    save_checkpoint(path, model, epoch=1, config=config)
    size = path.stat().st_size
    model.apply(lambda m: torch.nn.init.zeros_(m.weight) if hasattr(m, "weight") else None)
    # torch's own writer fails ("unexpected pos"); with 428 kB free that is a full disk
    full_disk.after = 0
    with pytest.raises(CheckpointWriteError, match=r"^no space left on ") as raised:
        save_checkpoint(path, model, epoch=2, config=config)
    assert f"no space left on {tmp_path} (0.4 MB free; a checkpoint needs " in str(raised.value)
    assert _needs_mb(str(raised.value)) == pytest.approx(size / 1e6, rel=0.05, abs=0.05)
    assert raised.value.__context__ is None  # nothing holds the failed write's frames
    # the failed write's temporary file is deleted and no longer open: its space is free again
    assert not _open_deleted_files(".tmp-last.pth")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
    assert load_checkpoint(path)["epoch"] == 1 and path.stat().st_size == size
    # the same failure with the disk not full (only files are limited): torch's words say why
    full_disk.full = False
    with pytest.raises(CheckpointWriteError, match=r"unexpected pos \d+ vs \d+\)$") as raised:
        save_checkpoint(path, model, epoch=2, config=config)
    assert str(raised.value).startswith(f"cannot write {path} (RuntimeError: [enforce fail")
    # a write refused with ENOSPC is a full disk whatever the free space reads
    full_disk.free_space()

    def no_space(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    full_disk._real_save = no_space
    with pytest.raises(CheckpointWriteError, match=rf"^no space left on {tmp_path} \(\d+ MB free"):
        save_checkpoint(path, model, epoch=2, config=config)
    assert load_checkpoint(path)["epoch"] == 1 and [p.name for p in tmp_path.iterdir()] == [
        "last.pth"
    ]


def test_a_full_disk_ends_a_cli_run_failed_with_the_command_that_continues_it(
    phantom_root, tmp_path, full_disk, capsys, caplog, one_torch_thread
):
    args = ["train", "--data", str(phantom_root), "--checkpoints", str(tmp_path), *TINY_ARGS,
            "--batch-size", "2", "--steps-per-epoch", "1", "--val-slices", "1", "--amp", "off",
            "--checkpoint-every", "0", "--epochs", "2", "--run", "full",
            "--structures", "liver,spleen"]  # fmt: skip
    run = tmp_path / "full"
    full_disk.after = 2  # epoch 1 writes best.pth and last.pth; the disk is full in epoch 2
    with caplog.at_level("WARNING"):
        assert main(args) == 1
    assert not caplog.records  # no warning, no traceback: one line after the epoch reports
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("epoch 1/2: train loss ") and len(err) == 2, err
    line = err[1]
    assert line.startswith(f"error: run {run} failed: no space left on {run} (0.4 MB free; ")
    size = (run / "last.pth").stat().st_size
    assert _needs_mb(line) == pytest.approx(size / 1e6, rel=0.05, abs=0.05)
    assert line.endswith(
        "intact: last.pth (epoch 1), best.pth (epoch 1): free disk space, then continue with "
        f"`ctseg train --resume {run}`"
    )
    status = read_status(run)
    assert status["state"] == "failed" and status["error"] in line and status["epoch"] == 1
    assert not (run / "error.log").exists()  # our own error: no traceback to keep
    assert sorted(p.name for p in run.glob("*.pth")) == ["best.pth", "last.pth"]
    assert not list(run.glob(".tmp-*"))
    assert load_checkpoint(run / "last.pth")["epoch"] == 1
    assert [r["epoch"] for r in read_history(run)] == [1]
    # space freed, the command given continues the run to its end
    full_disk.free_space()
    command = line.rsplit("`", 2)[-2]
    assert main(shlex.split(command)[1:]) == 0
    assert [r["epoch"] for r in read_history(run)] == [1, 2]
    assert read_status(run)["state"] == "finished"


def test_a_run_without_an_intact_checkpoint_is_started_anew_from_its_settings(tmp_path, capsys):
    run = tmp_path / "young"
    config = RunConfig(DataConfig(), ModelConfig(features=[8, 16, 32, 64], bottleneck=64))
    (run / "samples").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    assert continue_hint(run, "free disk space") == (
        f"no intact checkpoint in {run}: free disk space, then start a new run with its "
        f"settings, `ctseg train --config {run}/config.json --run NEW_NAME`"
    )
    save_checkpoint(run / "last.pth", build_model(config.model), epoch=1, config=config)
    (run / "last.pth").write_bytes((run / "last.pth").read_bytes()[:1000])
    assert main(["train", "--resume", str(run)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == (
        f"error: checkpoint {run}/last.pth is cut short (0.0 MB; its end is missing, as a write "
        f"stopped by a full disk or a crash leaves it); no intact checkpoint in {run}: start a "
        f"new run with its settings, `ctseg train --config {run}/config.json --run NEW_NAME`"
    )


def test_a_truncated_last_pth_names_the_intact_checkpoints_and_the_command(
    phantom_root, tmp_path, capsys, one_torch_thread
):
    config = RunConfig(
        DataConfig(data_root=str(phantom_root), target_size=(64, 64), batch_size=2,
                   val_slices_per_subject=2),
        ModelConfig(features=[8, 16, 32, 64], bottleneck=64),
        TrainConfig(epochs=3, steps_per_epoch=1, amp="off", sample_figure=False,
                    checkpoint_every=1),
        run_name="cut",
    )  # fmt: skip

    def interrupt(p) -> None:  # Ctrl-C in epoch 3: two epochs done
        if p.kind == "step" and p.epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config, checkpoints_root=tmp_path, callbacks=[interrupt]).run()
    run = tmp_path / "cut"
    best_epoch = load_checkpoint(run / "best.pth")["epoch"]
    last = run / "last.pth"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a write stopped by a full disk leaves
    assert main(["train", "--resume", str(run)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: checkpoint {last} is cut short (")
    intact = ["checkpoint_epoch2.pth (epoch 2)", "checkpoint_epoch1.pth (epoch 1)"]
    intact.insert(2 - best_epoch, f"best.pth (epoch {best_epoch})")
    newest = "best.pth" if best_epoch == 2 else "checkpoint_epoch2.pth"
    assert line.endswith(
        f"intact: {', '.join(intact)}: continue with `ctseg train --resume {run / newest}`"
    )
    assert intact_checkpoints(run)[0][0].name == newest
    # the command given continues from that checkpoint, in the same folder, to the end
    command = line.rsplit("`", 2)[-2]
    assert main(shlex.split(command)[1:]) == 0
    assert [r["epoch"] for r in read_history(run)] == [1, 2, 3]
    assert load_checkpoint(last)["epoch"] == 3 and read_status(run)["state"] == "finished"
    # a checkpoint outside a run folder is still refused
    outside = tmp_path / "loose.pth"
    outside.write_bytes(data)
    assert main(["train", "--resume", str(outside)]) == 2
    assert "is a file outside a run folder" in capsys.readouterr().err


def test_status_json_takes_the_failed_state_where_no_new_file_fits(tmp_path, monkeypatch, caplog):
    import tempfile
    import threading

    from ctseg_core.runs.status import Progress

    write_status(tmp_path, {"state": "running", "message": "validating: 3/8 batches"})

    def no_space(*args, **kwargs):  # the disk has no block left for a new file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    status = StatusFile(0, threading.Event())
    status.run_dir = tmp_path
    status.write(Progress("end", "failed", tmp_path, 1, 3, error="no space left"), force=True)
    assert read_status(tmp_path)["state"] == "failed"
    assert read_status(tmp_path)["error"] == "no space left"
    # no status.json to overwrite either: one warning line, and the run goes on to its end
    other = tmp_path / "other"
    other.mkdir()
    status.run_dir, status._ended = other, False
    with caplog.at_level("WARNING"):
        status.write(Progress("end", "failed", other, 1, 3, error="x"), force=True)
    assert [r.getMessage() for r in caplog.records] == [
        f"could not write {other / 'status.json'} (No space left on device)"
    ]


def test_a_disk_full_oserror_reads_as_no_space_left(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 428_000))
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "s1.npy"))
    assert failure_text(exc) == (
        f"no space left on {tmp_path / 'cache'} (0.4 MB free): free disk space, then continue "
        "the run (or start it again)"
    )
