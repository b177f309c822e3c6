"""Atomic writes: a file appears whole under its final name or not at all.

Every writer goes to a temporary file in the same folder, flushes and fsyncs it, then renames it
over the target (``os.replace`` is atomic on POSIX and Windows within one file system). An
interrupted write leaves at most a ``.tmp-*`` file behind, never a half file under the real name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    # os.umask can only be read by setting it; do it once, at import, before threads start.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: mode of files written here: what a plain open() would give (mkstemp alone gives 0600)
FILE_MODE = 0o666 & ~_read_umask()

#: ``OSError.errno`` of a full disk, or of a full quota on it
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it to ``target``.

    The caller writes the file at the yielded path (with any library). ``suffix`` keeps an
    extension that a writer inspects (nibabel needs ``.nii.gz``). On an exception the temporary
    file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, FILE_MODE)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically (NaN written as null is the caller's job)."""
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_save_nifti(img: Any, target: str | os.PathLike) -> None:
    """Save a nibabel image atomically, keeping the ``.nii`` / ``.nii.gz`` extension for the writer."""
    name = Path(target).name
    suffix = ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix
    with atomic_path(target, suffix=suffix) as tmp:
        img.to_filename(str(tmp))


def _same_or_inside(path: Path, other: Path) -> bool:
    """True when ``path`` is ``other`` (also through links) or a folder that holds it."""
    path, other = path.resolve(), other.resolve()
    return path == other or path in other.parents


def refuse_replacing_inputs(
    targets: Iterable[str | os.PathLike],
    inputs: Iterable[str | os.PathLike],
    option: str = "--out",
) -> None:
    """ConfigError when an output is one of ``inputs`` or a folder holding one (whatever the
    overwrite setting: replacing what is being read loses the user's data)."""
    from .errors import ConfigError

    inputs = [Path(i) for i in inputs]
    for target in targets:
        for source in inputs:
            if _same_or_inside(Path(target), source):
                raise ConfigError(
                    f"{option} would replace {target}, which holds the input {source}; "
                    "write somewhere else"
                )


def check_output(
    target: str | os.PathLike,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike] = (),
    option: str = "--out",
) -> Path:
    """Refuse an output path before any work: one that is (or holds) an input, even with
    ``overwrite``; an existing one without ``overwrite``; a folder where a file goes.

    Returns ``target`` as a Path. Raises ConfigError naming the path and the way out.
    """
    from .errors import ConfigError

    target = Path(target)
    refuse_replacing_inputs([target], inputs, option)
    try:
        folder = is_dir(target)
    except OSError as exc:  # e.g. a link into a folder this user may not enter
        raise ConfigError(output_unseen(option, target, exc)) from exc
    if folder:
        raise ConfigError(f"{option} {target} is a folder; give a file name")
    if exists(target) and not overwrite:
        raise ConfigError(
            f"{target} exists; pass --overwrite to replace it, or choose another {option}"
        )
    return target


def output_unseen(option: str, target: str | os.PathLike, exc: OSError) -> str:
    """One line for an output path this user may not look at (``exc``: why): a link into a
    folder it may not enter, or a path behind one; either could hide a file of the user's."""
    if os.path.islink(target):
        return f"{cannot_read(f'{option} {target}', exc, target)}, or choose another {option}"
    return (
        f"{option} {target} cannot be looked at ({exc.strerror or exc}); let the user running "
        f"ctseg enter the folders on its way (chmod/chown), or choose another {option}"
    )


def dangling_link(path: str | os.PathLike) -> str | None:
    """What is wrong with ``path`` when it is a symbolic link that leads nowhere, said for a
    message ("a link to T, which does not exist", with the absolute path T leads to when that
    differs: a relative target or a chain of links; "a link that loops (to T)"; "a link to T, a
    name too long to follow"); None for anything else: no link, a working link, a link this
    user may not follow (no permission on the way), or nothing at all."""
    if not isinstance(path, (str, bytes, os.PathLike)) or not os.path.islink(path):
        return None
    target = os.fsdecode(os.readlink(path))
    try:
        os.stat(path)
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return f"a link that loops (to {_one_line(target)})"
        if exc.errno == errno.ENAMETOOLONG:
            return f"a link to {_one_line(target)}, a name too long to follow"
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            return None  # e.g. no permission on the way: not a link's fault
    resolved = os.path.realpath(path)
    shown = target if target == resolved else f"{target}, i.e. {resolved}"
    return f"a link to {_one_line(shown)}, which does not exist"


#: what ``Path.exists``, ``is_file`` and ``is_dir`` of Python 3.10-3.13 read as "not there"
#: (pathlib's ignored errors, and on Windows its ignored winerrors: a drive not ready, an
#: invalid name, a link that cannot be followed)
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)
_ABSENT_WINERRORS = (21, 123, 1921)


