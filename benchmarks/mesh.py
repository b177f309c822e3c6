"""Structure mesh time: ctseg's cropped, budgeted marching cubes against the naive way,
skimage ``marching_cubes`` on the whole uncropped volume at step 1.

    python benchmarks/mesh.py [--data ../shared/data/totalseg_sample] [--subject s0001]

Cases: the liver of the real subject (512 x 512 x 20, 0.98 x 0.98 x 2 mm, read from the
preprocessing cache, built in a temporary folder first) and a big phantom organ (a lobed,
liver-sized ellipsoid, about 2 l) in a 512 x 512 x 300 volume at 0.8 x 0.8 x 1.5 mm.
Both sides start from the (Z, X, Y) label volume and the label value; times include building
the mask (ours: ``bounding_boxes`` over the whole volume, then the crop). ctseg is timed at full
resolution (``max_faces=None``) and at the dashboard's default budget (20000 faces), each with its
default Taubin smoothing, and once more with the bounding box already computed (the dashboard
caches ``bounding_boxes`` per subject). ctseg closes surfaces cut by the volume's edge (the
liver of s0001 is cut by its first and last slice: more faces and area than the open naive mesh). The cost of turning the full-resolution mesh into a plotly figure and its JSON is shown apart.
Goal (issue 5): the liver mesh at full resolution in under 1 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from skimage.measure import marching_cubes

from ctseg_core.data import open_cached
from ctseg_core.labels import LABEL_OF
from ctseg_core.viz.mesh import bounding_boxes, mesh_area, meshes_figure, structure_mesh

REPO = Path(__file__).resolve().parents[1]


def naive(labels_zxy, value, spacing_xyz):
    sx, sy, sz = spacing_xyz
    mask = (np.asarray(labels_zxy) == value).astype(np.float32)
    verts, faces, _normals, _values = marching_cubes(mask, 0.5, spacing=(sz, sx, sy))
    return verts, faces


def ours(labels_zxy, value, spacing_xyz, max_faces, box=None):
    box = bounding_boxes(labels_zxy)[value] if box is None else box
    return structure_mesh(labels_zxy, value, spacing_xyz, max_faces=max_faces, box=box)


def figure_json(verts, faces):
    """What the page adds after the mesh: the plotly figure and its JSON (st.plotly_chart)."""
    fig = meshes_figure(
        [{"name": "organ", "verts": verts, "faces": faces, "colour": (221, 130, 101)}]
    )
    return fig.to_json()


def timed(fn, repeats=3):
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def phantom_organ(shape_zxy=(300, 512, 512), spacing_xyz=(0.8, 0.8, 1.5), value=5):
    """(Z, X, Y) labels with one lobed ellipsoid (semi-axes about 110 x 80 x 75 mm, ~2 l)."""
    sx, sy, sz = spacing_xyz
    nz, nx, ny = shape_zxy
    z = (np.arange(nz, dtype=np.float32) - nz / 2) * sz
    x = (np.arange(nx, dtype=np.float32) - nx / 2) * sx
    y = (np.arange(ny, dtype=np.float32) - ny / 2) * sy
    zz, xx, yy = z[:, None, None], x[None, :, None], y[None, None, :]
    angle = np.arctan2(yy, xx)
    lobes = 1.0 + 0.12 * np.cos(3 * angle) + 0.05 * np.sin(zz / 11.0)
    inside = (xx / 110) ** 2 + (yy / 80) ** 2 + (zz / 75) ** 2 <= lobes**2 * 0.8
    labels = np.zeros(shape_zxy, np.uint8)
    labels[inside] = value
    labels[:, :40, :40] = 1  # another structure, so the volume is a label map
    return labels


def report(name, labels_zxy, value, spacing_xyz):
    voxels = int(np.count_nonzero(np.asarray(labels_zxy) == value))
    volume_ml = voxels * float(np.prod(spacing_xyz)) / 1000
    print(f"\n{name}: volume {labels_zxy.shape} (Z, X, Y), {voxels} voxels = {volume_ml:.0f} ml")
    t_naive, (nv, nf) = timed(lambda: naive(labels_zxy, value, spacing_xyz), 2)
    t_full, (fv, ff) = timed(lambda: ours(labels_zxy, value, spacing_xyz, None))
    t_budget, (bv, bf) = timed(lambda: ours(labels_zxy, value, spacing_xyz, 20000))
    print(
        f"  naive skimage, whole volume, step 1: {t_naive:7.3f} s  {len(nf):7d} faces  "
        f"area {mesh_area(nv, nf) / 100:8.1f} cm²"
    )
    print(
        f"  ctseg full resolution:               {t_full:7.3f} s  {len(ff):7d} faces  "
        f"area {mesh_area(fv, ff) / 100:8.1f} cm²  (naive / ctseg {t_naive / t_full:.1f}x)"
    )
    print(
        f"  ctseg 20000-face budget:             {t_budget:7.3f} s  {len(bf):7d} faces  "
        f"area {mesh_area(bv, bf) / 100:8.1f} cm²  (naive / ctseg {t_naive / t_budget:.1f}x)"
    )
    box = bounding_boxes(labels_zxy)[value]
    t_cached, _ = timed(lambda: ours(labels_zxy, value, spacing_xyz, 20000, box))
    print(f"  ctseg 20000-face budget, box cached: {t_cached:7.3f} s  "
          f"(naive / ctseg {t_naive / t_cached:.1f}x)")  # fmt: skip
    t_figure, payload = timed(lambda: figure_json(fv, ff), 1)
    print(f"  full-resolution mesh -> plotly figure -> JSON: +{t_figure:.3f} s, "
          f"{len(payload) / 1e6:.1f} MB sent to the browser")  # fmt: skip
    print(f"  goal full resolution < 1 s: {'met' if t_full < 1 else 'NOT met'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/totalseg_sample")
    parser.add_argument("--subject", default="s0001")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        if (args.data / args.subject).is_dir():
            entry = open_cached(args.data, args.subject, cache_dir)
            report(f"{args.subject} liver", entry.labels, LABEL_OF["liver"], entry.spacing_mm)
        else:
            print(f"{args.data / args.subject} not found: real liver skipped")
    report("phantom organ", phantom_organ(), 5, (0.8, 0.8, 1.5))


if __name__ == "__main__":
    main()
