"""ctseg_core.settings: every CTSEG_* variable is read there, with one default each."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from ctseg_core import settings
from ctseg_core.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def test_every_ctseg_variable_is_read_in_settings_only_and_listed():
    read_elsewhere, named = [], set()
    for path in [
        *REPO.joinpath("ctseg_core").rglob("*.py"),
        *REPO.joinpath("dashboard").rglob("*.py"),
    ]:
        text = path.read_text(encoding="utf-8")
        named |= set(re.findall(r"CTSEG_[A-Z_]+", text))
        if path.name != "settings.py" and re.search(r"environ(\.get)?[\[(]\s*[\"']CTSEG_", text):
            read_elsewhere.append(path.name)
    assert read_elsewhere == []
    listed = {s.name for s in settings.SETTINGS}
    assert named <= listed, f"named in the code but not in SETTINGS: {named - listed}"


def test_checkpoints_root_is_one_default_for_cli_and_dashboard(monkeypatch, tmp_path):
    from ctseg_core.runs.run_folder import default_checkpoints_root
    from dashboard import cached

    monkeypatch.delenv("CTSEG_CHECKPOINTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_checkpoints_root() == cached.checkpoints_root() == REPO / "checkpoints"
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path / "runs"))
    assert default_checkpoints_root() == cached.checkpoints_root() == tmp_path / "runs"


def test_max_voxels_reads_numbers_inf_and_refuses_words(monkeypatch):
    monkeypatch.delenv("CTSEG_MAX_VOXELS", raising=False)
    assert settings.max_voxels() == 2**30
    monkeypatch.setenv("CTSEG_MAX_VOXELS", "1e6")
    assert settings.max_voxels() == 1_000_000
    monkeypatch.setenv("CTSEG_MAX_VOXELS", "inf")
    assert settings.max_voxels() == sys.maxsize
    monkeypatch.setenv("CTSEG_MAX_VOXELS", "lots")
    with pytest.raises(DataError, match="CTSEG_MAX_VOXELS='lots' is not a number"):
        settings.max_voxels()


def test_data_roots_split_on_pathsep_and_resolve(monkeypatch, tmp_path):
    monkeypatch.setenv("CTSEG_DATA_ROOTS", f"{tmp_path / 'a'}: {tmp_path / 'b'} :")
    assert settings.data_roots() == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]
    monkeypatch.setenv("CTSEG_DATA_ROOTS", " ")
    assert settings.data_roots() is None
