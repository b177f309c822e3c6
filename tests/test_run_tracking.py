"""The run tracker's files: steps.jsonl per step (resume without duplicates), TensorBoard event
files readable as TFRecords, notes and tags, and deleting a run (never an active one)."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.errors import CtsegError
from ctseg_core.runs.machine import MachineSampler
from ctseg_core.runs.notes import delete_run, read_notes, write_notes
from ctseg_core.runs.run_folder import write_status
from ctseg_core.runs.step_log import STEPS_FILE, read_steps
from ctseg_core.runs.tensorboard import crc32c, masked_crc
from ctseg_core.training.trainer import Trainer


def _config(phantom_root: Path, epochs: int, **train) -> RunConfig:
    return RunConfig(
        DataConfig(data_root=str(phantom_root), target_size=(64, 64), batch_size=4,
                   val_slices_per_subject=2, structures=["liver", "spleen"]),
        ModelConfig(features=[4, 8, 16, 32], bottleneck=32),
        TrainConfig(epochs=epochs, steps_per_epoch=3, amp="off", checkpoint_every=0, **train),
        run_name="tracked",
    )  # fmt: skip


def _tf_records(path: Path) -> list[bytes]:
    """The payloads of a TFRecord file, each frame's two masked CRC-32C checked."""
    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[at + 8 : at + 12])[0] == masked_crc(header)
        payload = data[at + 12 : at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length : at + 16 + length])[0] == masked_crc(
            payload
        )
        out.append(payload)
        at += 16 + length
    return out


def test_a_run_stopped_mid_epoch_and_resumed_logs_every_step_once_with_tensorboard_too(
    phantom_root, tmp_path, one_torch_thread
):
    stop = threading.Event()

    def stop_in_epoch_2(p) -> None:
        if p.kind == "step" and p.epoch == 2 and p.step == 1:
            stop.set()

    config = _config(phantom_root, epochs=3, tensorboard=True, sample_figure=True)
    trainer = Trainer(config, checkpoints_root=tmp_path, callbacks=[stop_in_epoch_2],
                      stop_event=stop)  # fmt: skip
    assert trainer.run() == "stopped"
    run_dir = tmp_path / "tracked"
    before = [(r["epoch"], r["step"]) for r in read_steps(run_dir)]
    assert before == [(1, 1), (1, 2), (1, 3), (2, 1)]  # flushed at the stop
    with open(run_dir / STEPS_FILE, "a") as handle:  # a crash cut a line short
        handle.write('{"epoch": 2, "step": 3, "lo')
    assert Trainer.resume(run_dir).run() == "finished"
    steps = read_steps(run_dir)
    assert [(r["epoch"], r["step"]) for r in steps] == [
        (e, s) for e in (1, 2, 3) for s in (1, 2, 3)
    ]
    lines = (run_dir / STEPS_FILE).read_text().splitlines()
    assert len(lines) == 9 and all(json.loads(line) for line in lines)  # cut line dropped
    assert all(r["steps_per_epoch"] == 3 and r["lr"] == 1e-3 for r in steps)
    assert all(0 < r["loss"] < 10 for r in steps)
    sampled = [r for r in steps if "ram_total_mb" in r]
    assert sampled and all(r["ram_total_mb"] > r["ram_used_mb"] > 0 for r in sampled)
    # two event files (start, resume), each a valid TFRecord stream
    files = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 2
    first, second = (_tf_records(f) for f in files)
    assert b"brain.Event:2" in first[0] and b"brain.Event:2" in second[0]
    assert sum(b"train/loss_step" in r for r in first) == 4
    assert sum(b"train/loss_step" in r for r in second) == 6  # epochs 2 and 3 from their start
    assert b"\x32\x02\x08\x01" in second[1]  # SessionLog START (field 6) at the resumed step
    assert sum(b"epoch/val_dice_mean" in r for r in first + second) == 3
    assert sum(b"\x89PNG" in r for r in first + second) == 3  # the sample figure of each epoch


def test_crc32c_matches_the_published_check_value():
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720's CRC-32C check value
    assert crc32c(b"") == 0


def test_the_machine_sampler_reads_cpu_use_after_its_first_sample():
    sampler = MachineSampler("cpu")
    # /proc/stat counts in jiffies (10 ms): burn a fixed 0.2 s of wall time, not a fixed amount
    # of work, so a fast CPU still sees the counters move between the two samples.
    start = time.monotonic()
    while time.monotonic() - start < 0.2:
        sum(i * i for i in range(10_000))
    sample = sampler.sample()
    assert 0.0 <= sample["cpu_pct"] <= 100.0
    assert 0 < sample["rss_mb"] < sample["ram_total_mb"]
    assert "gpu_mem_mb" not in sample  # a CPU run reports no GPU


def _run(root: Path, name: str, state: str) -> Path:
    run_dir = root / name
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    (run_dir / "last.pth").write_bytes(b"x")
    write_status(run_dir, {"state": state, "pid": os.getpid(), "host": socket.gethostname()})
    return run_dir


def test_notes_and_tags_are_kept_clean_and_a_running_run_is_never_deleted(tmp_path):
    ended = _run(tmp_path, "ended", "finished")
    assert read_notes(ended) == {"notes": "", "tags": []}
    kept = write_notes(ended, "lr 3e-4 diverged at epoch 7", " Baseline, lr-sweep ,baseline,")
    assert kept == {"notes": "lr 3e-4 diverged at epoch 7", "tags": ["baseline", "lr-sweep"]}
    assert read_notes(ended) == kept
    (ended / "notes.json").write_text("{not json")
    assert read_notes(ended) == {"notes": "", "tags": []}
    running = _run(tmp_path, "running", "running")
    with pytest.raises(CtsegError, match="is still running"):
        delete_run(running)
    assert (running / "last.pth").is_file()
    with pytest.raises(CtsegError, match="not a run folder"):
        delete_run(tmp_path / "nothing")
    delete_run(ended)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["running"]
