"""Train page: runs that ended before completing an epoch, and a form that starts only on Start."""

from __future__ import annotations

from pathlib import Path

import pytest

from dashboard.helpers.run_actions import drawn

pytestmark = pytest.mark.timeout(300)


def _stopped_in_first_epoch(dirs, root: Path, name: str, make_tiny_config) -> Path:
    """A run the library stopped at its first step (as Stop or Ctrl-C does): no epoch, no .pth."""
    from ctseg_core.training.trainer import Trainer

    config = make_tiny_config(dirs, name, epochs=2, steps=50).validate()
    trainer = Trainer(config, checkpoints_root=root, started_by="alice (CLI)")

    def stop_at_first_step(p) -> None:
        if p.kind == "step":
            trainer.stopper.event.set()

    trainer.callbacks.append(stop_at_first_step)
    assert trainer.run() == "stopped"
    return root / name


def test_a_run_stopped_in_its_first_epoch_is_said_empty_and_removed_after_a_confirmation(
    app_env, make_tiny_config, monkeypatch, tmp_path, new_app, no_problems
):
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    run_dir = _stopped_in_first_epoch(app_env, tmp_path, "early", make_tiny_config)
    at = new_app("train")
    at.session_state["ctseg_train_run"] = "early"
    at.run()
    no_problems(at)
    assert {m.label: m.value for m in at.metric}["State"] == "stopped"
    (progress,) = at.get("progress")
    text = progress.proto.text.replace("\\", "")  # shown as plain text: Markdown escaped
    assert "last.pth" not in text
    assert "no epoch was completed, so there is no checkpoint to resume" in text
    notes = [i.value for i in at.info if "ended before completing an epoch" in i.value]
    assert notes == [
        "early ended before completing an epoch: it has no checkpoint to resume. Start a new "
        "run under the same name (it takes this folder) or remove this one."
    ]
    resumable = at.selectbox(key="ctseg_train_resume_pick").options
    assert not [o for o in resumable if o.startswith("early")]  # nothing to resume
    assert run_dir.is_dir()  # the popover only asks; its button removes
    at.button(key=f"ctseg_train_remove_empty_early_{drawn(run_dir)}").click()
    at.run()
    no_problems(at)
    assert not run_dir.exists()
    assert any(
        c.value.startswith("No run folders under") for c in at.caption
    )  # it was the only one
    assert [t.value for t in at.toast] == ["Removed early"]


def test_starting_again_under_the_name_of_an_empty_run_says_it_takes_its_folder(
    app_env, make_tiny_config, monkeypatch, tmp_path, new_app, no_problems
):
    from ctseg_core.runs.run_folder import read_status
    from ctseg_core.training.job import get_job

    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    run_dir = _stopped_in_first_epoch(app_env, tmp_path, "again", make_tiny_config)
    (run_dir / "error.log").write_text("the earlier start's traceback")
    at = new_app("train")
    at.run()
    at.slider(key="ctseg_train_epochs").set_value(1)
    at.select_slider(key="ctseg_train_size").set_value(64)
    at.selectbox(key="ctseg_train_width").set_value("tiny (8)")
    at.number_input(key="ctseg_train_steps").set_value(1)
    at.number_input(key="ctseg_train_val").set_value(1)
    at.text_input(key="ctseg_train_run_name").set_value("again")
    at.button(key="FormSubmitter:train_form-Start").click()
    at.run()
    no_problems(at)
    assert [t.value for t in at.toast] == [
        "Started again in the folder of the earlier again, which trained no epoch"
    ]
    job = get_job()
    assert job.wait(120)
    assert read_status(run_dir)["state"] == "finished" and (run_dir / "last.pth").is_file()
    assert not (run_dir / "error.log").exists()  # the earlier start's failure is gone with it


def test_enter_in_the_run_name_does_not_start_a_training(app_env, new_app, no_problems):
    at = new_app("train")
    at.run()
    no_problems(at)
    (form,) = [f for f in at.form if f.proto.form.form_id == "train_form"]
    # Streamlit submits a form on Enter in its text inputs unless told not to
    assert form.proto.form.enter_to_submit is False
