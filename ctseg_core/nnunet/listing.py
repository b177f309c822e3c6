"""The nnU-Net model folders under the model roots (``settings.model_roots``), for pickers.

A root may be a model folder itself (it holds ``plans.json``), hold model folders, or hold
dataset folders of them (nnU-Net's ``nnUNet_results/Dataset123_X/<trainer>__<plans>__<config>``,
TotalSegmentator's ``~/.totalsegmentator/nnunet/results``): model folders are looked for at most
two levels below a root. A folder holding all five parts of TotalSegmentator's ``total`` task
(Dataset291..295) is one entry, "TotalSegmentator total (5 parts)", predicting the 117
structures; its parts are not listed again. Only json files and the fold folders are read: no
weights are loaded. With ``$CTSEG_DATA_ROOTS`` set, a root or model folder outside those roots
(after following links) is left out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .. import settings
from ..access import check_allowed_path
from ..errors import CtsegError
from ..fileio import folder_error, is_dir, is_file
from ..labels import value_of
from .folder import read_model_folder
from .labels import model_structures, other_names, totalseg_part_folders, value_names

log = logging.getLogger(__name__)

TOTALSEG_NAME = "TotalSegmentator total (5 parts)"


@dataclass(frozen=True)
class ModelEntry:
    """One model a picker offers: the path ``NnunetPredictor`` takes and what it predicts.

    path: a model folder, or for TotalSegmentator's parts the folder holding Dataset291..295;
    name: the plans' dataset name ("Dataset123_X") or ``TOTALSEG_NAME``; folds: the folds
    with a checkpoint (all are averaged); structures: its TotalSegmentator v2 structures and merges
    in ctseg's value order; other_labels: its label names that are neither (predicted
    by ``ctseg predict --model`` with the model's own values, not scored nor shown)."""

    path: Path
    name: str
    configuration: str
    folds: tuple[str, ...]
    structures: tuple[str, ...]
    other_labels: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """ "nnU-Net 3d_fullres: Dataset123_X (folds 0,1)", as every picker shows it."""
        return f"nnU-Net {self.configuration}: {self.name} (folds {','.join(self.folds)})"


def _entry(folder: Path) -> ModelEntry:
    """The entry of one model folder (ConfigError from ``read_model_folder`` when invalid)."""
    read = read_model_folder(folder)
    names = value_names(read.labels, folder)
    return ModelEntry(
        folder, str(read.plans.get("dataset_name") or folder.parent.name), read.config.name,
        tuple(p.parent.name.removeprefix("fold_") for p in read.checkpoints),
        tuple(model_structures(names)), tuple(other_names(names).values()),
    )  # fmt: skip


def _totalseg_entry(root: Path, parts: list[Path]) -> ModelEntry:
    """The five parts as one entry: the union of their structures, the first part's config."""
    entries = [_entry(p) for p in parts]
    structures = sorted({s for e in entries for s in e.structures}, key=value_of)
    configs = sorted({e.configuration for e in entries})
    return ModelEntry(root, TOTALSEG_NAME, "/".join(configs), entries[0].folds, tuple(structures))


def _model_folders(root: Path, skipped: dict[str, str]) -> list[Path]:
    """Folders holding plans.json at ``root`` or up to two levels below it, sorted by path.

    A folder below the root that cannot be looked into goes into ``skipped`` with its reason
    (another user's model in a shared folder: the others stay listed); OSError when the root
    itself cannot be read."""
    if is_file(root / "plans.json"):
        return [root]
    if error := folder_error(root):  # listed but not entered (chmod 644): the root, once
        raise error
    found = []
    for child in sorted(root.iterdir()):
        try:
            if not is_dir(child):
                continue
            if is_file(child / "plans.json"):
                found.append(child)
                continue
            inside = sorted(child.iterdir())
        except OSError as exc:
            _skip_unreadable(skipped, child, exc)
            continue
        for folder in inside:  # one closed model folder: its readable siblings still listed
            try:
                if is_dir(folder) and is_file(folder / "plans.json"):
                    found.append(folder)
            except OSError as exc:
                _skip_unreadable(skipped, folder, exc)
    return found


def _skip_unreadable(skipped: dict[str, str], path: Path, exc: OSError) -> None:
    skipped[str(path)] = f"{path} cannot be read ({exc.strerror or exc})"


def _allowed(path: Path, skipped: dict[str, str]) -> bool:
    if settings.data_root_entries() is None:
        return True
    try:
        check_allowed_path(path)
    except CtsegError as exc:
        skipped[str(path)] = str(exc)
        return False
    return True


def list_models(roots: list[Path] | None = None,
                skipped: dict[str, str] | None = None) -> list[ModelEntry]:  # fmt: skip
    """The models under ``roots`` (default ``settings.model_roots()``), sorted by label.

    A folder that is not a valid model (or a root that is missing, unreadable, or outside the
    allowed data roots) is left out, logged, and put with its one-line reason into ``skipped``
    (path -> reason) when given."""
    skipped = {} if skipped is None else skipped
    entries: dict[Path, ModelEntry] = {}
    for root in settings.model_roots() if roots is None else roots:
        root = Path(root).expanduser()
        if not _allowed(root, skipped):
            continue
        try:
            folders = _model_folders(root, skipped)
        except OSError as exc:
            _skip_unreadable(skipped, root, exc)
            continue
        parts = None
        if folders != [root]:
            try:
                parts = totalseg_part_folders(root)
            except CtsegError as exc:  # some of TotalSegmentator's parts: each on its own
                log.info("%s", exc)
            except OSError:  # a part this user may not read: the others on their own
                parts = None
        if parts:
            try:
                entries[root] = _totalseg_entry(root, parts)
                folders = [f for f in folders if f not in parts]
            except CtsegError as exc:
                skipped[str(root)] = str(exc)
        for folder in folders:
            if folder in entries or not _allowed(folder, skipped):
                continue
            try:
                entries[folder] = _entry(folder)
            except CtsegError as exc:
                skipped[str(folder)] = str(exc)
    for path, reason in skipped.items():
        log.warning("model folder %s left out: %s", path, reason)
    return sorted(entries.values(), key=lambda e: (e.label, str(e.path)))


def model_labels(entries: list[ModelEntry]) -> dict[str, ModelEntry]:
    """label -> entry; a label two models share gets the model's path after it."""
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.label] = counts.get(entry.label, 0) + 1
    return {(e.label if counts[e.label] == 1 else f"{e.label} · {e.path}"): e for e in entries}
