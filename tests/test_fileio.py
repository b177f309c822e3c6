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


def test_is_file_and_is_dir_answer_false_only_for_what_is_not_there(tmp_path):
    """Python 3.10-3.13's Path.is_file/is_dir, whatever the Python: False for a missing path, a
    path through a file, a link loop or a NUL in the name; errors of a path that may not be
    looked at are raised (tests/test_unreadable.py runs them without permission)."""
    from ctseg_core.fileio import is_dir, is_file

    (tmp_path / "f").write_text("x")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "to_f").symlink_to(tmp_path / "f")
    assert is_file(tmp_path / "f") and is_file(tmp_path / "to_f") and not is_dir(tmp_path / "f")
    assert is_dir(tmp_path) and not is_file(tmp_path)
    assert is_file(f"{tmp_path / 'f'}/") and is_dir("")  # read as Path reads them
    for absent in ("missing", "f/below", "loop", "nul\0name"):
        assert not is_file(tmp_path / absent) and not is_dir(tmp_path / absent)
    with pytest.raises(OSError):  # a name the filesystem refuses is no "not there"
        is_file(tmp_path / ("x" * 300))
