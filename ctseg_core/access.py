"""Which server paths a user may name: everything, or only paths inside ``$CTSEG_DATA_ROOTS``.

A dashboard served to a team must not read arbitrary server files through a path box. When
``CTSEG_DATA_ROOTS`` is set (folders separated by ``os.pathsep``, ':' on Linux), a user-given path
is accepted only if, after resolving symlinks and ``..``, it lies inside one of those roots.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import settings
from .errors import ConfigError

ENV_ROOTS = "CTSEG_DATA_ROOTS"


def allowed_roots() -> list[Path] | None:
    """The resolved roots from ``$CTSEG_DATA_ROOTS``, or None when unset (every path allowed)."""
    return settings.data_roots()


def check_allowed_path(path: str | Path, roots: list[Path] | None = None) -> Path:
    """Resolve ``path`` (symlinks, ``..``, ``~``) and refuse it when it lies outside the roots.

    Args:
        path: a user-given file or folder; it need not exist (existence is checked by the reader).
        roots: allowed folders; default ``allowed_roots()`` (None means no restriction).

    Returns:
        The resolved absolute path.

    Raises:
        ConfigError: one line naming the path and the allowed roots.
    """
    resolved = Path(path).expanduser().resolve()
    roots = allowed_roots() if roots is None else [Path(r).expanduser().resolve() for r in roots]
    if roots is None:
        return resolved
    if any(resolved == root or resolved.is_relative_to(root) for root in roots):
        return resolved
    shown = os.pathsep.join(str(r) for r in roots)
    # not where it resolved to: that would tell a user where a symlink leads, outside the roots
    raise ConfigError(
        f"{path} is outside the allowed data roots {shown} (after following links and '..'); "
        f"choose a path inside them or ask the server admin to extend {ENV_ROOTS}"
    )
