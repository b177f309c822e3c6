"""What a prediction file's label values mean: TotalSegmentator v2's, unless names came with it.

A multilabel prediction is read as TotalSegmentator v2 values (1 spleen .. 117), except where a
value -> name table came with it; the first found of:

1. its 3D Slicer / ITK-SNAP label file (``<id>.ctbl``, ``<id>_itksnap_labels.txt``: ``ctseg
   predict`` writes them; 3D Slicer exports them with a labelmap);
2. ``<id>_labels.json`` ({"1": "liver", ...}: ``ctseg predict --model`` writes it for a model
   with labels of its own);
3. a label table in the file's NIfTI header (a Caret ``<LabelTable>`` extension: TotalSegmentator
   writes one into its ``--ml`` files);
4. ``dataset.json`` in its folder (nnU-Net's predictor copies the model's there).

A table naming each value by its v2 name (a merge, ``labels.MERGES``, at its first member's value,
as ctseg writes one) reads the file as it is. Another table's values are read as the structures
they name (a member of a merge it names as that merge); a name that is no TotalSegmentator v2
structure is not scored (its voxels read as background, said in a note), and a table naming no
v2 structure at all is refused. A table from 2-4 is a model's own list: only the structures it
names are scored (a model without a structure does not miss it); a label file of ``ctseg
predict`` says so in a comment line when it lists what its model learns (``label_files``).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import DataError
from ..fileio import is_file
from ..labels import MERGES, NUM_STRUCTURES, is_structure, value_of
from .prediction_files import prediction_on_reference_grid

#: the largest label value a table may name (a uint8 file; one value is kept for "outside")
MAX_VALUE = 254


@dataclass(frozen=True)
class PredictionNames:
    """How to read a prediction file's values (``prediction_names``).

    ``source``: the table that named them (None: none, v2 values); ``table``: its value -> name
    (background and placeholders left out); ``lut``: (256,) uint8 file value -> v2 value (None:
    the values are v2's); ``merges``: the merges it holds, each at its first member's value;
    ``scored``: the v2 values its model labels (None: any); ``notes``: names that are no v2
    structure, not scored; ``renumbered``: its values are not v2's (``lut`` maps them; a
    model's list in v2 values has a ``lut`` too, reading the values it does not name as 0)."""

    source: Path | None = None
    table: dict[int, str] = field(default_factory=dict)
    lut: np.ndarray | None = None
    merges: list[str] = field(default_factory=list)
    scored: frozenset[int] | None = None
    notes: list[str] = field(default_factory=list)
    renumbered: bool = False


def _json_table(path: Path, source: Path, labels) -> dict[int, str]:
    """value -> name of a ``<id>_labels.json`` ({value: name}) or a dataset.json's ``labels``
    ({name: value}); DataError, one line, for what is neither."""
    if not isinstance(labels, dict):
        raise DataError(f"{source} holds no label table; fix or remove it (it names {path.name})")
    table = {}
    for key, item in labels.items():
        if source.name == "dataset.json":
            key, item = item, key
        if isinstance(key, list | tuple):
            raise DataError(
                f"{source}: label {item!r} is a region (a list of values); ctseg scores one "
                f"structure per value: remove {source.name} or write {path.name} per structure"
            )
        try:
            table[int(key)] = str(item)
        except (TypeError, ValueError):
            raise DataError(
                f"{source}: {key!r} is no label value; fix or remove it (it names {path.name})"
            ) from None
    return table


def _header_table(path: Path) -> dict[int, str] | None:
    """value -> name of a Caret ``<LabelTable>`` in the NIfTI header's extensions, or None."""
    try:
        extensions = nib.load(str(path)).header.extensions
    except Exception:  # unreadable: reading its voxels next says why, in one line
        return None
    for extension in extensions:
        content = extension.get_content()
        if not isinstance(content, bytes) or b"<LabelTable" not in content:
            continue
        try:
            root = ElementTree.fromstring(content.decode("utf-8", errors="replace"))
            return {int(e.get("Key")): (e.text or "").strip() for e in root.iter("Label")}
        except (ElementTree.ParseError, TypeError, ValueError):
            raise DataError(
                f"{path.name}: its header's label table cannot be read; save the file without it "
                "(its values are then read as TotalSegmentator v2's)"
            ) from None
    return None


def named_values(path: str | Path) -> tuple[Path, dict[int, str]] | None:
    """(the table's file, value -> name) of the first table that names a prediction file's
    values (module doc), or None. DataError for one that cannot be read."""
    from ..inference.label_files import label_file_table
    from ..inference.outputs import companion_paths

    path = Path(path)
    if found := label_file_table(path):
        return found
    own = companion_paths(path)["names"]
    candidates = [(own, None), (path, "header"), (path.parent / "dataset.json", "labels")]
    for source, key in candidates:
        if key == "header":
            if (table := _header_table(path)) is not None:
                return path, table
            continue
        if not is_file(source):
            continue
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"{source} cannot be read ({exc}); fix or remove it") from None
        labels = data.get("labels") if key and isinstance(data, dict) else data
        return source, _json_table(path, source, labels)
    return None


