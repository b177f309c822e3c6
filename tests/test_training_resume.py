"""Resuming a run: best.pth after a NaN score, a resume from an older checkpoint, the clock of a
stopped epoch."""

from __future__ import annotations

import json
import math
import threading

import pytest

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.models.checkpoint import load_checkpoint
from ctseg_core.runs.run_folder import read_history
from ctseg_core.training.stopping import epoch_score, epochs_since_best
from ctseg_core.training.trainer import Trainer


def small_config(root, run_name: str, **train) -> RunConfig:
    """One step of 2 slices at 32 x 32 and one validation slice per subject: a fast epoch."""
    settings = {"epochs": 2, "steps_per_epoch": 1, "amp": "off", "sample_figure": False} | train
    return RunConfig(
        DataConfig(data_root=str(root), target_size=(32, 32), batch_size=2,
                   val_slices_per_subject=1),
        ModelConfig(features=[8, 16, 32, 64], bottleneck=64),
        TrainConfig(**settings),
        run_name=run_name,
    )  # fmt: skip


def scripted_validation(monkeypatch, scores):
    """Validation that returns ``scores`` in turn as its val loss (no Dice measured)."""
    import ctseg_core.training.parts as parts

    values = iter(scores)
    monkeypatch.setattr(
        parts,
        "validate",
        lambda *a, **k: {"val_loss": next(values), "val_dice_mean": None, "val_dice": {}},
    )


def stop_after(epoch: int):
    """(stop event, callback) that stops a run once ``epoch`` has completed."""
    event = threading.Event()

    def callback(p) -> None:
        if p.kind == "epoch" and p.epoch == epoch:
            event.set()

    return event, callback


