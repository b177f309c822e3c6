"""A disk that fills up during training: status.json still takes the run's final state, and a
full disk reads as one line saying so."""

from __future__ import annotations

import errno
import shutil
from collections import namedtuple

from ctseg_core.runs.run_folder import read_status, write_status
from ctseg_core.runs.status import StatusFile, failure_text


def test_status_json_takes_the_failed_state_where_no_new_file_fits(tmp_path, monkeypatch, caplog):
    import tempfile
    import threading

    from ctseg_core.runs.status import Progress

    write_status(tmp_path, {"state": "running", "message": "validating: 3/8 batches"})

    def no_space(*args, **kwargs):  # the disk has no block left for a new file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    status = StatusFile(0, threading.Event())
    status.run_dir = tmp_path
    status.write(Progress("end", "failed", tmp_path, 1, 3, error="no space left"), force=True)
    assert read_status(tmp_path)["state"] == "failed"
    assert read_status(tmp_path)["error"] == "no space left"
    # no status.json to overwrite either: one warning line, and the run goes on to its end
    other = tmp_path / "other"
    other.mkdir()
    status.run_dir, status._ended = other, False
    with caplog.at_level("WARNING"):
        status.write(Progress("end", "failed", other, 1, 3, error="x"), force=True)
    assert [r.getMessage() for r in caplog.records] == [
        f"could not write {other / 'status.json'} (No space left on device)"
    ]


def test_a_disk_full_oserror_reads_as_no_space_left(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9, 428_000))
    exc = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "cache" / "s1.npy"))
    assert failure_text(exc) == (
        f"no space left on {tmp_path / 'cache'} (0.4 MB free): free disk space, then continue "
        "the run (or start it again)"
    )
