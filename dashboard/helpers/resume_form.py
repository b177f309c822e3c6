"""The Train page's resume form: its defaults from the run's own settings (config.json)."""

from __future__ import annotations

from pathlib import Path

#: epochs the form offers past a run that trained all its epochs
MORE_EPOCHS = 10
#: minutes the form offers past the budget of a run that ended (its budget or its epochs)
MORE_MINUTES = 5.0


def run_train_settings(run_dir: Path) -> tuple[int | None, float | None]:
    """(epochs, minutes) in the run's config.json: its epochs cap and its time budget (None:
    none). Not status.json's ``epochs``: for a run with a budget that is the estimate of the
    epochs that fit, not the cap. (None, None) when config.json cannot be read."""
    from ctseg_core.runs.run_folder import read_json

    try:
        train = read_json(run_dir / "config.json")["train"]
        epochs, minutes = train.get("epochs"), train.get("minutes")
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None, None
    epochs = int(epochs) if isinstance(epochs, int) and not isinstance(epochs, bool) else None
    ok = isinstance(minutes, (int, float)) and not isinstance(minutes, bool) and minutes > 0
    return epochs, float(minutes) if ok else None


def resume_defaults(
    done: int, run_state: str, epochs: int | None, minutes: float | None
) -> tuple[int, float | None]:
    """("until epoch", "within minutes") the form starts from for a run after ``done`` epochs,
    with ``epochs`` and ``minutes`` its config's (see ``run_train_settings``).

    Until epoch: the run's cap, MORE_EPOCHS past ``done`` once the cap is reached (or unknown).
    Minutes: the run's budget, MORE_MINUTES more for a run that "finished" (a budget-ended run:
    the cap, well past ``done``, then leaves the extra minutes their epochs)."""
    until = epochs if epochs is not None and epochs > done else done + MORE_EPOCHS
    if minutes is not None and run_state == "finished":
        minutes += MORE_MINUTES
    return until, minutes
