"""Which structure each value of a label layer stands for, for the viewers' pickers, legends,
tables, surfaces and readouts.

A reference holds every structure at its own value. A prediction of a run that learns a merge
(``labels.MERGES``) writes the merge with its first member's value (ribs: 92, rib_left_1's), so
its value 92 is "ribs"; the layer's ``names`` (value -> name, only where it is not
``labels.NAME_OF``'s) says so. Picking "ribs" shows the reference's 24 ribs and the
prediction's value 92; picking "rib_left_1" shows the reference's rib_left_1 and none of that
prediction (it holds no single rib). No streamlit here: plain functions of names and values.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctseg_core.labels import (
    COLOURS,
    LABEL_OF,
    MERGES,
    NAME_OF,
    NUM_LABELS,
    member_values,
    members,
    value_of,
)


@dataclass
class Layer:
    """A label volume to show: a name ("reference", "prediction") and (Z, X, Y) uint8 labels;
    ``names``: value -> name where a value is not its structure (a merged run's merge,
    ``layer_names.merged_names``), None for none; ``learned``: the structures (and merges) a
    prediction's model learns, None where unknown (a reference, any tool's prediction)."""

    name: str
    labels_zxy: np.ndarray
    source: str  # a unique key of this volume, for caches
    counts: np.ndarray  # (118,) voxels per label value (from the cache meta or cached.label_counts)
    names: dict[int, str] | None = None
    learned: frozenset[str] | None = None


def merged_names(structures: Iterable[str]) -> dict[int, str]:
    """Value -> merge name for the merges among ``structures`` (a run's, a model's, or those a
    prediction's label file names): a layer's ``names``."""
    return {value_of(s): s for s in structures if s in MERGES}


def name_of(names: Mapping[int, str] | None, value: int) -> str:
    """The structure (or merge) a layer's ``value`` stands for."""
    return (names or {}).get(int(value)) or NAME_OF.get(int(value), f"label {int(value)}")


def all_names(names: Mapping[int, str] | None) -> list[str]:
    """(118,) the name of every value 0..117 of a layer (NiiVue's label table)."""
    return [name_of(names, v) for v in range(NUM_LABELS)]


def values_for(names: Mapping[int, str] | None, name: str) -> list[int]:
    """The values of a layer (``names``: its merged values) that show ``name``: the value it
    names so; a merge it does not hold: its members' values (a reference holds them apart); a
    structure whose value the layer's merge took: none."""
    names = names or {}
    own = [v for v, n in names.items() if n == name]
    if own:
        return own
    if name in MERGES:
        return [v for v in member_values(name) if v not in names]
    value = LABEL_OF[name]
    return [] if value in names else [value]


def learned_values_for(layer: Layer, name: str) -> list[int] | None:
    """The values of ``layer`` that show ``name`` (``values_for``), or None where its model does
    not learn ``name`` (a blank there says nothing about the structure); [] where the layer's
    merge holds it."""
    values = values_for(layer.names, name)
    if layer.learned is None or not values:
        return values
    if any(name in MERGES.get(s, ()) for s in layer.learned):
        return []  # a member of a merge it learns: held by the merge, not unlearned
    learned = {value_of(s) for s in layer.learned}
    kept = [v for v in values if v in learned]
    return kept or None


def visible_mask(names: Mapping[int, str] | None, shown: Iterable[str]) -> np.ndarray:
    """(118,) bool: the values of a layer that show the ``shown`` structures."""
    visible = np.zeros(NUM_LABELS, dtype=bool)
    for name in shown:
        visible[values_for(names, name)] = True
    return visible


def present_names(layers) -> list[str]:
    """The structures (and merges) the layers hold voxels of, each once, in value order (a
    merge right after its first member). A merge a layer names is present where any layer
    holds it (a reference: any member), so a prediction that missed it is still picked.
    ``layers``: objects with ``names`` and ``counts`` ((118,) voxels per value)."""
    found: dict[str, tuple[int, bool]] = {}
    for layer in layers:
        counts = np.asarray(layer.counts)
        for value in np.flatnonzero(counts[1:]) + 1:
            name = name_of(layer.names, value)
            if name in LABEL_OF or name in MERGES:
                found[name] = (int(value), name in MERGES)
    for merge in {n for layer in layers for n in (layer.names or {}).values()}:
        if any(np.asarray(la.counts)[values_for(la.names, merge)].any() for la in layers):
            found[merge] = (value_of(merge), True)
    return sorted(found, key=found.get)


def colour_of(name: str) -> tuple[int, int, int]:
    """A structure's colour; a merge's is its first member's (the colour its value is drawn in)."""
    return tuple(int(c) for c in COLOURS[members(name)[0]])


@functools.lru_cache(maxsize=64)
def _checkpoint_structures(path: str, mtime_ns: int) -> tuple[str, ...]:
    from ctseg_core.models.checkpoint import checkpoint_structures

    return tuple(checkpoint_structures(path))


def checkpoint_learned(checkpoint: str | Path) -> frozenset[str]:
    """The structures (and merges) a checkpoint's run learns: its prediction layer's
    ``learned``; read once per file version (memory-mapped, no tensors)."""
    path = Path(checkpoint).expanduser().resolve()
    return frozenset(_checkpoint_structures(str(path), path.stat().st_mtime_ns))


def checkpoint_names(checkpoint: str | Path) -> dict[int, str]:
    """A checkpoint's prediction layer's ``names``: value -> merge of the merges its run
    learns ({} for none)."""
    return merged_names(checkpoint_learned(checkpoint))


def folder_prediction_names(subject_id: str, folder: str | Path) -> dict[int, str]:
    """A folder's prediction layer's ``names``: the merges its ``<id>.nii.gz`` holds, as the
    names that came with it say (``prediction_labels``: ``ctseg predict``'s label file; {}
    without any)."""
    from ctseg_core.evaluation.prediction_files import find_prediction
    from ctseg_core.evaluation.prediction_labels import prediction_names

    path = find_prediction(Path(folder), subject_id)
    return merged_names(prediction_names(path).merges) if path is not None else {}


def folder_prediction_learned(subject_id: str, folder: str | Path) -> frozenset[str] | None:
    """A folder's prediction layer's ``learned``: the structures (merges by their name) its
    names say its model labels (``prediction_labels``: ``ctseg predict``'s label file, an
    nnU-Net output's dataset.json, ...); None where they do not say."""
    from ctseg_core.evaluation.prediction_files import find_prediction
    from ctseg_core.evaluation.prediction_labels import prediction_names

    path = find_prediction(Path(folder), subject_id)
    values = prediction_names(path).scored if path is not None else None
    if values is None:
        return None
    names = folder_prediction_names(subject_id, folder)
    return frozenset(name_of(names, v) for v in values if v < NUM_LABELS)  # a hand-edited 150
