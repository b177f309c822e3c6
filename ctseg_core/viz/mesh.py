"""Surface meshes of labelled structures (marching cubes on a cropped box) and plotly 3D figures.

The label volume is cropped to the structure's bounding box, block-averaged when the mesh would
exceed a face budget (per-axis factors that keep the cells close to cubic in mm, so thin slabs
keep their slices), then meshed at the 0.5 level of the partial-volume fraction. Vertices are in
mm: canonical (x, y, z) voxel index times spacing, or world coordinates when an affine is given.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage, sparse

from ..errors import ConfigError

log = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]
_LAYOUTS = ("zxy", "xyz")


def bounding_boxes(labels: np.ndarray) -> dict[int, Box]:
    """Bounding box of every label value present: {value: (slice, slice, slice)} in array axes.

    One ``scipy.ndimage.find_objects`` pass over the whole volume; compute it once per subject and
    pass the box to ``structure_mesh`` so each mesh reads only its crop.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    boxes = ndimage.find_objects(labels)
    return {value: box for value, box in enumerate(boxes, start=1) if box is not None}


def _to_xyz(array_axes: np.ndarray, layout: str) -> np.ndarray:
    """Reorder (N, 3) coordinates from the array's axis order to canonical (x, y, z)."""
    return array_axes[:, [1, 2, 0]] if layout == "zxy" else array_axes


def _spacing_in_array_axes(spacing_mm, layout: str) -> np.ndarray:
    sx, sy, sz = (float(s) for s in spacing_mm)
    return np.array([sz, sx, sy] if layout == "zxy" else [sx, sy, sz])


def _estimate_faces(transitions: np.ndarray, factors: np.ndarray) -> float:
    """Triangles marching cubes makes on a grid coarsened by ``factors`` (about 2 per voxel face).

    ``transitions[i]`` counts inside/outside changes along axis i at full resolution; along axis i
    they scale with the cross-section, i.e. 1 / (f_j * f_k).
    """
    f0, f1, f2 = factors
    return 2.0 * (
        transitions[0] / (f1 * f2) + transitions[1] / (f0 * f2) + transitions[2] / (f0 * f1)
    )


def choose_factors(mask: np.ndarray, spacing: np.ndarray, max_faces: int | None) -> np.ndarray:
    """Per-axis block factors (ints >= 1) so the estimated face count stays <= ``max_faces``.

    Coarsens the axis with the finest effective voxel size (spacing * factor) first, so cells grow
    towards cubes in mm before any axis gets coarser than the coarsest one.
    """
    factors = np.ones(3, dtype=np.int64)
    if max_faces is None:
        return factors
    padded = np.pad(mask, 1)
    transitions = np.array(
        [np.count_nonzero(np.diff(padded, axis=axis)) for axis in range(3)], dtype=np.float64
    )
    while _estimate_faces(transitions, factors) > max_faces:
        size = spacing * factors
        growable = factors < np.array(mask.shape)
        if not growable.any():
            break
        axis = int(np.argmin(np.where(growable, size, np.inf)))
        factors[axis] += 1
    return factors


