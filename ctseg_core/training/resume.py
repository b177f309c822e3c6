"""What a resumed run continues from: its run folder, its checkpoint loaded, its settings with
the epochs and time budget asked for (``Trainer.resume``), and a branch: a new run folder that
continues from a checkpoint of another run.

A resume trains on in the run's own folder, replacing its last.pth, best.pth (when an epoch
improves), checkpoint_epoch<N>.pth and history.jsonl from the checkpoint's epoch on. From an
older checkpoint than the run's newest (``--resume RUN/checkpoint_epoch2.pth`` of a run that
trained 6) that would silently replace the later epochs' files, so it is refused, naming them;
``branch`` continues from it in a new run folder beside it instead, leaving the run as it is.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError, CtsegError
from ..fileio import atomic_path, atomic_write_bytes, atomic_write_json, is_file
from ..models.checkpoint import (
    config_of,
    intact_checkpoints,
    later_than,
    load_to_resume,
    resume_command,
    resume_source,
)
from ..runs.run_folder import (
    check_run_name,
    read_history,
    read_json,
    refuse_if_active,
    write_history,
)
from .budget import continue_budget, stopped_clock
from .stopping import epoch_score

log = logging.getLogger(__name__)

#: what a resume writes into the run folder before its data is checked (``files_before_resume``)
REWRITTEN = ("config.json", "label_map.json", "status.json")

#: a branch's record of where it came from: {"run", "checkpoint", "epoch"}
BRANCHED_FROM = "branched_from.json"


def prepare_resume(
    path: str | Path,
    epochs: int | None = None,
    minutes: float | None = None,
    branch: str | None = None,
) -> tuple[Path, Path, dict, RunConfig, float]:
    """(run folder, checkpoint file, checkpoint, config, its clock in s: ``stopped_clock``, 0
    for a branch) to continue ``path`` (a run folder:
    its last.pth; or a checkpoint file of one) with ``epochs`` and ``minutes`` (None: as they
    were); ``branch``: the name of a new run folder beside it to continue in (the config's
    ``run_name``).

    ConfigError for a file outside a run folder, a run still training, a checkpoint that cannot
    be read (naming the intact ones of the run and the command that continues from one), a
    checkpoint other than last.pth older than what the run holds past it without ``branch``
    (last.pth itself is the run's own state: files past it are said, and replaced as training
    passes their epochs), and a run that has already trained all its epochs or used its time
    budget.
    """
    run_dir, source = resume_source(path)
    if branch is not None:
        check_run_name(branch)
    refuse_if_active(run_dir)
    ckpt = load_to_resume(run_dir, source)
    if branch is None:
        refuse_foreign_checkpoint(run_dir, source, ckpt)
    later = later_than(run_dir, int(ckpt["epoch"])) if branch is None else []
    if later and source.name != "last.pth":  # last.pth is the run's own state (below)
        newest = resume_command(intact_checkpoints(run_dir)[0][0])
        raise ConfigError(
            f"{source} holds epoch {ckpt['epoch']}, and run {run_dir} has trained past it: "
            f"resuming there would replace {', '.join(later)}; continue from its newest "
            f"checkpoint (`{newest}`), or from this one in a new run folder "
            f"(`{resume_command(source, branch=True)}`)"
        )
    config = config_of(ckpt)
    if branch is not None:
        config.run_name = branch
    if epochs is not None:
        config.train.epochs = int(epochs)
    done = int(ckpt["epoch"])
    if done >= config.train.epochs:
        raise ConfigError(
            f"run {run_dir} has trained {done} of {config.train.epochs} epochs already; "
            f"ask for more to continue (--epochs {done + 10}, say)"
        )
    history = list(ckpt.get("history") or [])
    clock = stopped_clock(run_dir, done, history) if branch is None else 0.0
    continue_budget(run_dir, config.train, minutes, history, clock)
    return run_dir, source, ckpt, config, clock


def files_before_resume(run_dir: Path) -> dict[str, bytes | None]:
    """The run's files a resume rewrites before its data is checked (config.json with the
    epochs asked for, label_map.json, status.json "queued"), as they are: ``put_back`` restores
    them when the resume is refused there (other subjects, no dataset, no GPU)."""
    return {n: (run_dir / n).read_bytes() if is_file(run_dir / n) else None for n in REWRITTEN}


def put_back(run_dir: Path, files: dict[str, bytes | None]) -> None:
    """Restore ``files_before_resume``'s files: a refused resume leaves the run as it was."""
    for name, data in files.items():
        if data is None:
            (run_dir / name).unlink(missing_ok=True)
        else:
            atomic_write_bytes(run_dir / name, data)


def repair_past_last(run_dir: Path, ckpt: dict) -> None:
    """Once a resume from last.pth is accepted: files past its epoch (a write cut short after
    best.pth, a full disk; or leftovers of an earlier resume from an older checkpoint) are said,
    and a best.pth among them set aside (``set_best_aside``)."""
    done = int(ckpt["epoch"])
    later = later_than(run_dir, done)
    if later:
        aside = set_best_aside(run_dir, ckpt)
        log.warning(
            "%s: %s lie past last.pth's epoch %d; training on from last.pth replaces them as "
            "it passes their epochs%s", run_dir, ", ".join(later), done,
            f" ({aside})" if aside else "",
        )  # fmt: skip


