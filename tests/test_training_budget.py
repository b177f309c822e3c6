"""A run's time budget (``TrainConfig.minutes``): the schedule over the epochs that fit, the stop
before an epoch that would not fit, the clock across resumes, the CLI flag."""

from __future__ import annotations

import itertools
import json
import math
import re

import pytest
import torch

from ctseg_core.cli import build_parser, main
from ctseg_core.cli.cmd_train import build_config
from ctseg_core.config import MAX_MINUTES, DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.errors import ConfigError
from ctseg_core.runs.run_folder import read_history, read_status
from ctseg_core.training.budget import (
    MANY_EPOCHS,
    continue_budget,
    epochs_that_fit,
    horizon,
    mean_epoch_s,
    trained_seconds,
)
from ctseg_core.training.optim import (
    ProgressLR,
    build_scheduler,
    cosine_factor,
    poly_factor,
    step_scheduler,
)
from ctseg_core.training.presets import preset
from ctseg_core.training.trainer import Trainer

TINY_ARGS = ["--size", "64", "64", "--features", "8", "16", "32", "64", "--bottleneck", "64"]


def tiny_config(root, run_name="", **train) -> RunConfig:
    """As in test_training: a small model on 64 x 64 slices, a few steps per epoch."""
    settings = {"epochs": 2, "steps_per_epoch": 3, "amp": "off", "sample_figure": False} | train
    return RunConfig(
        DataConfig(
            data_root=str(root), target_size=(64, 64), batch_size=4, val_slices_per_subject=6
        ),
        ModelConfig(features=[8, 16, 32, 64], bottleneck=64),
        TrainConfig(**settings),
        run_name=run_name,
    )


def test_the_horizon_is_the_epochs_that_fit_and_the_schedule_follows_it():
    # the EPYC: 23 s epochs, 10 minutes, at most 200 epochs
    assert horizon(23.0, 23.0, 600.0, 1, 200) == 26  # 1 done, 577 s left: 25 more
    assert horizon(230.0, 23.0, 600.0, 10, 200) == 26
    assert horizon(598.0, 23.0, 600.0, 26, 200) == 26  # nothing more fits
    assert horizon(135.0, 13.5, 600.0, 10, 200) == 44  # the Xeon: 13.5 s epochs
    assert horizon(300.0, 23.0, 3600.0, 10, 26) == 26  # the epochs bind before the budget
    assert horizon(230.0, 23.0, None, 10, 42) == 42  # no budget: the epochs
    assert horizon(10.0, None, 600.0, 1, 42) == 42  # no estimate yet
    assert cosine_factor(10 / 26) == pytest.approx(0.677302, abs=1e-6)
    assert poly_factor(10 / 26, 0.9) == pytest.approx(0.645999, abs=1e-6)  # (16/26)^0.9
    assert cosine_factor(0.0) == 1.0 and cosine_factor(1.0) == pytest.approx(0.0, abs=1e-12)
    assert cosine_factor(1.5) == pytest.approx(0.0, abs=1e-12) and poly_factor(-1, 2) == 1.0
    # at progress k / T the factors are PyTorch's epoch-based schedules over T epochs
    for make, factor in (
        (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=26), cosine_factor),
        (lambda o: torch.optim.lr_scheduler.PolynomialLR(o, 26, power=0.9),
         lambda p: poly_factor(p, 0.9)),
    ):  # fmt: skip
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        sched = make(opt)
        for k in range(1, 27):
            opt.step()
            sched.step()
            assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * factor(k / 26), abs=1e-9)
    # the estimate leaves the first (warm-up) epoch out once another is measured
    assert mean_epoch_s([20.0]) == 20.0 and mean_epoch_s([20.0, 13.0]) == 13.0
    assert mean_epoch_s([20.0, 13.0, 14.0, 12.0, 15.0]) == pytest.approx(41 / 3)
    assert mean_epoch_s([]) is None
    # the clock of a resumed run: the last elapsed_s, and the seconds of records before it
    assert trained_seconds([{"seconds": 5.0}, {"seconds": 7.5}]) == 12.5
    assert trained_seconds([{"seconds": 5.0, "elapsed_s": 30.0}, {"seconds": 4.0}]) == 34.0