def _block_mean(mask: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Fraction of inside voxels per block of ``factors`` voxels (zero-padded to full blocks)."""
    if (factors == 1).all():
        return mask.astype(np.float32)
    pad = [(0, (-n) % f) for n, f in zip(mask.shape, factors, strict=True)]
    padded = np.pad(mask, pad).astype(np.float32)
    b0, b1, b2 = (n // f for n, f in zip(padded.shape, factors, strict=True))
    f0, f1, f2 = (int(f) for f in factors)
    return padded.reshape(b0, f0, b1, f1, b2, f2).mean(axis=(1, 3, 5), dtype=np.float32)


def taubin_smooth(
    verts: np.ndarray, faces: np.ndarray, iterations: int = 10, lam: float = 0.5, mu: float = -0.53
) -> np.ndarray:
    """Taubin (lambda|mu) smoothing of a triangle mesh: removes voxel staircases, keeps volume.

    Unlike blurring the mask it never deletes thin structures (topology is unchanged).
    verts: (N, 3), faces: (M, 3) int; returns new (N, 3) float32 vertices.
    """
    if iterations <= 0 or len(faces) == 0:
        return verts
    n = len(verts)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adjacency = sparse.csr_matrix(
        (np.ones(len(edges), dtype=np.float32), (edges[:, 0], edges[:, 1])), shape=(n, n)
    )
    adjacency.data[:] = 1.0  # an edge shared by two faces was summed twice
    degree = np.diff(adjacency.indptr)
    # rows scaled by 1 / degree: one product gives each vertex the mean of its neighbours;
    # a vertex in no face (degree 0) gets a zero row and is pinned below
    adjacency.data /= np.repeat(np.maximum(degree, 1), degree).astype(np.float32)
    pinned = degree == 0
    smoothed = np.array(verts, dtype=np.float32)
    for _ in range(iterations):
        for weight in (lam, mu):
            step = adjacency @ smoothed - smoothed
            step[pinned] = 0.0
            smoothed += np.float32(weight) * step
    return smoothed.astype(np.float32)


def structure_mesh(
    labels: np.ndarray,
    value: int,
    spacing_mm: tuple[float, float, float],
    affine: np.ndarray | None = None,
    max_faces: int | None = 20000,
    box: Box | None = None,
    layout: str = "zxy",
    smooth_iterations: int = 10,
    smooth_sigma: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Triangle surface of ``labels == value``, or of a bool mask (``value`` is then ignored).

    labels: (Z, X, Y) as the cache stores it (``layout="zxy"``) or canonical (X, Y, Z)
    (``layout="xyz"``); spacing_mm: voxel size along x, y, z; affine: (4, 4) voxel (x, y, z) ->
    world mm of the canonical volume (``CachedSubject.affine``), or None for index * spacing;
    max_faces: face budget (None = full resolution); box: the structure's bounding box from
    ``bounding_boxes`` (computed here when None); smooth_iterations: Taubin passes on the mesh
    (0 = raw marching cubes; 10 removes most of the voxel staircase, moves extents < 2%);
    smooth_sigma: Gaussian sigma in coarse voxels on the mask before meshing (0 = none; 1 gives
    areas within ~1% on smooth shapes, but erases structures thinner than ~2 voxels, in which
    case the unblurred mask is meshed). Returns verts (N, 3) float32 in mm as (x, y, z) and faces
    (M, 3) int32. An absent structure returns empty (0, 3) arrays; a closed surface is produced
    even where the structure touches the volume's edge. Voxels too scattered to fill any coarse
    block more than halfway are wrapped at half the fullest block's fraction.
    """
    if layout not in _LAYOUTS:
        raise ConfigError(f"layout {layout!r} must be one of {_LAYOUTS}")
    if labels.ndim != 3:
        raise ConfigError(f"labels must be a 3D volume, got shape {labels.shape}")
    empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32))
    is_mask = labels.dtype == bool
    if box is None:
        if is_mask:
            found = ndimage.find_objects(labels.view(np.uint8))
            box = found[0] if found else None
        else:
            box = bounding_boxes(labels).get(int(value))
    if box is None:
        return empty
    crop = np.asarray(labels[box])
    mask = crop if is_mask else crop == value
    if not mask.any():
        return empty
    spacing = _spacing_in_array_axes(spacing_mm, layout)
    factors = choose_factors(mask, spacing, max_faces)
    fraction = _block_mean(mask, factors)
    if smooth_sigma > 0:
        blurred = ndimage.gaussian_filter(fraction, smooth_sigma)
        if blurred.max() > 0.5:
            fraction = blurred
    # a zero border so surfaces close at the crop (and volume) edges
    fraction = np.pad(fraction, 1)
    # scattered voxels (a noisy prediction) may fill no block halfway at this face budget:
    # the surface then wraps where they are densest, instead of marching_cubes failing
    peak = float(fraction.max())
    level = 0.5 if peak > 0.5 else peak / 2  # at exactly 0.5 nothing crosses it either
    from skimage.measure import marching_cubes

    verts, faces, _normals, _values = marching_cubes(fraction, level=level)
    # coarse grid coordinates -> voxel index: block b covers voxels b*f .. b*f+f-1 (centre below)
    start = np.array([s.start or 0 for s in box], dtype=np.float64)
    index = (verts - 1.0) * factors + (factors - 1) / 2.0 + start
    index_xyz = _to_xyz(index, layout)
    if affine is None:
        sx, sy, sz = (float(s) for s in spacing_mm)
        verts_mm = index_xyz * np.array([sx, sy, sz])
    else:
        affine = np.asarray(affine, dtype=np.float64)
        verts_mm = index_xyz @ affine[:3, :3].T + affine[:3, 3]
    verts_mm = taubin_smooth(verts_mm, faces, smooth_iterations)
    # (z, x, y) -> (x, y, z) is a cyclic (even) permutation, so only a mirroring affine flips
    # the triangles' winding; keep it consistent for renderers that light one side
    if affine is not None and np.linalg.det(affine[:3, :3]) < 0:
        faces = faces[:, ::-1]
    log.debug(
        "mesh of label %s: box %s, factors %s, %d faces", value, mask.shape, factors, len(faces)
    )
    return verts_mm.astype(np.float32), faces.astype(np.int32)