def test_a_nan_score_is_no_score_for_fresh_and_resumed_runs(phantom_root, tmp_path, monkeypatch):
    nan = math.nan
    assert epoch_score({"val_loss": nan, "val_dice_mean": None}) == -math.inf
    assert epoch_score({"val_loss": 1.0, "val_dice_mean": nan}) == -math.inf
    assert epoch_score({"val_loss": 2.0, "val_dice_mean": None}) == -2.0
    assert epoch_score({}) == -math.inf
    # as the loop counts them: epochs without a score count from the start
    assert epochs_since_best([-math.inf, -math.inf]) == 2
    assert epochs_since_best([-math.inf, -0.9, -1.0]) == 1
    assert epochs_since_best([]) == 0
    # epoch 1's val loss is NaN, then 0.9 is the best: stopped after epoch 2 and resumed,
    # best.pth holds epoch 2 as in the uninterrupted run (not the NaN's epoch 1 for ever)
    scripted_validation(monkeypatch, [nan, 0.9, 0.8, 0.7] * 2)
    Trainer(small_config(phantom_root, "a", epochs=4), checkpoints_root=tmp_path).run()
    event, callback = stop_after(1)
    config = small_config(phantom_root, "b", epochs=4)
    stopped = Trainer(config, checkpoints_root=tmp_path, callbacks=[callback], stop_event=event)
    assert stopped.run() == "stopped"
    assert not (tmp_path / "b" / "best.pth").exists()  # the NaN epoch is no best
    resumed = Trainer.resume(tmp_path / "b")
    resumed.open_run()
    assert resumed.run() == "finished"
    for name in "ab":
        assert load_checkpoint(tmp_path / name / "best.pth")["epoch"] == 4, name
        assert len(read_history(tmp_path / name)) == 4


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Small models: one torch thread is faster on the 2-core machine."""


def test_a_resume_from_an_older_checkpoint_is_refused_unless_it_branches(
    phantom_root, tmp_path, monkeypatch, capsys
):
    from ctseg_core.cli import main
    from ctseg_core.errors import ConfigError

    # val losses: epoch 3 is the run's best; the branch's epochs 3 and 4 are worse than epoch 2
    scripted_validation(monkeypatch, [0.5, 0.4, 0.1, 0.6, 0.7, 0.8])
    config = small_config(phantom_root, "r", epochs=4, checkpoint_every=2)
    Trainer(config, checkpoints_root=tmp_path).run()
    run = tmp_path / "r"
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    older = run / "checkpoint_epoch2.pth"
    with pytest.raises(ConfigError) as refused:
        Trainer.resume(older)
    text = str(refused.value)
    assert "\n" not in text and "holds epoch 2" in text
    for name in ("last.pth (epoch 4)", "best.pth (epoch 3)", "history.jsonl (epochs 3-4)"):
        assert name in text
    assert f"`ctseg train --resume {run}`" in text
    assert f"`ctseg train --resume {older} --branch NEW_NAME`" in text
    assert main(["train", "--resume", str(older)]) == 2  # the CLI: the same one line
    assert "--branch NEW_NAME" in capsys.readouterr().err
    assert main(["train", "--data", str(phantom_root), "--branch", "x"]) == 2
    assert "give the checkpoint with --resume" in capsys.readouterr().err
    # a branch: a new run folder beside it continues from epoch 2; the run is left as it was
    branch = Trainer.resume(older, branch="r-from-2")
    assert branch.open_run() == tmp_path / "r-from-2"
    assert branch.run() == "finished"
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files
    new = tmp_path / "r-from-2"
    history = read_history(new)
    assert [r["epoch"] for r in history] == [1, 2, 3, 4]
    assert history[:2] == read_history(run)[:2]
    assert [r["val_loss"] for r in history[2:]] == [0.7, 0.8]
    assert load_checkpoint(new / "last.pth")["epoch"] == 4
    assert load_checkpoint(new / "best.pth")["epoch"] == 2  # the best up to epoch 2, kept
    assert json.loads((new / "branched_from.json").read_text())["epoch"] == 2
    assert json.loads((new / "config.json").read_text())["run_name"] == "r-from-2"
    # last.pth cut short and no later checkpoint left: the hint's command branches from the
    # newest intact one (best.pth, epoch 3), since history.jsonl holds epoch 4
    (run / "last.pth").write_bytes(files["last.pth"][:1000])
    (run / "checkpoint_epoch4.pth").unlink()
    with pytest.raises(ConfigError, match=r"best\.pth --branch NEW_NAME`"):
        Trainer.resume(run)


def test_a_stopped_partial_epoch_is_charged_to_the_time_budget(phantom_root, tmp_path):
    import time

    from ctseg_core.runs.run_folder import read_status

    stop = threading.Event()

    def slow_second_epoch(p) -> None:  # 1.5 s into epoch 2, then Stop
        if p.kind == "step" and p.epoch == 2 and not stop.is_set():
            time.sleep(1.5)
            stop.set()

    config = small_config(phantom_root, "s", epochs=50, minutes=30.0, steps_per_epoch=2)
    trainer = Trainer(config, checkpoints_root=tmp_path, callbacks=[slow_second_epoch],
                      stop_event=stop)  # fmt: skip
    assert trainer.run() == "stopped"
    run = tmp_path / "s"
    (record,) = read_history(run)
    status = read_status(run)
    assert status["state"] == "stopped" and status["epoch"] == 1
    # status.json keeps the clock at the stop: epoch 1 and the thrown-away part of epoch 2
    assert status["elapsed_s"] >= record["elapsed_s"] + 1.5
    resumed = Trainer.resume(run, epochs=2)
    assert resumed.clock_s == status["elapsed_s"]
    resumed.open_run()
    assert read_status(run)["elapsed_s"] == status["elapsed_s"]  # kept before training starts
    assert resumed.run() == "finished"
    assert resumed.budget.already_s == status["elapsed_s"]
    first, second = read_history(run)
    assert second["elapsed_s"] - first["elapsed_s"] >= second["seconds"] + 1.5


def test_a_run_whose_last_write_was_cut_short_resumes_from_last_pth_saying_so(
    phantom_root, tmp_path, monkeypatch, caplog
):
    """A full disk between best.pth and last.pth leaves best.pth an epoch past last.pth: the
    dashboard's Resume (from last.pth, the run's own state) was refused, with CLI advice only."""
    import logging
    import shutil

    from ctseg_core.runs.run_folder import write_history

    scripted_validation(monkeypatch, [0.5, 0.4, 0.1, 0.45])  # epoch 3 again: worse, 0.45
    Trainer(small_config(phantom_root, "r", epochs=3, checkpoint_every=2),
            checkpoints_root=tmp_path).run()  # fmt: skip
    run = tmp_path / "r"
    shutil.copyfile(run / "checkpoint_epoch2.pth", run / "last.pth")  # epoch 3's never written
    write_history(run, read_history(run)[:2])
    assert load_checkpoint(run / "best.pth")["epoch"] == 3
    earlier = run / "best_epoch3_before_resume.pth"  # set aside by an earlier such resume
    earlier.write_bytes(b"kept before")
    trainer = Trainer.resume(run, epochs=3)
    with caplog.at_level(logging.WARNING):
        assert trainer.run() == "finished"
    assert "best.pth (epoch 3) lie past last.pth's epoch 2" in caplog.text
    assert "(best.pth (epoch 3) is kept as best_epoch3_before_resume_2.pth)" in caplog.text
    assert earlier.read_bytes() == b"kept before"
    history = read_history(run)
    assert [(r["epoch"], r["val_loss"]) for r in history] == [(1, 0.5), (2, 0.4), (3, 0.45)]
    # best.pth is the history's best epoch (2), not the epoch 3 the history no longer holds
    assert load_checkpoint(run / "best.pth")["epoch"] == 2
    assert load_checkpoint(run / "best_epoch3_before_resume_2.pth")["epoch"] == 3


def test_a_refused_resume_leaves_the_run_as_it_was(phantom_root, tmp_path, monkeypatch):
    """A resume refused once its data is read (other training subjects in meta.csv; no GPU for
    --device cuda) had rewritten config.json (the epochs asked for), marked the finished run
    "failed", and set best.pth aside for last.pth's best, so a later evaluation of best.pth
    scored another model (found by a review). Now it leaves every file as it was."""
    import shutil

    import torch

    from ctseg_core.errors import ConfigError, DataError
    from ctseg_core.runs.run_folder import write_history

    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    scripted_validation(monkeypatch, [0.5, 0.4, 0.1])
    Trainer(small_config(data, "r", epochs=3, checkpoint_every=2),
            checkpoints_root=tmp_path / "runs").run()  # fmt: skip
    run = tmp_path / "runs" / "r"
    shutil.copyfile(run / "checkpoint_epoch2.pth", run / "last.pth")  # a write cut short
    write_history(run, read_history(run)[:2])
    files = {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()}
    meta = (data / "meta.csv").read_text().splitlines()
    moved = next(i for i, line in enumerate(meta) if line.endswith(";train"))
    meta[moved] = meta[moved].replace(";train", ";test")  # one training subject less
    (data / "meta.csv").write_text("\n".join(meta) + "\n")
    trainer = Trainer.resume(run, epochs=4)
    trainer.open_run()  # as the CLI and the dashboard's job do
    assert b'"epochs": 4' in (run / "config.json").read_bytes()
    with pytest.raises(ConfigError, match="this run trained on"):
        trainer.run()
    assert {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()} == files
    data.rename(tmp_path / "moved")  # --data is not taken by a resume: say where it must be
    with pytest.raises(DataError, match=f"this run trained on {data}, which is not there now"):
        Trainer.resume(run, epochs=4).open_run()
    assert {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()} == files
    (tmp_path / "moved").rename(data)
    if not torch.cuda.is_available():
        trainer = Trainer.resume(run, epochs=4)
        trainer.config.train.device = "cuda"  # as --device cuda on a machine without a GPU
        with pytest.raises(ConfigError):
            trainer.open_run()
            trainer.run()
        assert {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file()} == files


def test_a_resume_that_validates_on_other_subjects_says_so(phantom_root, tmp_path):
    """meta.csv's val and test subjects swapped between two starts: the resumed epochs scored
    other CTs than the first, and best.pth compared them without a word (found by a review)."""
    import shutil

    from ctseg_core.runs.run_folder import read_status

    data = tmp_path / "data"
    shutil.copytree(phantom_root, data)
    Trainer(small_config(data, "r", epochs=1), checkpoints_root=tmp_path / "runs").run()
    run = tmp_path / "runs" / "r"
    assert read_status(run).get("warning") is None
    meta = (data / "meta.csv").read_text()
    swapped = meta.replace(";val", ";was_val").replace(";test", ";val").replace(";was_val", ";test")
    assert swapped != meta
    (data / "meta.csv").write_text(swapped)
    trainer = Trainer.resume(run, epochs=2)
    trainer.open_run()
    assert trainer.run() == "finished"
    warning = read_status(run)["warning"]
    assert "the 'val' split now holds other validation subjects (" in warning
    assert "best.pth and early stopping compare scores of other CTs" in warning


def test_another_runs_checkpoint_in_a_run_folder_is_not_resumed_there(phantom_root, tmp_path):
    """A last.pth copied in from another run (another network, or the same network trained
    otherwise) was trained on in the folder: its history replaced the run's, and one folder
    held two runs' files. Refused, the run left as it was; a branch may continue from it."""
    import shutil

    from ctseg_core.errors import ConfigError

    for name, seed in (("a", 0), ("b", 1)):
        config = small_config(phantom_root, name, epochs=2)
        config.train.seed = seed
        assert Trainer(config, checkpoints_root=tmp_path).run() == "finished"
    wide = small_config(phantom_root, "wide", epochs=1)
    wide.model.features = [16, 16, 32, 64]
    assert Trainer(wide, checkpoints_root=tmp_path).run() == "finished"
    run = tmp_path / "a"
    for other in ("b", "wide"):
        shutil.copy(tmp_path / other / "last.pth", run / "last.pth")
        files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
        with pytest.raises(ConfigError) as refused:
            Trainer.resume(run, epochs=3)
        text = str(refused.value)
        assert "\n" not in text and "not this run's checkpoint" in text
        assert f"`ctseg train --resume {run} --branch NEW_NAME`" in text
        if other == "wide":
            assert "holds a network of model.features [16, 16, 32, 64] and run" in text
            assert "trains one of [8, 16, 32, 64]" in text
        else:
            assert "history.jsonl" in text
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files
    branch = Trainer.resume(run / "last.pth", epochs=3, branch="from-wide")
    assert branch.run() == "finished"
    # the run's own last.pth: resumed as before
    shutil.copy(tmp_path / "a" / "best.pth", run / "last.pth")  # epoch 2 of a itself
    assert Trainer.resume(run, epochs=3).run() == "finished"
    # widths given as a tuple in Python (a list in config.json): the run's own, resumed
    tupled = small_config(phantom_root, "tupled", epochs=1)
    tupled.model.features = (8, 16, 32, 64)
    assert Trainer(tupled, checkpoints_root=tmp_path).run() == "finished"
    assert Trainer.resume(tmp_path / "tupled", epochs=2).run() == "finished"
    # a config.json edited out of shape: the check cannot read it, and resume reads the .pth's
    (tmp_path / "tupled" / "config.json").write_text('{"model": {"no such setting": 1}}')
    assert Trainer.resume(tmp_path / "tupled", epochs=3).run() == "finished"