def test_progress_lr_never_climbs_back_and_round_trips_its_state(tmp_path):
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=0.1)
    budgeted = TrainConfig(scheduler="cosine", minutes=10.0, lr=0.1)
    sched = build_scheduler(opt, budgeted)
    assert isinstance(sched, ProgressLR) and opt.param_groups[0]["lr"] == 0.1
    step_scheduler(sched, {}, 0.5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    step_scheduler(sched, {}, 0.25)  # a longer horizon later: the lr holds
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    torch.save(sched.state_dict(), tmp_path / "s.pth")
    fresh_opt = torch.optim.Adam([param], lr=0.1)
    fresh = build_scheduler(fresh_opt, budgeted)
    fresh.load_state_dict(torch.load(tmp_path / "s.pth", weights_only=True))
    assert fresh.progress == 0.5 and fresh_opt.param_groups[0]["lr"] == pytest.approx(0.05)
    # a run given a budget on resume: the epoch-based scheduler's share becomes the progress
    old_opt = torch.optim.Adam([param], lr=0.1)
    old = torch.optim.lr_scheduler.CosineAnnealingLR(old_opt, T_max=40)
    for _ in range(10):
        old_opt.step()
        old.step()
    fresh.load_state_dict(old.state_dict())
    assert fresh.progress == 0.25
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(old_opt.param_groups[0]["lr"])
    # only a resume with a new horizon sets the progress back (the lr rises)
    fresh.replan(0.1)
    assert fresh.progress == 0.1
    assert fresh_opt.param_groups[0]["lr"] == pytest.approx(0.1 * cosine_factor(0.1))
    # without a budget too (stepped with epoch / epochs: PyTorch's schedules, above); the
    # shapeless schedulers are PyTorch's own
    assert isinstance(build_scheduler(opt, TrainConfig(scheduler="cosine")), ProgressLR)
    plateau = build_scheduler(opt, TrainConfig(scheduler="plateau", minutes=5.0))
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert build_scheduler(opt, TrainConfig(scheduler="poly", minutes=5.0)).shape(0.5) == (
        pytest.approx(0.5**0.9)
    )


def test_minutes_is_checked_saved_and_optional_in_old_configs(phantom_root):
    for bad in (0, -1.0, math.nan, math.inf, True, "10", 1e306, MAX_MINUTES * 1.01):
        with pytest.raises(ConfigError, match=r"time budget must be > 0 and at most 1000000 min"):
            tiny_config(phantom_root, minutes=bad).validate()
    assert tiny_config(phantom_root, minutes=MAX_MINUTES).validate().train.minutes == MAX_MINUTES
    # the arithmetic of a budget holds at any size: no OverflowError after the first epoch
    assert epochs_that_fit(1e306 * 60, 0.01) == MANY_EPOCHS
    assert epochs_that_fit(math.inf, 0.01) == MANY_EPOCHS
    assert epochs_that_fit(math.nan, 1.0) == epochs_that_fit(5.0, 0.0) == 0
    assert horizon(1.0, 1e-3, 1e307, 1, 200) == 200
    with pytest.raises(ConfigError, match="at most 1000000 minutes, or 0 for none"):
        continue_budget(phantom_root, TrainConfig(), 1e306, [])
    config = tiny_config(phantom_root, minutes=2.5)
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again.train.minutes == 2.5
    old = config.to_dict()
    del old["train"]["minutes"]  # a config.json from before the budget
    assert RunConfig.from_dict(old).validate().train.minutes is None
    demo = preset("phantom_demo")
    assert demo.train.minutes == 10.0 and demo.train.epochs == 200
    assert demo.train.scheduler == "cosine"


# far more epochs than any budget of the test lets run: the budget, not the cap, ends the run
# (CI's machine ran 0.03 s epochs, and 200 of them fitted a 6 s budget)
EPOCH_CAP = 100_000


def _budget_config(root, name: str, minutes: float | None, epochs: int = EPOCH_CAP) -> RunConfig:
    """Epochs of one step of 2 slices at 32 x 32 and one validation slice: 0.03 s on a fast
    quiet core, 2 s on a busy one."""
    config = tiny_config(
        root, name, epochs=epochs, steps_per_epoch=1, minutes=minutes, scheduler="cosine"
    )
    config.data.target_size, config.data.batch_size = (32, 32), 2
    config.data.val_slices_per_subject = 1
    return config


def _check_schedule(history: list[dict], lr0: float, resumed: tuple[int, int] | None = None):
    """Each epoch's lr is the cosine at the largest done / planned_epochs so far; ``resumed``
    (n, horizon): resumed after n epochs with more minutes, the schedule goes on from n /
    horizon (the epochs that fit the new budget), wherever the old one ended."""
    progress = 0.0
    assert history[0]["lr"] == lr0
    for before, record in itertools.pairwise(history):
        assert before["planned_epochs"] >= before["epoch"]
        if resumed is not None and before["epoch"] == resumed[0]:
            progress = resumed[0] / resumed[1]
        else:
            progress = max(progress, before["epoch"] / before["planned_epochs"])
        assert record["lr"] == pytest.approx(lr0 * cosine_factor(progress), rel=1e-9, abs=1e-15)


def test_a_time_budget_ends_the_run_and_counts_across_resumes(phantom_root, tmp_path):
    # the first epochs of a process carry its warm-up (imports, first kernels): out of the way,
    # and a measure of this machine's epochs now (0.5 s quiet, 3 s on a busy 2-core machine)
    # (the second epoch holds the first history plot's imports)
    Trainer(_budget_config(phantom_root, "warm", None, 3), checkpoints_root=tmp_path).run()
    warm = read_history(tmp_path / "warm")
    assert warm[0]["elapsed_s"] > 0 and "planned_epochs" not in warm[0]  # without a budget
    epoch_s = warm[2]["elapsed_s"] - warm[1]["elapsed_s"]
    minutes = round(min(max(6 * epoch_s, 6.0), 30.0) / 60, 2)  # about 6 epochs
    budget_s = minutes * 60
    events = []
    trainer = Trainer(
        _budget_config(phantom_root, "b", minutes), checkpoints_root=tmp_path,
        callbacks=[events.append],
    )  # fmt: skip
    assert trainer.run() == "finished"
    run = tmp_path / "b"
    history, status = read_history(run), read_status(run)
    n = len(history)
    assert 2 <= n < EPOCH_CAP, history
    assert status["state"] == "finished" and status["epochs"] == n and status["eta_s"] == 0.0
    assert re.fullmatch(
        rf"the time budget of {minutes:g} min ended the run after {n} epochs \(\d+\.\d min trained; "
        r"another epoch would take about \d+ s\)",
        status["message"],
    ), status["message"]
    # an epoch lasts from one validation's end to the next: the differences of elapsed_s
    elapsed = [r["elapsed_s"] for r in history]
    durations = [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]
    assert trainer.budget.durations == durations and min(durations) > 0
    # another epoch was expected to fit after each epoch but the last, and not after it
    fits = [
        epochs_that_fit(budget_s - elapsed[k], mean_epoch_s(durations[: k + 1])) for k in range(n)
    ]
    assert all(fits[:-1]) and fits[-1] == 0, fits
    _check_schedule(history, 1e-3)
    assert history[-1]["lr"] < 1e-3  # decayed within the budget (not over the cap)
    # status.json and the callbacks plan the epochs that fit, and the ETA is theirs
    ends = [e for e in events if e.kind == "epoch"]
    assert [e.epoch for e in ends] == list(range(1, n + 1)) and ends[-1].epochs == n
    for e in ends:
        assert e.epoch <= e.epochs < EPOCH_CAP
        est = mean_epoch_s(durations[: e.epoch])
        assert e.eta_s == pytest.approx((e.epochs - e.epoch) * est, rel=1e-9, abs=1e-9)

    # the budget is spent: a resume must ask for more time
    with pytest.raises(
        ConfigError, match=rf"has trained \d+\.\d of its {minutes:g} minutes already"
    ):
        Trainer.resume(run)
    with pytest.raises(ConfigError, match="keeps a time budget"):
        Trainer.resume(run, minutes=0)
    longer = math.ceil((elapsed[-1] + 2.5 * mean_epoch_s(durations)) / 60 * 100) / 100
    resumed = Trainer.resume(run, minutes=longer)  # room for about two more epochs
    resumed.open_run()  # as the CLI and the dashboard's job do: config.json gets the new budget
    assert resumed.run() == "finished"
    more = read_history(run)
    assert len(more) > n and [r["epoch"] for r in more] == list(range(1, len(more) + 1))
    assert more[:n] == history
    # the clock went on from the last record: the first resumed epoch adds its own seconds
    assert more[n]["elapsed_s"] - more[n - 1]["elapsed_s"] == pytest.approx(
        more[n]["seconds"], abs=0.01
    )
    assert resumed.budget.already_s == history[-1]["elapsed_s"]
    assert json.loads((run / "config.json").read_text())["train"]["minutes"] == longer
    assert f"ended the run after {len(more)} epoch" in read_status(run)["message"]
    # the old schedule had ended at lr 0; the new one spans the epochs the new budget holds
    planned = n + epochs_that_fit(longer * 60 - elapsed[-1], mean_epoch_s(durations))
    assert planned > n and more[n]["lr"] == pytest.approx(1e-3 * cosine_factor(n / planned))
    _check_schedule(more, 1e-3, resumed=(n, planned))


def test_cli_minutes_flag_sets_the_budget_and_resumes_with_more(phantom_root, tmp_path, capsys):
    parser = build_parser()
    base = ["train", "--data", str(phantom_root)]
    assert build_config(parser.parse_args([*base, "--minutes", "7.5"])).train.minutes == 7.5
    assert build_config(parser.parse_args([*base, "--minutes", "0"])).train.minutes is None
    demo = build_config(parser.parse_args([*base, "--preset", "phantom_demo"]))
    assert demo.train.minutes == 10.0
    args = ["train", "--data", str(phantom_root), "--checkpoints", str(tmp_path), *TINY_ARGS,
            "--batch-size", "2", "--amp", "off", "--steps-per-epoch", "1", "--val-slices", "1"]  # fmt: skip
    assert main([*args, "--minutes", "-1", "--run", "neg"]) == 2
    assert "time budget must be > 0 and at most 1000000 minutes" in capsys.readouterr().err
    assert main([*args, "--epochs", "1", "--minutes", "30", "--run", "c", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["status"]["message"] == "finished 1 epochs"  # the epochs bound it first
    assert out["last_epoch"]["planned_epochs"] == 1
    assert json.loads((tmp_path / "c" / "config.json").read_text())["train"]["minutes"] == 30
    # --minutes is one of the settings a resume may change
    assert main(["train", "--resume", str(tmp_path / "c"), "--epochs", "2", "--minutes", "31",
                 "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["last_epoch"]["epoch"] == 2 and out["last_epoch"]["elapsed_s"] > 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["train"]["minutes"] == 31


def test_a_run_resumed_with_more_epochs_follows_the_schedule_over_them(phantom_root, tmp_path):
    """No budget: a finished 2-epoch cosine run resumed to 4 epochs trains epochs 3 and 4 at
    the cosine over 4 epochs (it stayed at the 2-epoch cosine's end, lr 0, then climbed back);
    poly from the CLI likewise; a stop resumed with the same epochs keeps its schedule."""
    lr0 = 1e-3
    config = _budget_config(phantom_root, "c", None, epochs=2)
    assert Trainer(config, checkpoints_root=tmp_path).run() == "finished"
    assert Trainer.resume(tmp_path / "c", epochs=4).run() == "finished"
    lrs = [r["lr"] for r in read_history(tmp_path / "c")]
    assert lrs == pytest.approx([lr0 * cosine_factor(k / 4 if k > 1 else k / 2) for k in range(4)])
    assert lrs[2] == pytest.approx(lr0 / 2) and lrs[3] > 0
    args = ["train", "--data", str(phantom_root), "--checkpoints", str(tmp_path), *TINY_ARGS,
            "--batch-size", "2", "--amp", "off", "--steps-per-epoch", "1", "--val-slices", "1",
            "--scheduler", "poly", "--lr", str(lr0)]  # fmt: skip
    assert main([*args, "--epochs", "2", "--run", "p"]) == 0
    assert main(["train", "--resume", str(tmp_path / "p"), "--epochs", "5"]) == 0
    lrs = [r["lr"] for r in read_history(tmp_path / "p")]
    power = TrainConfig().poly_power
    expected = [lr0, lr0 * poly_factor(1 / 2, power)] + [
        lr0 * poly_factor(k / 5, power) for k in (2, 3, 4)
    ]
    assert lrs == pytest.approx(expected) and min(lrs) > 0
    # a stopped run resumed as it was goes on with the schedule it had
    config = _budget_config(phantom_root, "s", None, epochs=4)
    stopper = Trainer(config, checkpoints_root=tmp_path)

    def stop_in_epoch_3(p) -> None:
        if p.kind == "step" and p.epoch == 3:
            stopper.stopper.event.set()

    stopper.callbacks.append(stop_in_epoch_3)
    assert stopper.run() == "stopped"
    assert len(read_history(tmp_path / "s")) == 2
    assert Trainer.resume(tmp_path / "s").run() == "finished"
    lrs = [r["lr"] for r in read_history(tmp_path / "s")]
    assert lrs == pytest.approx([lr0 * cosine_factor(k / 4) for k in range(4)])


def test_a_checkpoint_with_pytorchs_scheduler_state_resumes_on_the_runs_own_horizon(
    phantom_root, tmp_path
):
    """A run from before ProgressLR, resumed then to more epochs, kept CosineAnnealingLR's first
    T_max: its state says 3 of 2 epochs done (lr 0) for a run of 6. Resumed as it is, the
    schedule goes on over the run's 6 epochs, not at 0."""
    lr0 = 1e-3
    config = _budget_config(phantom_root, "old", None, epochs=3)
    assert Trainer(config, checkpoints_root=tmp_path).run() == "finished"
    saved = torch.load(tmp_path / "old" / "last.pth", weights_only=True)
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr0)
    old = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=2)
    for _ in range(3):
        optimizer.step()
        old.step()
    saved["scheduler"] = old.state_dict()
    saved["config"]["train"]["epochs"] = 6
    torch.save(saved, tmp_path / "old" / "last.pth")
    assert Trainer.resume(tmp_path / "old").run() == "finished"
    lrs = [r["lr"] for r in read_history(tmp_path / "old")][3:]
    assert lrs == pytest.approx([lr0 * cosine_factor(k / 6) for k in (3, 4, 5)])


def test_a_resume_from_another_folder_does_not_train_on_other_cts(
    phantom_root, tmp_path, monkeypatch, capsys
):
    """`--data phantom` typed in one folder and a resume typed in another that has its own
    phantom/: the run carried on with the other CTs without a word (reviewer). The CLI now
    records the absolute path, and a resume whose training subjects are not the recorded
    ones is refused (a run from before: by their number)."""
    import shutil

    here, there = tmp_path / "here", tmp_path / "there"
    (here / "phantom").mkdir(parents=True)
    (there / "phantom").mkdir(parents=True)
    train = [line.split(";")[0] for line in (phantom_root / "meta.csv").read_text().splitlines()
             if line.endswith(";train")]  # fmt: skip
    for child in phantom_root.iterdir():
        (here / "phantom" / child.name).symlink_to(child)
        if child.name != train[0]:  # one training subject fewer there
            (there / "phantom" / child.name).symlink_to(child)
    monkeypatch.chdir(here)
    assert build_config(
        build_parser().parse_args(["train", "--data", "phantom"])
    ).data.data_root == (str(here / "phantom"))
    args = ["train", "--data", "phantom", "--checkpoints", str(tmp_path / "runs"), *TINY_ARGS,
            "--batch-size", "2", "--amp", "off", "--steps-per-epoch", "1", "--val-slices", "1",
            "--epochs", "1", "--run", "r"]  # fmt: skip
    assert main(args) == 0
    run = tmp_path / "runs" / "r"
    assert json.loads((run / "config.json").read_text())["data"]["data_root"] == str(
        here / "phantom"
    )
    # an older run that recorded the path as typed: resumed from there, it is refused
    config = json.loads((run / "config.json").read_text())
    ckpt = torch.load(run / "last.pth", weights_only=True)
    ckpt["config"]["data"]["data_root"] = "phantom"
    torch.save(ckpt, run / "last.pth")
    monkeypatch.chdir(there)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"this run trained on {len(train)} train subjects of " in err
    assert f"phantom gives {len(train) - 1} other ones here" in err
    del ckpt["training_data"]["subject_ids_sha1"]  # a record from before the digest
    torch.save(ckpt, run / "last.pth")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    shutil.rmtree(there / "phantom")
    (there / "phantom").symlink_to(here / "phantom")  # the same CTs: resumed
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert config["data"]["data_root"] == str(here / "phantom")