def refuse_foreign_checkpoint(run_dir: Path, source: Path, ckpt: dict) -> None:
    """ConfigError when ``source`` is not ``run_dir``'s own checkpoint: another network than
    its config.json's, or epochs its history.jsonl records otherwise (another run's file copied
    in): training on would rewrite the run's history and mix two runs' files in one folder."""
    saved = read_json(run_dir / "config.json")
    way_out = (
        f"resume the run it came from, or continue from it in a new run folder "
        f"(`{resume_command(source, branch=True)}`)"
    )
    try:  # as JSON holds them (a tuple of widths given in Python is a list in config.json)
        ours = json.loads(json.dumps(dataclasses.asdict(RunConfig.from_dict(saved).model)))
        theirs = json.loads(json.dumps(dataclasses.asdict(config_of(ckpt).model)))
    except (CtsegError, TypeError, ValueError):  # an edited config.json: resume reads the .pth's
        ours = None
    if ours is not None and isinstance(saved.get("model"), dict):
        differ = [key for key in ours if ours[key] != theirs.get(key)]
        if differ:
            key = differ[0]
            raise ConfigError(
                f"{source} holds a network of model.{key} {theirs.get(key)} and run {run_dir} "
                f"trains one of {ours[key]} ({run_dir / 'config.json'}): not this run's "
                "checkpoint; " + way_out
            )
    recorded = {r.get("epoch"): r.get("train_loss") for r in read_history(run_dir)}
    for record in ckpt.get("history") or []:
        epoch, loss = record.get("epoch"), record.get("train_loss")
        other = recorded.get(epoch)
        if isinstance(loss, float) and isinstance(other, float) and not math.isclose(loss, other):
            raise ConfigError(
                f"{source} holds epoch {epoch} with training loss {loss:.6g} and run {run_dir}'s "
                f"history.jsonl {other:.6g}: not this run's checkpoint; " + way_out
            )


def seed_branch(branch_dir: Path, source: Path, ckpt: dict) -> str | None:
    """Fill a branch's new run folder as its run had it at ``source``'s epoch: ``source`` as
    last.pth, the checkpoint of the best epoch up to it as best.pth, its history, and
    ``BRANCHED_FROM``. Returns a warning when no file of the run holds that best epoch (its
    best.pth has moved on and no checkpoint_epoch<N>.pth kept it): best.pth then comes with the
    first epoch that scores above it."""
    history, done = list(ckpt.get("history") or []), int(ckpt["epoch"])
    with atomic_path(branch_dir / "last.pth", suffix=".pth") as tmp:
        shutil.copyfile(source, tmp)
    write_history(branch_dir, history)
    atomic_write_json(
        branch_dir / BRANCHED_FROM,
        {"run": str(source.parent), "checkpoint": str(source), "epoch": done},
    )
    log.info("run %s continues %s (epoch %d) as a branch", branch_dir, source, done)
    return _best_up_to(source.parent, branch_dir, history, done)


def _best_up_to(run_dir: Path, into: Path, history: list[dict], done: int) -> str | None:
    """Copy the checkpoint of ``run_dir`` that holds the best epoch of ``history`` (up to
    ``done``) to ``into``/best.pth; a warning when none does (best.pth then comes with the first
    epoch that scores above it), None otherwise or when no epoch scored."""
    scores = [epoch_score(r) for r in history]
    if not scores or max(scores) == float("-inf"):
        return None  # no epoch scored: no best.pth yet, as in the run itself
    best = history[scores.index(max(scores))].get("epoch")
    found = [p for p, e in intact_checkpoints(run_dir) if e == best]
    if not found:
        return (
            f"no checkpoint of {run_dir} holds epoch {best}, the best up to epoch {done}: "
            f"{into} has no best.pth until an epoch scores above it"
        )
    with atomic_path(into / "best.pth", suffix=".pth") as tmp:
        shutil.copyfile(found[0], tmp)
    return None


def set_best_aside(run_dir: Path, ckpt: dict) -> str | None:
    """Before a resume from last.pth: a best.pth past its epoch (a write cut short after it)
    holds an epoch the resumed history will not have, and would stay best.pth unless beaten:
    it is kept as ``best_epoch<N>_before_resume.pth`` and best.pth becomes the checkpoint of
    the best epoch up to last.pth's (``_best_up_to``). Returns what was done, or None."""
    done, best = int(ckpt["epoch"]), run_dir / "best.pth"
    later = [e for p, e in intact_checkpoints(run_dir) if p == best and e > done]
    if not later:
        return None
    kept = run_dir / f"best_epoch{later[0]}_before_resume.pth"
    number = 2
    while kept.exists():  # an earlier cut-short resume kept another epoch-N model: keep both
        kept = run_dir / f"best_epoch{later[0]}_before_resume_{number}.pth"
        number += 1
    best.rename(kept)
    missing = _best_up_to(run_dir, run_dir, list(ckpt.get("history") or []), done)
    return f"best.pth (epoch {later[0]}) is kept as {kept.name}" + (
        f"; {missing}" if missing else ""
    )
