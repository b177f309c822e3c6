"""Running code as a user whom file permissions bind, for tests of folders it may not read."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_bound_by_permissions(code: str, *args: str) -> str:
    """Run ``code`` (argv: ``args``) in a Python, from the repository root, that file
    permissions bind: root reads everything, so as root it runs without the capabilities
    that let it (setpriv; skipped where setpriv is missing). Returns its stdout."""
    command = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root reads every folder, and setpriv is not here to stop that")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