def structure_meshes(
    labels: np.ndarray,
    values: list[int],
    spacing_mm: tuple[float, float, float],
    affine: np.ndarray | None = None,
    max_faces_total: int | None = 200000,
    boxes: dict[int, Box] | None = None,
    colours: np.ndarray | None = None,
    layout: str = "zxy",
    kind: str = "reference",
    smooth_iterations: int = 10,
) -> list[dict]:
    """Meshes of several structures as ``meshes_figure`` items, sharing one face budget.

    The budget is split by each structure's voxel count in its box (a large organ gets more faces
    than a small vessel, each at least 2000). Absent structures are left out. ``colours``: (118, 3)
    uint8, default ``colour_lut()``; ``boxes``: from ``bounding_boxes`` (computed when None).
    """
    from ..labels import NAME_OF, colour_lut

    colours = colour_lut() if colours is None else np.asarray(colours)
    boxes = bounding_boxes(labels) if boxes is None else boxes
    present = [int(v) for v in values if int(v) in boxes]
    sizes = {v: float(np.prod([s.stop - s.start for s in boxes[v]])) for v in present}
    total = sum(sizes.values()) or 1.0
    items = []
    for value in present:
        budget = None
        if max_faces_total is not None:
            budget = max(2000, int(max_faces_total * sizes[value] / total))
        verts, faces = structure_mesh(
            labels, value, spacing_mm, affine, budget, boxes[value], layout, smooth_iterations
        )
        if len(faces):
            items.append(
                {
                    "name": NAME_OF.get(value, str(value)),
                    "value": value,
                    "verts": verts,
                    "faces": faces,
                    "colour": tuple(int(c) for c in colours[value]),
                    "kind": kind,
                }
            )
    return items


def mesh_area(verts: np.ndarray, faces: np.ndarray) -> float:
    """Total area of a triangle mesh, in the squared unit of ``verts`` (mm² for our meshes)."""
    if len(faces) == 0:
        return 0.0
    tri = verts[faces].astype(np.float64)
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return float(0.5 * np.linalg.norm(cross, axis=1).sum())


def meshes_figure(items: list[dict], title: str | None = None):
    """A plotly Figure of structure surfaces in mm: reference and prediction side by side.

    items: dicts with ``name``, ``verts`` (N, 3), ``faces`` (M, 3), ``colour`` (r, g, b) 0..255,
    optional ``opacity`` (default 1) and ``kind`` ("reference", default, or "prediction").
    With both kinds the figure has two 3D scenes, reference left and prediction right (a
    prediction drawn inside its reference would be hidden by it), over the same mm box; with
    one kind, one scene. Axes are equal mm. The legend lists each structure once: clicking it hides the structure
    in both scenes. Items with no faces are left out. Vertices are sent as float32 and faces as
    uint16 where they fit (plotly ships typed arrays: a smaller page).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    items = [item for item in items if len(item["faces"])]
    kinds = [k for k in ("reference", "prediction") if any(_kind(i) == k for i in items)]
    if len(kinds) == 2:
        fig = make_subplots(rows=1, cols=2, specs=[[{"type": "scene"}, {"type": "scene"}]],
                            subplot_titles=kinds, horizontal_spacing=0.02)  # fmt: skip
    else:
        fig = go.Figure()
    named: set[str] = set()
    for item in items:
        verts = np.asarray(item["verts"], dtype=np.float32)
        faces = np.asarray(item["faces"])
        faces = faces.astype(np.uint16 if len(verts) < 1 << 16 else np.int32)
        kind, name = _kind(item), str(item["name"])
        r, g, b = (int(c) for c in item["colour"])
        trace = go.Mesh3d(
            x=verts[:, 0], y=verts[:, 1], z=verts[:, 2],
            i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
            color=f"rgb({r},{g},{b})", opacity=float(item.get("opacity", 1.0)),
            name=name, legendgroup=name, showlegend=name not in named,
            hovertemplate=f"{name} ({kind})<extra></extra>",
            lighting={"ambient": 0.5, "diffuse": 0.8, "specular": 0.2, "roughness": 0.6},
        )  # fmt: skip
        named.add(name)
        if len(kinds) == 2:
            fig.add_trace(trace, row=1, col=kinds.index(kind) + 1)
        else:
            fig.add_trace(trace)
    scene = {"aspectmode": "data", "xaxis_title": "x (mm, R+)", "yaxis_title": "y (mm, A+)",
             "zaxis_title": "z (mm, S+)"}  # fmt: skip
    fig.update_layout(
        title=title, scene=scene, margin={"l": 0, "r": 0, "t": 40 if title else 0, "b": 0}
    )
    if len(kinds) == 2:
        # the same box in both scenes: a false positive far away must not shrink one side
        points = np.concatenate([np.asarray(i["verts"], dtype=np.float64) for i in items])
        low, high = points.min(axis=0) - 1.0, points.max(axis=0) + 1.0
        for axis, lo, hi in zip(("xaxis", "yaxis", "zaxis"), low, high, strict=True):
            scene[axis] = {"range": [float(lo), float(hi)]}
        # "data" would size each scene by its own meshes: equal mm from the shared box instead
        extent = (high - low) / (high - low).max()
        scene["aspectmode"] = "manual"
        scene["aspectratio"] = dict(zip("xyz", extent.tolist(), strict=True))
        fig.update_layout(scene=scene, scene2=scene, margin_t=40)  # margin: the panel titles
    return fig


def _kind(item: dict) -> str:
    return item.get("kind", "reference")
