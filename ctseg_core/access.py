"""Which server paths a user may name: everything, or only paths inside ``$CTSEG_DATA_ROOTS``.

A dashboard served to a team must not read arbitrary server files through a path box. When
``CTSEG_DATA_ROOTS`` is set (folders separated by ``os.pathsep``, ':' on Linux), a user-given path
is accepted only if, after resolving symlinks, it lies inside one of those roots. A typed path
with ``..`` parts is refused there whatever lies on disk: resolving ``secret/lnk/../..`` follows
the link, so accepting or refusing it would tell whether a folder outside the roots is a link.
A path no filesystem can hold (a NUL byte, a name or path over the system's length limits, a
link loop) is refused with one line too, with or without roots.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

from . import settings
from .errors import ConfigError, DataError
from .fileio import dangling_link, folder_error, is_dir

ENV_ROOTS = "CTSEG_DATA_ROOTS"


def _root_parts() -> list[str] | None:
    """The folders of ``$CTSEG_DATA_ROOTS`` as typed (see ctseg_core.settings)."""
    return settings.data_root_entries()


def allowed_roots() -> list[Path] | None:
    """The resolved roots from ``$CTSEG_DATA_ROOTS``, or None when unset (every path allowed)."""
    parts = _root_parts()
    return None if parts is None else [Path(p).expanduser().resolve() for p in parts]


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute without looking at the disk (``~`` expanded; no links followed)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def _checked_text(path: str | Path) -> str:
    """``path`` as text, refused (ConfigError) when no filesystem could hold it."""
    text = os.fspath(path)
    if "\0" in text:
        raise ConfigError(f"{text!r} holds a NUL byte; type the folder's path again")
    name_max, path_max = _limits()
    for part in PurePath(text).parts:
        if len(os.fsencode(part)) > name_max:
            raise ConfigError(
                f"{text[:80]}... has a name of {len(os.fsencode(part))} bytes, over this "
                f"system's limit of {name_max}; give an existing folder's path"
            )
    if len(os.fsencode(text)) >= path_max:
        raise ConfigError(
            f"{text[:80]}... is {len(os.fsencode(text))} bytes long, over this system's limit "
            f"of {path_max}; give a shorter path"
        )
    return text


def _limits() -> tuple[int, int]:
    """(longest file name, longest path) in bytes on this system (255 and 4096 on Linux)."""
    try:
        return os.pathconf("/", "PC_NAME_MAX"), os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # Windows has no pathconf
        return 255, 4096


def check_allowed_path(path: str | Path, roots: list[Path] | None = None) -> Path:
    """Resolve ``path`` (symlinks, ``~``; ``..`` only without roots) and refuse it when it lies
    outside the roots.

    Args:
        path: a user-given file or folder; it need not exist (existence is checked by the reader).
        roots: allowed folders; default ``allowed_roots()`` (None means no restriction).

    Returns:
        The resolved absolute path.

    Raises:
        ConfigError: one line naming the path (and the allowed roots): outside the roots, with
            ``..`` parts while roots are set, or not a path any filesystem can hold.
    """
    text = _checked_text(path)
    given = _root_parts() if roots is None else [str(r) for r in roots]
    try:
        if given is not None:
            raw = [_absolute(r) for r in given]
            roots = [r.resolve() for r in raw]
            shown = os.pathsep.join(str(r) for r in roots)
            # Decided on the text alone, before the disk is looked at: resolving '..' or a
            # path outside the roots would answer differently for a link there (an oracle).
            if ".." in PurePath(text).parts:
                raise ConfigError(
                    f"{text} has '..' in it, refused while the data roots {shown} are set; "
                    "type the folder's path without '..'"
                )
            if not _inside(_absolute(text), raw + roots):
                raise _outside(text, shown)
        resolved = Path(text).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a link loop, ~nobody
        reason = os.strerror(exc.errno) if getattr(exc, "errno", None) else str(exc)
        raise ConfigError(
            f"{text} cannot be resolved ({reason}); give an existing folder's path"
        ) from None
    if given is None or _inside(resolved, roots):
        return resolved
    # not where it resolved to: that would tell a user where a symlink leads, outside the roots
    raise _outside(text, shown)


def _outside(path: str, shown: str) -> ConfigError:
    return ConfigError(
        f"{path} is outside the allowed data roots {shown} (after following links); "
        f"choose a path inside them or ask the server admin to extend {ENV_ROOTS}"
    )


def check_allowed_folder(path: str | Path, fix: str) -> Path:
    """``check_allowed_path``, and the path must be a folder this server can look into.

    ``fix``: what to give instead, ending the one-line DataError ("{path} is not a folder; {fix}").
    A folder that cannot be looked at (no permission, a name the filesystem refuses) says why
    instead of ending in an OSError.
    """
    resolved = check_allowed_path(path)
    if why := dangling_link(Path(path).expanduser()):  # else "is not a folder": say why
        raise DataError(f"{path} is {why}; {fix}")
    try:
        folder = is_dir(resolved)
        if folder and (error := folder_error(resolved)):  # listed but not entered: chmod 644
            raise error
    except OSError as exc:
        raise DataError(f"{path} cannot be opened ({exc.strerror or exc}); {fix}") from None
    if not folder:
        raise DataError(f"{path} is not a folder; {fix}")
    return resolved
