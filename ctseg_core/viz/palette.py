"""Structure colours chosen by perceptual distance (CIEDE2000) between structures that touch.

``neighbour_pairs`` finds the structures that touch or nearly touch (within ``REACH_MM``) in a
label volume; the pairs found in real reference segmentations are stored once in ``ctseg_core/structure_adjacency.json``
(made by ``tools/structure_colours.py``), and ``repair_palette`` recolours, one structure at a
time, the touching pairs that are closer than a threshold, keeping every other colour as it was
(users learn colours; a palette that moves with each data set is no palette).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..labels import NAME_OF, STRUCTURES

ADJACENCY_FILE = Path(__file__).resolve().parent.parent / "structure_adjacency.json"
#: the least CIEDE2000 between the colours of two structures that touch (about the distance of
#: red from orange: neighbours are told apart at a glance; 2.3 is "just noticeable")
MIN_TOUCHING_DELTA_E = 20.0
#: the least CIEDE2000 between a recoloured structure's colour and any other colour
MIN_ANY_DELTA_E = 5.0
#: a recoloured structure keeps this much more than the threshold from its neighbours
MARGIN_DELTA_E = 2.0

#: structures closer than this are neighbours: a diaphragm or fat plane of a few mm between two
#: organs still shows them side by side on a slice
REACH_MM = 6.0
Pair = tuple[str, str]


def neighbour_pairs(
    labels: np.ndarray, spacing_mm: tuple[float, ...], reach_mm: float = REACH_MM
) -> dict[Pair, int]:
    """Structure pairs whose voxels come within ``reach_mm`` of each other in a label volume.

    ``labels``: an integer array (values 0..117, 0 = background), ``spacing_mm`` its voxel size
    along each of its axes (as many as ``labels`` has). Returns (a, b) -> the voxels of b within
    ``reach_mm`` of a, a the smaller label value; voxels that share a face always count (the
    reach is at least one voxel along each axis). A volume with fewer than two structures: {}.
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    radius = [max(1, int(reach_mm // s)) for s in spacing_mm]
    grid = np.meshgrid(*[np.arange(-r, r + 1) for r in radius], indexing="ij")
    dist2 = sum((g * s) ** 2 for g, s in zip(grid, spacing_mm, strict=True))
    footprint = dist2 <= max(reach_mm, max(spacing_mm)) ** 2
    counts: dict[Pair, int] = {}
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or value not in NAME_OF:
            continue
        grown = tuple(
            slice(max(0, b.start - r), min(n, b.stop + r))
            for b, r, n in zip(box, radius, labels.shape, strict=True)
        )
        crop = labels[grown]
        mask = crop == value
        ring = ndimage.binary_dilation(mask, structure=footprint) & ~mask
        found = np.bincount(crop[ring].astype(np.int64), minlength=256)
        for other in np.flatnonzero(found[value + 1 :]) + value + 1:
            if other in NAME_OF:
                counts[(NAME_OF[value], NAME_OF[int(other)])] = int(found[other])
    return counts


def load_adjacency(path: Path = ADJACENCY_FILE) -> dict[Pair, int]:
    """The stored touching pairs: (structure, structure) -> voxel faces summed over sources."""
    try:
        doc = json.loads(Path(path).read_text())
        return {(a, b): sum(int(n) for n in faces) for a, b, *faces in doc["pairs"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(
            f"cannot read the structure adjacency {path} ({exc}); "
            "rebuild it with python tools/structure_colours.py"
        ) from exc


def lab_of(colours: dict[str, tuple[int, int, int]]) -> dict[str, np.ndarray]:
    """Structure -> CIELAB (3,) float of its sRGB colour (0..255 per channel)."""
    from skimage.color import rgb2lab

    names = list(colours)
    rgb = np.array([colours[n] for n in names], dtype=np.float64)[None] / 255.0
    return dict(zip(names, rgb2lab(rgb)[0], strict=True))


def delta_e(lab_a: np.ndarray, lab_b: np.ndarray) -> np.ndarray:
    """CIEDE2000 between CIELAB colours (..., 3) and (..., 3), broadcast; 0 = the same."""
    from skimage.color import deltaE_ciede2000

    return deltaE_ciede2000(lab_a, lab_b)


def touching_distances(colours: dict, pairs) -> dict[Pair, float]:
    """CIEDE2000 of each touching pair's two colours."""
    lab = lab_of(colours)
    return {(a, b): float(delta_e(lab[a], lab[b])) for a, b in pairs}


def candidate_colours(step: int = 17) -> np.ndarray:
    """(N, 3) uint8 sRGB colours to choose from: a grid, without greys and the darkest/palest.

    Chroma >= 30 and lightness 45..90 stay visible over a grey CT slice at half opacity.
    """
    from skimage.color import rgb2lab

    levels = np.arange(0, 256, step)
    grid = np.array(list(itertools.product(levels, levels, levels)), dtype=np.uint8)
    lab = rgb2lab(grid[None].astype(np.float64) / 255.0)[0]
    chroma = np.hypot(lab[:, 1], lab[:, 2])
    return grid[(chroma >= 30) & (lab[:, 0] >= 45) & (lab[:, 0] <= 90)]


def _pick(target, colours, start_lab, neighbours, candidates, cand_lab, threshold, strict=False):
    """The candidate nearest ``target``'s start colour that is ``threshold`` + ``MARGIN_DELTA_E`` from each of its
    neighbours and ``MIN_ANY_DELTA_E`` from every other colour; without one, the candidate
    farthest from its nearest neighbour (``strict``: its present colour)."""
    lab = lab_of(colours)
    near = np.full(len(candidates), np.inf)
    for n in neighbours[target]:
        near = np.minimum(near, delta_e(cand_lab, lab[n][None]))
    anywhere = np.full(len(candidates), np.inf)
    for n, value in lab.items():
        if n != target:
            anywhere = np.minimum(anywhere, delta_e(cand_lab, value[None]))
    good = (near >= threshold + MARGIN_DELTA_E) & (anywhere >= MIN_ANY_DELTA_E)
    if good.any():
        from_start = delta_e(cand_lab, start_lab[target][None])
        return tuple(int(c) for c in candidates[int(np.argmin(np.where(good, from_start, np.inf)))])
    if strict:
        return colours[target]
    fallback = np.where(anywhere >= MIN_ANY_DELTA_E, near, -1)
    return tuple(int(c) for c in candidates[int(np.argmax(fallback))])


def repair_palette(
    colours: dict[str, tuple[int, int, int]],
    pairs,
    keep: tuple[str, ...] = (),
    threshold: float = MIN_TOUCHING_DELTA_E,
    max_steps: int = 500,
) -> dict[str, tuple[int, int, int]]:
    """Recolour structures until every touching pair is ``threshold`` CIEDE2000 apart or better.

    ``colours``: structure -> (r, g, b) 0..255, the start; ``pairs``: touching (a, b) pairs.
    The closest pair is fixed first: of its two structures the one not in ``keep`` (else the
    later in label order) takes the candidate colour nearest its start colour that keeps it
    ``threshold`` + ``MARGIN_DELTA_E`` from each neighbour and ``MIN_ANY_DELTA_E`` from every colour. Then each
    recoloured structure once more takes the candidate nearest its start colour (earlier picks
    were made before its neighbours moved). Deterministic; pairs that no candidate can fix stay
    below the threshold (the caller checks).
    """
    start = dict(colours)
    colours = dict(colours)
    neighbours: dict[str, set[str]] = {n: set() for n in STRUCTURES}
    for a, b in pairs:
        neighbours[a].add(b)
        neighbours[b].add(a)
    candidates = candidate_colours()
    cand_lab = np.array(list(lab_of({i: tuple(c) for i, c in enumerate(candidates)}).values()))
    start_lab = lab_of(start)
    order = {n: i for i, n in enumerate(STRUCTURES)}
    args = (start_lab, neighbours, candidates, cand_lab, threshold)
    for _ in range(max_steps):
        distances = touching_distances(colours, pairs)
        close = {p: d for p, d in distances.items() if d < threshold}
        if not close:
            break
        a, b = min(close, key=lambda p: (close[p], p))
        movable = [n for n in (a, b) if n not in keep] or [a, b]
        target = max(movable, key=order.get)
        colours[target] = _pick(target, colours, *args)
    for name in sorted((n for n in colours if colours[n] != start[n]), key=order.get):
        colours[name] = _pick(name, colours, *args, strict=True)
    return colours
