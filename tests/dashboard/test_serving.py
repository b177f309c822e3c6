"""How the dashboard's server comes up: localhost only, wherever it is started from."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_kit import streamlit_server

pytestmark = pytest.mark.skipif(
    not Path("/proc/net/tcp").exists(), reason="reads listening sockets from Linux's /proc/net"
)


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, port_hex = fields[1].rsplit(":", 1)
            if int(port_hex, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def test_started_from_another_folder_it_listens_on_localhost_only(dash_dirs, tmp_path):
    # a service manager starts it in / or a home folder: the repo-root config.toml is not read
    # from there, so the dashboard keeps its own next to Home.py
    with streamlit_server(dash_dirs, tmp_path / "server.log", cwd=tmp_path, address=None) as url:
        port = int(url.rsplit(":", 1)[1])
        addresses = listening_addresses(port)
    assert addresses == {"0100007F"}, addresses  # 127.0.0.1, and no IPv4/IPv6 wildcard
    assert "Network URL" not in (tmp_path / "server.log").read_text()


def test_runs_go_to_the_checkouts_checkpoints_folder_wherever_it_starts(monkeypatch, tmp_path):
    from dashboard import cached

    monkeypatch.delenv("CTSEG_CHECKPOINTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cached.checkpoints_root() == Path(cached.__file__).resolve().parents[1] / "checkpoints"
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path / "runs"))
    assert cached.checkpoints_root() == tmp_path / "runs"
