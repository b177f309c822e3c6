"""Dataset summary for `ctseg info` and the dashboard's Home page: splits, grids, structure coverage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..labels import NUM_LABELS, NUM_STRUCTURES, STRUCTURES
from .dataset_root import DatasetIndex, open_dataset
from .prepare import prepare_dataset


def summarize_dataset(
    root: str | Path | DatasetIndex,
    cache_dir: str | Path | None = None,
    *,
    workers: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> dict:
    """Prepare (cached) and describe every subject of a dataset; bad subjects are listed, not fatal.

    Returns a JSON-ready dict: ``root``, ``split_source``, ``splits`` (counts), ``subjects`` (one
    dict each: id, split, shape_xyz, spacing_mm, orientation, slices, structures present, not
    annotated count, voxel counts by name), ``coverage`` (structure -> subjects containing it),
    ``problems`` (one-line messages, dataset-level and per subject).
    """
    index = root if isinstance(root, DatasetIndex) else open_dataset(root)
    report = prepare_dataset(index, cache_dir, workers=workers, progress=progress)
    problems = list(index.problems) + [report.failed[s] for s in sorted(report.failed)]
    subjects = []
    coverage = np.zeros(NUM_LABELS, dtype=np.int64)
    for sid in index.subjects:
        if sid in report.failed:
            continue
        entry = report.entries[sid]
        counts = entry.voxel_counts
        coverage += counts > 0
        problems += entry.meta.get("problems", [])
        subjects.append(
            {
                "id": sid,
                "split": index.splits.get(sid),
                "shape_xyz": list(entry.shape_xyz),
                "spacing_mm": [round(s, 4) for s in entry.spacing_mm],
                "orientation": entry.meta["orientation"],
                "slices": entry.num_slices,
                "present": len(entry.present),
                "not_annotated": int((~entry.annotated[1:]).sum()),
                "voxel_counts": {
                    STRUCTURES[k - 1]: int(counts[k])
                    for k in range(1, NUM_STRUCTURES + 1)
                    if counts[k]
                },
            }
        )
    return {
        "root": str(index.root),
        "split_source": index.split_source,
        "splits": {
            s: sum(1 for x in subjects if x["split"] == s) for s in ("train", "val", "test")
        },
        "subjects": subjects,
        "failed": sorted(report.failed),
        "coverage": {STRUCTURES[k - 1]: int(coverage[k]) for k in range(1, NUM_STRUCTURES + 1)},
        "problems": problems,
    }
