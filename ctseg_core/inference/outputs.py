"""The files of one prediction, replaced as a set: ``StagedOutputs``, and the earlier
prediction's outputs this one does not write (``earlier_outputs``).

Every output is written under a temporary name (``.tmp-*``) in its final folder. Only when all
are written are they renamed into place: the earlier files of those names, and the earlier
prediction's outputs this one does not write, are first moved aside (``.old-*``) and removed at
the end. A failure while writing removes the temporaries and leaves the earlier set as it was; a
failure while renaming (renames within a folder: rare) moves the new files out and the earlier
ones back. A reader may find a name missing for the moment between the two renames; no reader
finds a half-written file or a mix of two predictions once ``commit`` has returned or raised.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from ..errors import CtsegError, DataError
from ..fileio import FILE_MODE
from .label_files import label_file_paths, read_slicer_ctbl

#: the first line of the ``_statistics.csv`` ctseg writes (``metrics.stats.volume_statistics``)
STATISTICS_HEADER = "structure,label,group,voxels,volume_ml,mean_hu,std_hu"


def stem_of(out_path: Path) -> str:
    """``OUT`` of ``OUT.nii.gz`` / ``OUT.nii``."""
    name = out_path.name
    return name[: -len(".nii.gz")] if name.endswith(".nii.gz") else name[: -len(".nii")]


def companion_paths(out_path: Path) -> dict[str, Path]:
    """Every companion ``ctseg predict`` may write beside ``out_path``, by kind: ``ctbl``,
    ``itksnap``, ``names`` (an nnU-Net model's own labels), ``statistics``, ``masks`` (the
    ``--split-masks`` folder)."""
    stem = stem_of(out_path)
    ctbl, itksnap = label_file_paths(out_path)
    return {
        "ctbl": ctbl,
        "itksnap": itksnap,
        "names": out_path.with_name(stem + "_labels.json"),
        "statistics": out_path.with_name(stem + "_statistics.csv"),
        "masks": out_path.with_name(stem),
    }


def _first_lines(path: Path, count: int = 3) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return [handle.readline().strip() for _ in range(count)]
    except OSError:
        return []


def _names_json(path: Path) -> bool:
    """A ``{"1": "name", ...}`` object, as ``ctseg predict`` writes an own-labels model's names."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(content, dict)
        and bool(content)
        and all(k.isdigit() and isinstance(v, str) for k, v in content.items())
    )


def _segmentations_only(folder: Path) -> bool:
    """A folder holding a ``segmentations`` folder and nothing else (a --split-masks output's
    layout; a dataset's subject folder holds its CT too)."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    return [e.name for e in entries] == ["segmentations"] and entries[0].is_dir()


def _masks_of_the_prediction(folder: Path, ctbl: Path) -> bool:
    """A folder holding nothing but ``segmentations/<structure>.nii.gz``, one mask per structure
    that the earlier prediction's 3D Slicer table (``ctbl``, as ctseg writes it) names, and only
    those: the --split-masks output of that prediction. Masks alone (a dataset's references
    have the same layout and names) are not taken for it."""
    if folder.is_symlink() or not _segmentations_only(folder):
        return False
    if not _written_by_ctseg("ctbl", ctbl):
        return False
    try:
        masks = list((folder / "segmentations").iterdir())
        named = {e.name for e in read_slicer_ctbl(ctbl) if e.value != 0}
    except (OSError, DataError):
        return False
    files = all(m.is_file() and not m.is_symlink() for m in masks)
    return files and sorted(m.name for m in masks) == sorted(f"{n}.nii.gz" for n in named)


def _written_by_ctseg(kind: str, path: Path) -> bool:
    """Whether the file ``path`` holds what ctseg writes as ``kind`` (``companion_paths``; not
    ``masks``), by content: a file of the user's that merely shares the name is not."""
    if not path.is_file() or path.is_symlink():
        return False
    first = _first_lines(path)
    if kind == "ctbl":
        return first[0].startswith("# Color table file written by ctseg") if first else False
    if kind == "itksnap":
        return any(line.endswith("(written by ctseg)") for line in first)
    if kind == "statistics":
        return first[:1] == [STATISTICS_HEADER]
    return _names_json(path)


