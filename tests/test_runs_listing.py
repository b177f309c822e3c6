"""list_runs keeps what it read of a run until one of the run's files changes: every change is
seen at the next listing, also a rewrite of the same size within one mtime tick."""

from __future__ import annotations

import json
import os

from ctseg_core.runs.listing import list_runs, runs_stamp
from ctseg_core.runs.run_folder import write_status


def _run(root, name: str):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text("{}")
    write_status(run, {"state": "running", "epoch": 1, "epochs": 3, "pid": os.getpid()})
    return run


def test_a_listed_run_shows_each_change_of_its_files_at_the_next_listing(tmp_path):
    run = _run(tmp_path, "a")
    (first,) = list_runs(tmp_path)
    assert (first.state, first.epoch, first.best_val_dice) == ("running", 1, None)
    stamp = runs_stamp(tmp_path)
    before = (run / "status.json").stat()
    # same length ("running" -> "stopped"), and the old mtime: only the new inode tells
    write_status(run, {"state": "stopped", "epoch": 1, "epochs": 3, "pid": os.getpid()})
    os.utime(run / "status.json", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (run / "status.json").stat().st_size == before.st_size
    (again,) = list_runs(tmp_path)
    assert again.state == "stopped" and runs_stamp(tmp_path) != stamp
    with open(run / "history.jsonl", "a") as handle:  # appended, as the trainer does
        handle.write(json.dumps({"epoch": 1, "val_dice_mean": 0.25}) + "\n")
        handle.write(json.dumps({"epoch": 2, "val_dice_mean": 0.5}) + "\n")
    assert list_runs(tmp_path)[0].best_val_dice == 0.5
    (run / "last.pth").write_bytes(b"")  # not a listed file: looked up on every listing
    assert list_runs(tmp_path)[0].has_last
    again.state = "edited by a caller"  # callers get copies
    assert list_runs(tmp_path)[0].state == "stopped"


def test_renamed_and_deleted_runs_are_listed_as_they_are_now(tmp_path):
    _run(tmp_path, "old")
    _run(tmp_path, "gone")
    assert sorted(r.name for r in list_runs(tmp_path)) == ["gone", "old"]
    (tmp_path / "old").rename(tmp_path / "new")
    for f in (tmp_path / "gone").iterdir():
        f.unlink()
    (tmp_path / "gone").rmdir()
    (listed,) = list_runs(tmp_path)
    assert (listed.name, listed.run_dir, listed.state) == ("new", tmp_path / "new", "running")
    assert [name for name, _ in runs_stamp(tmp_path)] == ["new"]
    assert runs_stamp(tmp_path / "absent") == ()
