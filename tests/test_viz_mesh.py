"""Structure meshes: size and area of known shapes in anisotropic spacing, world coordinates,
closed surfaces, face budgets, empty structures, the plotly figure, a real liver."""

from __future__ import annotations

import numpy as np
import pytest

from ctseg_core.labels import LABEL_OF
from ctseg_core.viz.mesh import (
    bounding_boxes,
    mesh_area,
    meshes_figure,
    structure_mesh,
    structure_meshes,
    taubin_smooth,
)

SPACING = (0.8, 1.1, 2.5)  # x, y, z mm
RADIUS = 20.0


def _sphere_zxy(radius_mm=RADIUS, spacing=SPACING, centre_mm=(1.3, -0.7, 0.9), value=5):
    """(Z, X, Y) labels with a ball of ``radius_mm`` centred ``centre_mm`` from the grid middle."""
    shape_xyz = [int(2.8 * radius_mm / s) for s in spacing]
    axes = [
        (np.arange(n) - n // 2) * s - c
        for n, s, c in zip(shape_xyz, spacing, centre_mm, strict=True)
    ]
    x, y, z = axes
    inside = (x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2) <= radius_mm**2
    labels = np.zeros(inside.shape, dtype=np.uint8)
    labels[inside] = value
    return labels.transpose(2, 0, 1).copy(), np.array(shape_xyz)


def _edge_face_counts(faces):
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    return np.unique(edges, axis=0, return_counts=True)[1]


def test_sphere_mesh_has_the_diameter_and_area_in_mm():
    labels, _ = _sphere_zxy()
    expected_area = 4 * np.pi * RADIUS**2
    verts, faces = structure_mesh(
        labels, 5, SPACING, max_faces=None, smooth_iterations=0, smooth_sigma=1.0
    )
    assert verts.dtype == np.float32 and faces.dtype == np.int32
    extent = verts.max(axis=0) - verts.min(axis=0)
    # within one voxel of the diameter along each axis (x, y, z order)
    assert np.all(np.abs(extent - 2 * RADIUS) <= np.array(SPACING)), extent
    assert mesh_area(verts, faces) == pytest.approx(expected_area, rel=0.03)
    # the raw staircase overestimates the area; Taubin smoothing brings it back within a few %
    raw_verts, raw_faces = structure_mesh(labels, 5, SPACING, max_faces=None, smooth_iterations=0)
    smooth = taubin_smooth(raw_verts, raw_faces, 20)
    raw_error = mesh_area(raw_verts, raw_faces) / expected_area - 1
    smooth_error = mesh_area(smooth, raw_faces) / expected_area - 1
    assert raw_error > 0.08 and 0 < smooth_error < 0.04
    assert np.all(np.abs(smooth.max(0) - smooth.min(0) - 2 * RADIUS) <= np.array(SPACING))


def test_sphere_centre_lands_at_the_voxel_position_in_mm():
    labels, shape_xyz = _sphere_zxy(centre_mm=(0.0, 0.0, 0.0))
    verts, _ = structure_mesh(labels, 5, SPACING, max_faces=None, smooth_iterations=0)
    centre_mm = (shape_xyz // 2) * np.array(SPACING)
    assert np.allclose((verts.max(0) + verts.min(0)) / 2, centre_mm, atol=0.3)


def test_affine_gives_world_coordinates():
    labels, _ = _sphere_zxy()
    plain, faces = structure_mesh(labels, 5, SPACING, max_faces=3000, smooth_iterations=0)
    rotation = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90° about z
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SPACING)
    affine[:3, 3] = (10.0, -250.0, -800.0)
    world, world_faces = structure_mesh(
        labels, 5, SPACING, affine=affine, max_faces=3000, smooth_iterations=0
    )
    assert np.array_equal(world_faces, faces)
    assert np.allclose(world, plain @ rotation.T + affine[:3, 3], atol=1e-3)


def test_xyz_layout_and_bool_mask_give_the_same_mesh():
    labels, _ = _sphere_zxy()
    verts, faces = structure_mesh(labels, 5, SPACING, max_faces=4000)
    verts_xyz, faces_xyz = structure_mesh(
        labels.transpose(1, 2, 0), 5, SPACING, max_faces=4000, layout="xyz"
    )
    assert len(faces_xyz) == pytest.approx(len(faces), rel=0.05)
    assert np.allclose(verts_xyz.min(0), verts.min(0), atol=0.5)
    assert np.allclose(verts_xyz.max(0), verts.max(0), atol=0.5)
    mask_verts, mask_faces = structure_mesh(labels == 5, 1, SPACING, max_faces=4000)
    assert np.array_equal(mask_faces, faces) and np.allclose(mask_verts, verts)


def test_absent_structure_gives_empty_arrays():
    labels, _ = _sphere_zxy()
    verts, faces = structure_mesh(labels, 6, SPACING)
    assert verts.shape == (0, 3) and faces.shape == (0, 3)
    assert verts.dtype == np.float32 and faces.dtype == np.int32
    verts, faces = structure_mesh(np.zeros((4, 5, 6), bool), 1, SPACING)
    assert verts.shape == (0, 3) and faces.shape == (0, 3)


def test_bounding_boxes_find_each_label():
    labels = np.zeros((6, 7, 8), dtype=np.uint8)
    labels[1:3, 2:5, 0:1] = 3
    labels[5, 6, 7] = 117
    boxes = bounding_boxes(labels)
    assert set(boxes) == {3, 117}
    assert boxes[3] == (slice(1, 3), slice(2, 5), slice(0, 1))
    assert boxes[117] == (slice(5, 6), slice(6, 7), slice(7, 8))


def test_structure_touching_the_volume_edge_gives_a_closed_surface():
    labels = np.zeros((5, 20, 20), dtype=np.uint8)
    labels[:, 3:15, 4:18] = 2  # fills every slice: cut by the first and last one
    verts, faces = structure_mesh(labels, 2, (1.0, 1.0, 2.0), max_faces=None)
    assert set(_edge_face_counts(faces)) == {2}  # every edge shared by two triangles
    extent = verts.max(0) - verts.min(0)
    assert extent[2] == pytest.approx(5 * 2.0, abs=2.0)


def test_face_budget_is_respected_and_keeps_the_shape():
    labels, _ = _sphere_zxy(radius_mm=40.0)
    _, full_faces = structure_mesh(labels, 5, SPACING, max_faces=None)
    assert len(full_faces) > 30000
    for budget in (20000, 5000, 1000):
        verts, faces = structure_mesh(labels, 5, SPACING, max_faces=budget)
        assert 0.3 * budget < len(faces) <= 1.1 * budget, (budget, len(faces))
        assert set(_edge_face_counts(faces)) == {2}
        extent = verts.max(0) - verts.min(0)
        assert np.allclose(extent, 80.0, rtol=0.06), (budget, extent)
        assert mesh_area(verts, faces) == pytest.approx(4 * np.pi * 40.0**2, rel=0.06)


def test_structure_meshes_split_a_budget_and_skip_absent():
    labels, _ = _sphere_zxy(radius_mm=25.0)
    labels[labels.shape[0] // 2, :4, :4] = 7  # a small plate in one slice
    items = structure_meshes(labels, [5, 7, 9], SPACING, max_faces_total=8000)
    assert [item["value"] for item in items] == [5, 7]
    assert items[0]["name"] == "liver" and items[0]["colour"] == (221, 130, 101)
    assert len(items[0]["faces"]) <= 8000 * 1.1


def test_meshes_figure_puts_reference_and_prediction_side_by_side_with_one_legend():
    labels, _ = _sphere_zxy(radius_mm=10.0)
    verts, faces = structure_mesh(labels, 5, SPACING, max_faces=2000)
    empty = (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int32))
    items = [
        {"name": "liver", "verts": verts, "faces": faces, "colour": (221, 130, 101)},
        {"name": "liver", "verts": verts + 1.0, "faces": faces, "colour": (221, 130, 101),
         "kind": "prediction"},
        {"name": "spleen", "verts": empty[0], "faces": empty[1], "colour": (1, 2, 3)},
    ]  # fmt: skip
    fig = meshes_figure(items, title="s0001")
    assert len(fig.data) == 2  # the empty spleen is left out
    reference, prediction = fig.data
    assert reference.type == "mesh3d" and reference.name == prediction.name == "liver"
    # one scene each: a prediction drawn inside its reference would be hidden by it
    assert (reference.scene, prediction.scene) == ("scene", "scene2")
    assert [a.text for a in fig.layout.annotations] == ["reference", "prediction"]
    # one legend entry per structure; its group hides it in both scenes
    assert (reference.showlegend, prediction.showlegend) == (True, False)
    assert reference.legendgroup == prediction.legendgroup == "liver"
    assert reference.opacity == prediction.opacity == 1.0
    assert len(reference.i) == len(faces) and len(reference.x) == len(verts)
    assert np.allclose(np.asarray(prediction.x), verts[:, 0] + 1.0)
    # both scenes show the same mm box, around the meshes of both, with equal mm on each axis
    assert fig.layout.scene.aspectratio == fig.layout.scene2.aspectratio
    for axis, column in (("xaxis", 0), ("zaxis", 2)):
        box = fig.layout.scene[axis].range
        assert box == fig.layout.scene2[axis].range
        assert box[0] < verts[:, column].min() and box[1] > verts[:, column].max() + 1.0
    box = [fig.layout.scene[a].range for a in ("xaxis", "yaxis", "zaxis")]
    ratio = fig.layout.scene.aspectratio
    assert ratio.x / ratio.z == pytest.approx((box[0][1] - box[0][0]) / (box[2][1] - box[2][0]))
    assert fig.layout.title.text == "s0001"
    single = meshes_figure(items[:1])
    assert len(single.data) == 1 and not single.layout.annotations
    assert single.data[0].scene in (None, "scene") and single.layout.scene.aspectmode == "data"


def test_real_liver_mesh_lies_inside_its_voxels_world_box(grid512_root, cache_dir):
    """s0000's liver on a 512 x 512 grid (0.715 x 0.715 x 3 mm): more faces than the limit."""
    from ctseg_core.data.cache import open_cached

    subject = open_cached(grid512_root, "s0000", cache_dir)
    liver = LABEL_OF["liver"]
    boxes = bounding_boxes(subject.labels)
    verts, faces = structure_mesh(
        subject.labels, liver, subject.spacing_mm, subject.affine, 20000, boxes[liver]
    )
    assert 5000 < len(faces) <= 22000
    zxy = np.argwhere(np.asarray(subject.labels[boxes[liver]]) == liver)
    zxy += [s.start for s in boxes[liver]]
    index_xyz = zxy[:, [1, 2, 0]]
    world = index_xyz @ subject.affine[:3, :3].T + subject.affine[:3, 3]
    lo, hi = world.min(0), world.max(0)
    tolerance = np.array(subject.spacing_mm) * 2  # block averaging plus the closing half voxel
    assert np.all(verts.min(0) >= lo - tolerance) and np.all(verts.max(0) <= hi + tolerance)
    assert np.all(verts.min(0) <= lo + tolerance) and np.all(verts.max(0) >= hi - tolerance)


def test_scattered_voxels_under_a_face_budget_still_give_a_surface_where_they_are():
    """A noisy prediction (specks, 10 % of a box) coarsened to fit the face budget fills no block
    halfway; its surface wraps where the specks are instead of marching cubes failing (which
    stopped `ctseg evaluate --meshes` with a traceback)."""
    rng = np.random.default_rng(0)
    labels = np.zeros((50, 70, 70), dtype=np.uint8)  # (Z, X, Y)
    labels[5:45, 5:65, 5:65] = (rng.random((40, 60, 60)) < 0.1) * 5
    verts, faces = structure_mesh(labels, 5, (1.0, 1.0, 1.0), max_faces=2000)
    assert 0 < len(faces) <= 2000 * 1.5
    lo, hi = verts.min(axis=0), verts.max(axis=0)  # (x, y, z) mm = voxel index here
    assert np.all(lo >= [3, 3, 3]) and np.all(hi <= [66, 66, 46])
    assert np.all(hi - lo >= [40, 40, 25])  # it spans the speckled box, not one corner of it
    items = structure_meshes(labels, [5], (1.0, 1.0, 1.0), max_faces_total=2000)
    assert [item["value"] for item in items] == [5]


def test_blocks_exactly_half_inside_still_give_a_surface():
    """Two voxels two apart, coarsened by 2 along their axis: each block is exactly half inside,
    which no surface at level 0.5 crosses ("No surface found at the given iso value")."""
    labels = np.zeros((8, 8, 8), dtype=np.uint8)  # (Z, X, Y)
    labels[3, 3, 2] = labels[3, 3, 4] = 5
    verts, faces = structure_mesh(labels, 5, (1.0, 1.0, 1.0), max_faces=16)
    assert len(faces) > 0
    assert np.all(verts.min(axis=0) >= [2, 1, 2]) and np.all(verts.max(axis=0) <= [4, 5, 4])
