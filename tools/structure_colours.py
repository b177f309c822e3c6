"""Make ctseg_core/structure_adjacency.json and ctseg_core/structure_colours.json.

Which structures touch (come within ``REACH_MM``) is counted once in real reference segmentations
(../shared/data/totalseg_sample: TotalSegmentator's own references) and in phantom subjects
(the synthetic anatomy the demo trains on); then the structures of touching pairs closer than
``MIN_TOUCHING_DELTA_E`` (CIEDE2000) are recoloured (``viz.palette.repair_palette``), every
other colour kept. Run from the project root: ``python tools/structure_colours.py [data root]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ctseg_core.data.cache import open_cached  # noqa: E402
from ctseg_core.data.dataset_root import open_dataset  # noqa: E402
from ctseg_core.data.phantom.dataset import make_phantom_dataset  # noqa: E402
from ctseg_core.fileio import atomic_write_text  # noqa: E402
from ctseg_core.labels import BASE_COLOURS, COLOURS_FILE, LABEL_OF  # noqa: E402
from ctseg_core.viz.palette import (  # noqa: E402
    ADJACENCY_FILE,
    MIN_TOUCHING_DELTA_E,
    REACH_MM,
    load_adjacency,
    neighbour_pairs,
    repair_palette,
    touching_distances,
)

#: 3D Slicer's conventional colours: these stay, their neighbours move
KEEP = ("liver", "spleen", "inferior_vena_cava")
#: neighbours across the diaphragm that no sample subject holds both of (the samples hold the
#: liver or the heart, the phantom keeps them apart)
ANATOMY = (("liver", "heart"), ("stomach", "heart"), ("spleen", "heart"))


def count_pairs(root: Path, cache_dir: Path) -> Counter:
    total: Counter = Counter()
    for subject in open_dataset(root).subjects:
        entry = open_cached(root, subject, cache_dir)
        sx, sy, sz = entry.spacing_mm
        spacing_zxy = (sz, sx, sy)  # the cache's axes
        found = neighbour_pairs(entry.labels, spacing_zxy)
        print(f"{root.name}/{subject}: {len(found)} neighbour pairs", file=sys.stderr)
        total.update(found)
    return total


def write_adjacency(data: Path, phantom_subjects: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        real = count_pairs(Path(data), Path(tmp) / "cache")
        phantom_root = Path(tmp) / "phantom"
        make_phantom_dataset(phantom_root, n_subjects=phantom_subjects, seed=0)
        phantom = count_pairs(phantom_root, Path(tmp) / "cache")
    pairs = sorted(
        set(real) | set(phantom) | set(ANATOMY), key=lambda p: (LABEL_OF[p[0]], LABEL_OF[p[1]])
    )
    atomic_write_text(ADJACENCY_FILE, one_per_line({
        "about": f"structures within {REACH_MM} mm of each other in label volumes: [a, b, voxels "
                 "of b within reach of a in the real references, in the phantom, 1 if listed in ANATOMY]; made by "
                 "tools/structure_colours.py",
        "sources": [f"{Path(data).name} (TotalSegmentator references)",
                    f"phantom, {phantom_subjects} subjects, seed 0",
                    "ANATOMY: neighbours that no sample holds together"],
        "pairs": [[a, b, real[(a, b)], phantom[(a, b)], int((a, b) in ANATOMY)]
                  for a, b in pairs],
    }, "pairs"))  # fmt: skip


def one_per_line(doc: dict, key: str) -> str:
    """JSON of ``doc`` with one line per item of ``doc[key]`` (a list or a dict): reviewable diffs."""
    head = {k: v for k, v in doc.items() if k != key}
    items = doc[key]
    if isinstance(items, dict):
        body = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in items.items()]
        open_, close = "{", "}"
    else:
        body = [f"  {json.dumps(v)}" for v in items]
        open_, close = "[", "]"
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    return "\n".join(["{", *lines, f" {json.dumps(key)}: {open_}", ",\n".join(body),
                      f" {close}", "}"]) + "\n"  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", default=str(ROOT.parent / "shared/data/totalseg_sample"))
    parser.add_argument("--phantom-subjects", type=int, default=4)
    parser.add_argument(
        "--colours-only",
        action="store_true",
        help="keep the stored adjacency, choose the colours again",
    )
    args = parser.parse_args()
    if not args.colours_only:
        write_adjacency(Path(args.data), args.phantom_subjects)
    pairs = list(load_adjacency())
    colours = repair_palette(BASE_COLOURS, pairs, keep=KEEP)
    changed = {n: list(c) for n, c in colours.items() if c != BASE_COLOURS[n]}
    atomic_write_text(COLOURS_FILE, one_per_line({
        "about": f"colours replacing the hue walk's so that structures that touch are at least "
                 f"{MIN_TOUCHING_DELTA_E} CIEDE2000 apart; made by tools/structure_colours.py",
        "recoloured": changed,
    }, "recoloured"))  # fmt: skip
    before = touching_distances(BASE_COLOURS, pairs)
    after = touching_distances(colours, pairs)
    worst_before, worst_after = min(before, key=before.get), min(after, key=after.get)
    print(f"{len(pairs)} touching pairs; {len(changed)} structures recoloured; closest pair "
          f"{worst_before} {before[worst_before]:.1f} -> {worst_after} {after[worst_after]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
