"""CTSEG_DATA_ROOTS: user-given paths must resolve inside the allowed roots."""

from __future__ import annotations

import os

import pytest

from ctseg_core.access import allowed_roots, check_allowed_path
from ctseg_core.errors import ConfigError, CtsegError


def test_every_path_is_allowed_when_no_roots_are_set(monkeypatch, tmp_path):
    monkeypatch.delenv("CTSEG_DATA_ROOTS", raising=False)
    assert allowed_roots() is None
    assert check_allowed_path(tmp_path / "x" / ".." / "y") == (tmp_path / "y").resolve()


def test_paths_inside_any_root_pass_and_resolve(monkeypatch, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "data").mkdir(parents=True)
    b.mkdir()
    monkeypatch.setenv("CTSEG_DATA_ROOTS", f"{a}{os.pathsep}{b}")
    assert allowed_roots() == [a.resolve(), b.resolve()]
    assert check_allowed_path(a / "data") == (a / "data").resolve()
    assert check_allowed_path(b) == b.resolve()
    assert check_allowed_path(b / "not-yet" / "pred") == (b / "not-yet" / "pred").resolve()


def test_dotdot_escape_is_refused_naming_path_and_roots(monkeypatch, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(root))
    sneaky = f"{root}/../../etc"
    with pytest.raises(ConfigError) as err:
        check_allowed_path(sneaky)
    message = str(err.value)
    assert sneaky in message and str(root.resolve()) in message and "\n" not in message
    assert isinstance(err.value, CtsegError)


def test_symlink_out_of_the_root_is_refused(monkeypatch, tmp_path):
    root, outside = tmp_path / "data", tmp_path / "secret"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(root))
    with pytest.raises(ConfigError, match="outside the allowed data roots") as err:
        check_allowed_path(root / "link")
    assert "secret" not in str(err.value)  # where the link leads is not told


def test_sibling_with_a_common_prefix_is_not_inside(monkeypatch, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data2").mkdir()
    monkeypatch.setenv("CTSEG_DATA_ROOTS", str(tmp_path / "data"))
    with pytest.raises(ConfigError):
        check_allowed_path(tmp_path / "data2")
