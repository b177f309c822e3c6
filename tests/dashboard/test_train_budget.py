"""Train page: a run's time budget on the form (from the preset) and on Resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(300)


def _start(at, name: str, minutes: float, epochs: int) -> None:
    at.number_input(key="ctseg_train_minutes").set_value(minutes)
    at.slider(key="ctseg_train_epochs").set_value(epochs)
    at.select_slider(key="ctseg_train_size").set_value(64)
    at.selectbox(key="ctseg_train_width").set_value("tiny (8)")
    at.number_input(key="ctseg_train_steps").set_value(1)
    at.number_input(key="ctseg_train_val").set_value(1)
    at.text_input(key="ctseg_train_run_name").set_value(name)
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()


def test_the_train_form_sets_a_time_budget_and_resume_gives_more_time(
    app_env, monkeypatch, tmp_path, new_app, no_problems
):
    from ctseg_core.runs.run_folder import read_status
    from ctseg_core.training.job import get_job
    from ctseg_core.training.presets import preset

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    at = new_app("train")
    at.run()
    no_problems(at)
    # the phantom dataset starts from phantom_demo: its 10 minutes, its 200 epochs at most
    assert at.number_input(key="ctseg_train_minutes").value == preset("phantom_demo").train.minutes
    assert at.slider(key="ctseg_train_epochs").value == 200
    _start(at, "no-budget", 0.0, 1)  # 0 = none
    no_problems(at)
    assert get_job().wait(120)
    assert (
        json.loads((tmp_path / "no-budget" / "config.json").read_text())["train"]["minutes"] is None
    )
    _start(at, "budget", 0.05, 200)
    no_problems(at)
    assert get_job().wait(120)
    config = json.loads((tmp_path / "budget" / "config.json").read_text())
    assert config["train"]["minutes"] == 0.05 and config["train"]["epochs"] == 200
    status = read_status(tmp_path / "budget")
    assert status["state"] == "finished"
    assert status["message"].startswith("the time budget of 0.05 min ended the run after")
    done = status["epoch"]
    assert status["epochs"] == done  # the view shows the epochs the budget held, not 200
    # Resume offers the run's budget with 5 minutes more once it has finished
    at.run()
    at.selectbox(key="ctseg_train_resume_pick").set_value("budget")
    at.run()
    no_problems(at)
    more = at.number_input(key="ctseg_train_resume_minutes_budget")
    assert more.value == pytest.approx(5.05)
    # ... up to the run's own cap, not to the epochs its budget held: 5 more minutes, all theirs
    assert at.number_input(key="ctseg_train_resume_epochs_budget").value == 200
    more.set_value(0.5)
    at.number_input(key="ctseg_train_resume_epochs_budget").set_value(done + 1)
    at.button(key="ctseg_train_resume").click()
    at.run()
    no_problems(at)
    assert get_job().wait(120)
    assert read_status(tmp_path / "budget")["epoch"] == done + 1
    assert json.loads((tmp_path / "budget" / "config.json").read_text())["train"]["minutes"] == 0.5
    # a run without a budget is resumed without one: no minutes to give
    at.selectbox(key="ctseg_train_resume_pick").set_value("no-budget")
    at.run()
    assert not [n for n in at.number_input if n.key == "ctseg_train_resume_minutes_no-budget"]


def test_resume_starts_from_the_runs_own_cap_and_changes_only_what_the_user_changes(
    app_env, make_tiny_config, monkeypatch, tmp_path, new_app, no_problems
):
    import threading

    from ctseg_core.runs.run_folder import read_status
    from ctseg_core.training.job import TrainingJob
    from ctseg_core.training.trainer import Trainer

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    # a run of at most 100000 epochs within 30 minutes, stopped after its first epoch: its
    # status.json holds the epochs expected to fit (a few hundred), not the cap
    config = make_tiny_config(app_env, "stopped", epochs=100_000, steps=1)
    config.train.minutes = 30.0
    stop = threading.Event()

    def stop_after_first(p) -> None:
        if p.kind == "epoch":
            stop.set()

    trainer = Trainer(config, checkpoints_root=tmp_path, callbacks=[stop_after_first],
                      stop_event=stop)  # fmt: skip
    assert trainer.run() == "stopped"
    assert 1 < read_status(tmp_path / "stopped")["epochs"] < 100_000
    asked = []
    monkeypatch.setattr(
        TrainingJob, "resume", lambda self, run_dir, **kw: asked.append(kw) or Path(run_dir)
    )
    at = new_app("train")
    at.run()
    at.selectbox(key="ctseg_train_resume_pick").set_value("stopped")
    at.run()
    no_problems(at)
    assert at.number_input(key="ctseg_train_resume_epochs_stopped").value == 100_000
    assert at.number_input(key="ctseg_train_resume_minutes_stopped").value == 30.0
    at.button(key="ctseg_train_resume").click()
    at.run()
    # the form as it came: the run goes on with its own settings (its cap, not the plan)
    assert [(kw["epochs"], kw["minutes"]) for kw in asked] == [(100_000, 30.0)]
    at.number_input(key="ctseg_train_resume_epochs_stopped").set_value(50)
    at.number_input(key="ctseg_train_resume_minutes_stopped").set_value(45.0)
    at.button(key="ctseg_train_resume").click()
    at.run()
    assert [(kw["epochs"], kw["minutes"]) for kw in asked][1:] == [(50, 45.0)]


def test_resume_after_a_resume_stopped_in_its_first_epoch(
    app_env, make_tiny_config, monkeypatch, tmp_path, new_app, no_problems
):
    """config.json holds the cap the stopped resume asked for (3), last.pth still its older
    settings (1): the form's Resume goes on to 3 (it sent "as configured", which the trainer
    took from last.pth: "has trained 1 of 1 epochs already")."""
    import threading

    from ctseg_core.runs.run_folder import read_json, read_status
    from ctseg_core.training.trainer import Trainer

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    config = make_tiny_config(app_env, "r", epochs=1, steps=2)
    assert Trainer(config, checkpoints_root=tmp_path).run() == "finished"
    run = tmp_path / "r"
    stop = threading.Event()
    resumed = Trainer.resume(run, epochs=3, stop_event=stop,
                             callbacks=[lambda p: p.kind == "step" and stop.set()])  # fmt: skip
    resumed.open_run()  # as the dashboard's job and the CLI start it: config.json rewritten
    assert resumed.run() == "stopped"
    assert read_json(run / "config.json")["train"]["epochs"] == 3
    at = new_app("train")
    at.run()
    at.selectbox(key="ctseg_train_resume_pick").set_value("r")
    at.run()
    assert at.number_input(key="ctseg_train_resume_epochs_r").value == 3
    at.button(key="ctseg_train_resume").click()
    at.run()
    no_problems(at)
    from dashboard.cached import training_job

    assert training_job().wait(120)
    assert read_status(run)["state"] == "finished" and read_status(run)["epoch"] == 3
