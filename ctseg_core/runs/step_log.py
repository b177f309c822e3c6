"""``steps.jsonl``: one JSON line per training step (loss, learning rate, machine use), so a
watcher draws a curve while an epoch runs, not only after it.

Each line: ``epoch`` (1-based), ``step`` (1-based within the epoch), ``steps_per_epoch``,
``loss``, ``lr``, ``t`` (Unix seconds), and on the lines written when a flush samples the
machine (every ``flush_s`` seconds or so) the ``MachineSampler`` fields (cpu_pct, ram_used_mb,
...). Lines are buffered and appended in one write per flush (every ``flush_s`` seconds or
``flush_steps`` steps, at the end of an epoch and of the run); a reader skips a line cut short
by a crash. A resumed run first drops the lines of epochs after its checkpoint's, so the file
continues without duplicates.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..fileio import atomic_write_text
from .machine import MachineSampler
from .run_folder import json_safe
from .status import Progress

log = logging.getLogger(__name__)

STEPS_FILE = "steps.jsonl"


def _parse(text: str) -> list[dict]:
    records = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
        if isinstance(rec, dict) and isinstance(rec.get("epoch"), int):
            records.append(rec)
    return records


def read_steps(run_dir: str | Path) -> list[dict]:
    """The step records of ``run_dir/steps.jsonl`` in file order ([] when absent); where a step
    (epoch, step) appears twice (a file written by an older resume), the later line wins."""
    try:
        text = (Path(run_dir) / STEPS_FILE).read_text(encoding="utf-8")
    except OSError:
        return []
    records = _parse(text)
    seen: dict[tuple, int] = {}
    for i, rec in enumerate(records):
        seen[(rec["epoch"], rec.get("step"))] = i
    if len(seen) == len(records):
        return records
    return [rec for i, rec in enumerate(records) if seen[(rec["epoch"], rec.get("step"))] == i]


def trim_steps(run_dir: str | Path, done_epochs: int) -> int:
    """Keep only the records of epochs <= ``done_epochs`` (and whole lines), rewriting the file
    atomically when anything goes; returns the number of records kept. A resume calls this
    before appending: the lines of the epoch it interrupted are trained again."""
    path = Path(run_dir) / STEPS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return 0
    kept = [rec for rec in _parse(text) if rec["epoch"] <= done_epochs]
    lines = "".join(json.dumps(rec) + "\n" for rec in kept)
    if lines != text:
        atomic_write_text(path, lines)
    return len(kept)


class StepLog:
    """A training callback that appends a record per step to ``steps.jsonl`` (see the module).

    ``done_epochs``: the epochs the run had completed when it (re)started; records of later
    epochs already in the file are dropped first. ``device``: the run's device ("cuda:0" adds
    GPU use to the machine samples). A write that fails (a full disk) is logged and dropped:
    the step curve must not end a run that its checkpoints can still save.
    """

    def __init__(
        self,
        run_dir: str | Path,
        done_epochs: int = 0,
        device: str = "",
        flush_s: float = 2.0,
        flush_steps: int = 50,
    ) -> None:
        self.path = Path(run_dir) / STEPS_FILE
        self.flush_s, self.flush_steps = flush_s, flush_steps
        self.machine = MachineSampler(device)
        self._buffer: list[dict] = []
        self._last_flush = time.monotonic()
        try:
            trim_steps(run_dir, done_epochs)
        except OSError as exc:
            log.warning("could not trim %s (%s)", self.path, exc.strerror or exc)

    def __call__(self, p: Progress) -> None:
        if p.kind == "step" and p.loss is not None and not p.message:  # validation: no step
            self._buffer.append(
                {"epoch": p.epoch, "step": p.step, "steps_per_epoch": p.steps_per_epoch,
                 "loss": p.loss, "lr": p.lr, "t": round(time.time(), 3)}
            )  # fmt: skip
            due = time.monotonic() - self._last_flush >= self.flush_s
            if due or len(self._buffer) >= self.flush_steps:
                self.flush()
        elif p.kind in ("epoch", "end"):
            self.flush()

    def flush(self) -> None:
        """Append the buffered records in one write (the last one carrying a machine sample)."""
        self._last_flush = time.monotonic()
        if not self._buffer:
            return
        self._buffer[-1] |= self.machine.sample()
        text = "".join(json.dumps(json_safe(rec)) + "\n" for rec in self._buffer)
        self._buffer = []
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(text)
        except OSError as exc:
            log.warning("could not append to %s (%s)", self.path, exc.strerror or exc)
