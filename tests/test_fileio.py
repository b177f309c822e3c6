"""Atomic writes: whole file or nothing, ordinary permissions."""

from __future__ import annotations

import os

import pytest

from ctseg_core.fileio import FILE_MODE, atomic_path, atomic_write_json, atomic_write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "results.csv"
    atomic_write_text(target, "old,complete\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("new,half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old,complete\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_written_files_get_the_umask_mode_not_0600(tmp_path):
    atomic_write_json(tmp_path / "a" / "status.json", {"state": "running"})
    mode = os.stat(tmp_path / "a" / "status.json").st_mode & 0o777
    assert mode == FILE_MODE == 0o666 & ~current_umask()
