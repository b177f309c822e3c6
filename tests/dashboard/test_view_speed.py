"""Figures of the Explore view on a 512 x 512 CT (printed, not asserted as timings): s0000 on a
512 x 512 grid (tests/conftest.py, ``grid512_root``), the size of a scanner's full-resolution CT.

Run with ``-s`` to see them. The issue's goals: a slider move (the fragment) under 100 ms of
server time for a 512 x 512 slice with overlays; a full-resolution liver mesh under 1 s.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from ctseg_core.data.cache import open_cached
from ctseg_core.labels import LABEL_OF, NUM_STRUCTURES
from ctseg_core.viz.slices import to_png_bytes
from dashboard.helpers.viewer import Layer, ViewSettings, compose_slice


@pytest.fixture(scope="module")
def ct512(grid512_root, session_cache):
    """s0000 on a 512 x 512 grid of 0.715 x 0.715 x 3 mm, cached (once per session)."""
    return open_cached(grid512_root, "s0000", session_cache)


def _median_ms(fn, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def test_slice_view_of_a_512_slice_with_two_overlays(ct512):
    assert ct512.shape_xyz[:2] == (512, 512)
    visible = np.ones(NUM_STRUCTURES + 1, dtype=bool)
    # the reference shown twice stands in for reference + prediction (same cost)
    layers = [
        Layer("reference", ct512.labels, "ref", ct512.voxel_counts),
        Layer("prediction", ct512.labels, "pred", ct512.voxel_counts),
    ]
    for layout in ("side by side", "combined"):
        view = ViewSettings("axial", 40.0, 400.0, "fill", layout, 0.45, visible)
        z = ct512.num_slices // 2
        rgb = compose_slice(ct512.ct, layers, z, view, ct512.spacing_mm)
        assert rgb.shape[0] == 512 and rgb.dtype == np.uint8
        # the overlay coloured the labelled pixels: not a plain gray image
        assert (rgb[..., 0] != rgb[..., 1]).mean() > 0.05
        ms = _median_ms(lambda v=view, z=z: to_png_bytes(compose_slice(
            ct512.ct, layers, z, v, ct512.spacing_mm)))  # fmt: skip
        print(f"\n512x512 axial slice, two overlays ({layout}), composed + PNG: {ms:.1f} ms")


def test_full_resolution_liver_mesh(ct512):
    from ctseg_core.viz.mesh import structure_mesh

    labels = np.asarray(ct512.labels)
    started = time.perf_counter()
    verts, faces = structure_mesh(labels, LABEL_OF["liver"], ct512.spacing_mm, max_faces=None)
    seconds = time.perf_counter() - started
    assert len(faces) > 1000
    extent_mm = verts.max(axis=0) - verts.min(axis=0)
    assert extent_mm[0] > 100  # a liver spans well over 10 cm left to right
    print(f"\nliver mesh at full resolution: {len(faces)} faces in {seconds:.2f} s")


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_a_ct_alone_has_the_shape_it_has_under_labels(plane):
    """0.7 x 0.7 x 5 mm voxels: a coronal view is stretched to mm once (the CT alone was
    stretched twice, 7x too tall), zoomed or not."""
    rng = np.random.default_rng(0)
    ct_zxy = rng.integers(-1000, 1000, size=(20, 100, 90)).astype(np.int16)
    labels = np.zeros_like(ct_zxy, dtype=np.uint8)
    visible = np.ones(NUM_STRUCTURES + 1, dtype=bool)
    spacing = (0.7, 0.7, 5.0)
    for box in (None, ((2, 12), (10, 60), (20, 50))):
        view = ViewSettings(plane, 40.0, 400.0, "fill", "combined", 0.45, visible, box)
        alone = compose_slice(ct_zxy, [], 5, view, spacing)
        under = compose_slice(ct_zxy, [Layer("reference", labels, "r", labels[:0])], 5, view,
                              spacing)  # fmt: skip
        assert alone.shape == under.shape
        np.testing.assert_array_equal(alone, under)  # no label: the same pixels