def earlier_outputs(out_path: Path, written: list[Path]) -> tuple[list[Path], list[str]]:
    """The earlier prediction's companions of ``out_path`` that this one does not write.

    Returns (ctseg's: files and a masks folder whose content is what ctseg writes, to be
    removed with the earlier prediction; one line each for the others that are there: a file
    of another content under a companion's name, or ``OUT.nii`` beside ``OUT.nii.gz``, which
    are left). A folder named ``OUT`` holding anything but a ``segmentations`` folder (a
    dataset's subject folder) is no companion and not mentioned.
    """
    ours, others = [], []
    companions = companion_paths(out_path)
    for kind, path in companions.items():
        if path in written or not (path.exists() or path.is_symlink()):
            continue
        if kind == "masks":
            mine = _masks_of_the_prediction(path, companions["ctbl"])
        else:
            mine = _written_by_ctseg(kind, path)
        if mine:
            ours.append(path)
        elif kind != "masks" or _segmentations_only(path):
            others.append(
                f"{path} is left as it is (not as ctseg writes it for a prediction, so perhaps "
                f"yours): it does not describe the new {out_path.name}"
            )
    name = out_path.name
    sibling = out_path.with_name(name[:-3] if name.endswith(".gz") else name + ".gz")
    if sibling.exists():
        others.append(
            f"{sibling} is left as it is: the label files beside it now describe {name}, "
            "and tools that look for labels by name may take either; remove the one you do not want"
        )
    return ours, others


def _reason(exc: OSError) -> str:
    """'No space left on device: /the/file' of an OSError."""
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class StagedOutputs:
    """Outputs written under temporary names beside their targets, renamed into place together.

    Use as a context manager around the writing; call ``commit`` last inside it. Leaving the
    block by an exception before ``commit`` removes the temporaries (the earlier outputs are
    untouched) and turns an OSError (a full disk, no permission) into a CtsegError saying so.
    """

    def __init__(self, what: Path) -> None:
        self.what = what  # named in errors
        self.token = uuid.uuid4().hex[:12]
        self._staged: list[tuple[Path, Path]] = []  # (temporary, target)
        self._removed: list[Path] = []
        self._done = False

    def file(self, target: Path, suffix: str = "") -> Path:
        """A temporary path beside ``target`` (ending in ``suffix``: nibabel needs .nii.gz)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".tmp-{target.name}.", suffix=suffix, dir=target.parent)
        os.close(fd)
        os.chmod(name, FILE_MODE)
        return self.add(Path(name), target)

    def folder(self, target: Path) -> Path:
        """A temporary empty folder beside ``target``."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}.", dir=target.parent))
        # mkdtemp makes it private; the result is an ordinary folder (searchable where readable)
        tmp.chmod(FILE_MODE | (FILE_MODE & 0o444) >> 2)
        return self.add(tmp, target)

    def add(self, temporary: Path, target: Path) -> Path:
        """Stage ``temporary`` (written by the caller, beside ``target``) to become ``target``."""
        self._staged.append((temporary, target))
        return temporary

    def remove(self, path: Path) -> None:
        """Remove ``path`` on ``commit``, with the earlier outputs replaced (put back on failure)."""
        self._removed.append(path)

    def discard(self) -> None:
        """Remove every temporary staged so far."""
        for temporary, _ in self._staged:
            _remove(temporary)

    def commit(self) -> None:
        """Rename every temporary onto its target and remove what ``remove`` named, as a set."""
        aside: list[tuple[Path, Path]] = []  # (moved-aside name, earlier path)
        placed: list[Path] = []
        targets = [target for _, target in self._staged] + self._removed
        try:
            for path in targets:
                if path.exists() or path.is_symlink():
                    moved = path.with_name(f".old-{path.name}.{self.token}")
                    path.rename(moved)
                    aside.append((moved, path))
            for temporary, target in self._staged:
                temporary.rename(target)
                placed.append(target)
        except BaseException as exc:  # Ctrl-C too: never leave the earlier files aside
            for target in placed:
                _remove(target)
            for moved, path in reversed(aside):
                with contextlib.suppress(OSError):  # said below: it keeps its .old- name
                    moved.rename(path)
            self.discard()
            if not isinstance(exc, OSError):
                raise
            kept = [str(m) for m, _ in aside if m.exists()]
            raise CtsegError(
                f"replacing the outputs of {self.what} failed ({_reason(exc)}); the earlier "
                "outputs were put back"
                + (f", except {', '.join(kept)}: rename them back by hand" if kept else "")
            ) from exc
        self._done = True
        for moved, _ in aside:
            _remove(moved)

    def __enter__(self) -> StagedOutputs:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if self._done:
            return
        self.discard()  # also where the block ended without commit: nothing half-staged stays
        if isinstance(exc, OSError):
            raise CtsegError(
                f"writing the outputs of {self.what} failed ({_reason(exc)}); nothing was "
                "replaced: the earlier outputs are as they were"
            ) from exc
