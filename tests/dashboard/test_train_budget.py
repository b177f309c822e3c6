"""Train page: a run's time budget on the form (from the preset) and on Resume."""

from __future__ import annotations

import json

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