def prediction_names(path: str | Path) -> PredictionNames:
    """How to read the prediction file ``path``'s values (module doc)."""
    from ..inference.label_files import label_file_paths, learned_values, merges_named
    from ..nnunet.labels import ctseg_names, value_names

    path = Path(path)
    found = named_values(path)
    if found is None:
        return PredictionNames()
    source, table = found
    names = value_names({v: n for v, n in table.items() if n != "ignore"}, path.parent)
    if not names and source not in label_file_paths(path):  # background alone: names nothing
        return PredictionNames()
    if all(is_structure(n) and value_of(n) == v for v, n in names.items()):
        if source in label_file_paths(path):  # ctseg's own label files: as they always were
            return PredictionNames(source, names, None, merges_named(path), learned_values(path))
        merges = sorted((n for n in names.values() if n in MERGES), key=value_of)
        lut = np.zeros(256, dtype=np.uint8)  # a model's list: values it does not name read as 0
        lut[list(names)] = list(names)
        return PredictionNames(source, names, lut, merges, frozenset(names))
    ctseg = ctseg_names(names)
    if not ctseg:
        value, name = next(iter(sorted(names.items())), (0, "?"))
        raise DataError(
            f"{source} names the values of {path.name}, none as a TotalSegmentator v2 structure "
            f"(value {value} {name!r}); name them as TotalSegmentator does, or remove it to read "
            "the values as TotalSegmentator v2's"
        )
    if max(names) > MAX_VALUE:
        raise DataError(f"{source} names value {max(names)}; ctseg reads values up to {MAX_VALUE}")
    lut = np.zeros(256, dtype=np.uint8)
    for value, name in ctseg.items():
        lut[value] = value_of(name)
    merges = sorted({n for n in ctseg.values() if n in MERGES}, key=value_of)
    other = {v: n for v, n in names.items() if v not in ctseg}
    notes = []
    if other:
        shown = ", ".join(f"{v} {n!r}" for v, n in sorted(other.items())[:4])
        notes.append(
            f"{path.name}: {source.name} names {len(other)} value{'s' if len(other) > 1 else ''} "
            f"as no TotalSegmentator v2 structure ({shown}{' ...' if len(other) > 4 else ''}): "
            "not scored, read as background"
        )
    scored = frozenset(lut[list(ctseg)].tolist())
    return PredictionNames(source, names, lut, merges, scored, notes, renumbered=True)


def read_named_prediction(
    path: str | Path,
    shape_xyz: Sequence[int],
    affine: np.ndarray,
    original_shape: Sequence[int],
    original_affine: np.ndarray,
    notes: list[str] | None = None,
    reference: str = "reference",
    named: PredictionNames | None = None,
) -> tuple[np.ndarray, PredictionNames]:
    """A prediction file on its reference's grid (``prediction_on_reference_grid``) in v2 values
    (``prediction_names``, or ``named`` when read already), and how its values were read;
    ``notes`` gains its notes."""
    named = prediction_names(path) if named is None else named
    top = NUM_STRUCTURES if named.lut is None else MAX_VALUE  # a table's values may be larger
    array = prediction_on_reference_grid(
        path, shape_xyz, affine, original_shape, original_affine, notes, reference, top
    )
    if named.lut is None:
        return array, named
    mapped = named.lut[array]
    lost = np.unique(array[(mapped == 0) & (array != 0)])  # values read as background
    unnamed = [int(v) for v in lost if int(v) not in named.table]
    said = list(named.notes)
    if unnamed:
        said.append(
            f"{Path(path).name}: values {', '.join(map(str, unnamed[:6]))} are named nowhere in "
            f"{named.source.name}: not scored, read as background"
        )
    if notes is not None:
        notes += said
    return mapped, named


def names_stamp(path: str | Path) -> str:
    """A change marker of the files that may name a prediction's values (module doc; its header
    changes with the file): for caches keyed by the file's own time."""
    from ..inference.outputs import companion_paths

    path = Path(path)
    files = companion_paths(path)
    stamps = []
    for source in (files["ctbl"], files["itksnap"], files["names"], path.parent / "dataset.json"):
        try:
            stamps.append(f"{source.name}@{source.stat().st_mtime_ns}")
        except OSError:  # not there (or unreadable: reading it says so)
            continue
    return ",".join(stamps)
