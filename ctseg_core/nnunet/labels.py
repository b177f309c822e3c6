"""A model's label values as ctseg's 117 TotalSegmentator v2 structures; TotalSegmentator's
five part models as one model.

A label name of dataset.json that is a TotalSegmentator v2 name (``labels.LABEL_OF``) becomes
that structure; a merge name (``labels.MERGES``: "lungs", as ``ctseg export-nnunet`` writes a
merged run's output) becomes the merge, written with its first member's value and scored
against the union of its members, and the members it also lists (an export's placeholders)
fold into it; other names keep the model's own value and name (predicted and written, not
scored against the dataset's masks). TotalSegmentator's ``total`` task is five nnU-Net models,
Dataset291 (organs) .. Dataset295 (ribs), each predicting one consecutive range of the 117 v2
values (``labels.PARTS``, TotalSegmentator's ``class_map_5_parts``): part value k is the
group's k-th structure. When a part's dataset.json names are not v2 names, its dataset id
gives them.
"""

from __future__ import annotations

import re
from pathlib import Path

from .. import settings
from ..errors import ConfigError
from ..fileio import is_dir, is_file
from ..labels import MERGES, PARTS, is_structure, value_of

#: dataset.json name of a value an exported ctseg run does not predict (``export.dataset_json``):
#: nnU-Net needs every value below the largest named; ctseg leaves these out of a model's labels
UNUSED_PREFIX = "ctseg_unused_"
#: TotalSegmentator's dataset id of each part of the ``total`` task -> ctseg's group
TOTALSEG_PARTS = {291: "organs", 292: "vertebrae", 293: "cardiac", 294: "muscles", 295: "ribs"}
_DATASET_ID = re.compile(r"^Dataset(\d{3})_")


def dataset_id(folder: Path) -> int | None:
    """The nnU-Net dataset id of a model folder (from ``DatasetXXX_*`` in it or its parent)."""
    for part in (folder.name, folder.parent.name):
        match = _DATASET_ID.match(part)
        if match:
            return int(match[1])
    return None


def value_names(labels: dict[int, str], folder: Path) -> dict[int, str]:
    """Model value -> structure name: v2 names kept; a TotalSegmentator part's generic names
    replaced by its group's structures (in value order); an export's placeholders
    (``UNUSED_PREFIX``) left out."""
    names = {v: n for v, n in labels.items() if v != 0 and not n.startswith(UNUSED_PREFIX)}
    if any(is_structure(n) for n in names.values()):
        return names
    part = TOTALSEG_PARTS.get(dataset_id(folder) or -1) if is_totalsegmentator(folder) else None
    if part is None:
        return names
    group = PARTS[part]
    if max(names) > len(group):
        raise ConfigError(
            f"{folder / 'dataset.json'} has value {max(names)}, but TotalSegmentator's {part} "
            f"part has {len(group)} structures"
        )
    return {v: group[v - 1] for v in names}


def ctseg_names(names: dict[int, str]) -> dict[int, str]:
    """Model value -> the ctseg structure or merge it stands for (``value_names``'s values that
    are ctseg names; a member of a merge the model names -> that merge: ctseg scores the union
    as one). Values of other names are left out."""
    merged = {m: merge for merge in MERGES if merge in names.values() for m in MERGES[merge]}
    return {v: merged.get(n, n) for v, n in names.items() if is_structure(n)}


def model_structures(names: dict[int, str]) -> list[str]:
    """The ctseg structures and merges a model's ``value_names`` predict, in ctseg's value
    order (a merge at its first member's value; its members not listed on their own)."""
    return sorted(set(ctseg_names(names).values()), key=value_of)


def other_names(names: dict[int, str]) -> dict[int, str]:
    """Model value -> name of the labels that are neither a v2 structure nor a merge."""
    return {v: n for v, n in names.items() if not is_structure(n)}


def totalseg_part_folders(root: Path) -> list[Path] | None:
    """The model folders of TotalSegmentator's five ``total`` parts under ``root`` (a results
    folder holding ``Dataset291_*`` .. ``Dataset295_*``), organs first; None when ``root``
    holds no such part; ConfigError naming the first missing part or an ambiguous one."""
    found = {}
    for child in sorted(Path(root).glob("Dataset*_*")):
        number = dataset_id(child)
        if is_dir(child) and number in TOTALSEG_PARTS and _named_for_totalseg(child):
            found[number] = child
    if not found:
        return None
    folders = []
    for number, part in TOTALSEG_PARTS.items():
        if number not in found:
            raise ConfigError(
                f"{root} holds TotalSegmentator parts {sorted(found)} but not Dataset{number} "
                f"({part}); all five are needed for the 117 structures"
            )
        models = [p for p in found[number].iterdir() if is_file(p / "plans.json")]
        if len(models) != 1:
            raise ConfigError(
                f"{found[number]} holds {len(models)} model folders (with plans.json); "
                "expected one <trainer>__<plans>__<configuration>"
            )
        folders.append(models[0])
    return folders


def is_totalsegmentator(folder: Path) -> bool:
    """Whether a model folder is one of TotalSegmentator's: under its results folder
    (``settings.totalseg_results``), or in a dataset folder named for it (as all of its are:
    ``Dataset291_TotalSegmentator_part1_organs_1559subj``). A dataset id alone does not make
    one: nnU-Net's ids are the user's choice, and a ``Dataset292_Tumours`` read as
    TotalSegmentator's vertebrae part would be given other names and another orientation.

    TotalSegmentator reorients every CT to RAS+ (``as_closest_canonical``) before nnU-Net sees
    it, so its models learned, and must be given, RAS+ arrays whatever a file's orientation;
    nnU-Net's own predictor would hand them the file's voxel order (mirrored anatomy for an LPS
    file: left and right labels swapped)."""
    folder = Path(folder).expanduser().absolute()
    if _named_for_totalseg(folder):
        return True
    return folder.is_relative_to(settings.totalseg_results().absolute())


def _named_for_totalseg(folder: Path) -> bool:
    """Whether a model folder or its dataset folder is named for TotalSegmentator."""
    return any("totalsegmentator" in part.lower() for part in (folder.name, folder.parent.name))