def _mode(path: str | os.PathLike) -> int | None:
    """``os.stat(path).st_mode`` (links followed; ``path`` read as ``Path`` reads it: a
    trailing slash dropped, "" is "."), None for a path that is not there; any other error (no
    permission on the way, a stale mount, a disk error) raised."""
    try:
        return os.stat(Path(path)).st_mode
    except OSError as exc:
        if exc.errno in _ABSENT or getattr(exc, "winerror", None) in _ABSENT_WINERRORS:
            return None
        raise
    except ValueError:  # a NUL in the name: no such file
        return None


def exists(path: str | os.PathLike) -> bool:
    """Whether ``path`` is there (links followed: a link that leads nowhere is not), raising
    OSError where it may not be looked at, as ``Path.exists`` does up to Python 3.13
    (``is_file``)."""
    return _mode(path) is not None


def is_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file (or a link to one), raising OSError where it may not
    be looked at (no permission on the way, a stale mount), as ``Path.is_file`` does up to
    Python 3.13. From 3.14 ``Path.is_file`` answers False there (it is ``os.path.isfile``),
    which would say "no such file" of a file this user may not read: use this where the
    difference is said to the user."""
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def is_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder (or a link to one), raising OSError where it may not be
    looked at, as ``Path.is_dir`` does up to Python 3.13 (``is_file``)."""
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


#: the fix for a file or folder this user may not read
READ_FIX = "let the user running ctseg read it (chmod/chown)"


def read_error(path: str | os.PathLike) -> OSError | None:
    """The error that opening the regular file ``path`` for reading raises (no permission, a
    stale network mount, a disk error), or one a folder on the way raises; None when it opens,
    and for what is missing, a link that leads nowhere, or no regular file (a folder, a FIFO,
    a device): the caller says those in its own words."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        os.close(os.open(path, os.O_RDONLY))
        return None
    except OSError as exc:
        return None if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP) else exc


def folder_error(folder: str | os.PathLike) -> OSError | None:
    """The error that listing ``folder`` and looking at its first entry raises (no read
    permission; listed but not entered, as after chmod 644; a stale mount), or None when both
    work, and for a folder that is missing or no folder (the caller says those in its own
    words) or an entry removed meanwhile."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:  # one stat: a folder may be listed but not entered
                entry.stat(follow_symlinks=False)
                break
        return None
    except OSError as exc:
        return None if exc.errno in (errno.ENOENT, errno.ENOTDIR) else exc


def is_within(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies in it (both made absolute, links not followed)."""
    inner, outer = Path(os.path.abspath(path)), Path(os.path.abspath(folder))
    return inner == outer or outer in inner.parents


def not_writable(folder: str | os.PathLike) -> str | None:
    """Why files cannot be made in ``folder`` (or in the folder it would be made in, when it
    does not exist yet), said for a message ("/x cannot be written (Permission denied)");
    None when they can. Checked before long work, so that it does not fail at its end; by
    making (and removing) a file, as permissions, capabilities, ACLs and network filesystems
    all have their say."""
    probe = Path(os.path.abspath(folder))
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    if not os.path.isdir(probe):
        return None  # a file where a folder goes: the caller's own message
    try:
        fd, name = tempfile.mkstemp(prefix=".ctseg-write-check-", dir=probe)
    except OSError as exc:
        return f"{probe} cannot be written ({exc.strerror or exc})"
    os.close(fd)
    try:
        os.unlink(name)
    except OSError as exc:  # files may be made but not removed there (chattr +a): not ours
        return f"{probe} lets files be made but not replaced or removed ({exc.strerror or exc})"
    return None


def cache_unusable(cache_dir: str | os.PathLike, exc: OSError) -> str:
    """One line for a preprocessing cache this user may not write into or read from (a full
    path inside it in ``exc``): every subject would fail alike, so it is said once."""
    return (
        f"cache {cache_dir} cannot be used ({exc.strerror or exc}: {exc.filename}); give a "
        "folder this user may read and write (--cache, CTSEG_CACHE)"
    )


def cannot_read(shown: str, exc: OSError, path: str | os.PathLike | None = None) -> str:
    """One line saying that ``shown`` cannot be read: why (``exc``'s reason) and the fix for
    that reason: permissions (``READ_FIX``), a name too long, or the disk or mount for any
    other (a stale NFS handle, EIO). ``path``: the file, whose target is said when a link."""
    if exc.errno in (errno.EACCES, errno.EPERM):
        fix = READ_FIX
    elif exc.errno == errno.ENAMETOOLONG:
        fix = "shorten its name or path"
    else:
        fix = "check the disk or network mount it lies on"
    if path is not None and os.path.islink(path):
        shown = f"{shown} (a link to {_one_line(os.fsdecode(os.readlink(path)))})"
        fix = fix.replace("read it", "read what it points to")
    return f"{shown} cannot be read ({exc.strerror or exc}); {fix}"


def _one_line(text: str) -> str:
    """``text`` with line breaks written as escapes (a message stays one line)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")
