"""Figures of the Explore view on the real 512 x 512 sample (printed, not asserted as timings).

Run with ``-s`` to see them. The issue's goals: a slider move (the fragment) under 100 ms of
server time for a 512 x 512 slice with overlays; a full-resolution liver mesh under 1 s.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from ctseg_core.data.cache import open_cached
from ctseg_core.labels import LABEL_OF, NUM_STRUCTURES
from ctseg_core.viz.slices import to_png_bytes
from dashboard.helpers.viewer import Layer, ViewSettings, compose_slice

SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "totalseg_sample"

pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def s0001(tmp_path_factory):
    return open_cached(SAMPLE, "s0001", tmp_path_factory.mktemp("cache"))


def _median_ms(fn, repeats: int = 15) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


def test_slice_view_of_a_512_slice_with_two_overlays(s0001):
    assert s0001.shape_xyz[:2] == (512, 512)
    visible = np.ones(NUM_STRUCTURES + 1, dtype=bool)
    # the reference shown twice stands in for reference + prediction (same cost)
    layers = [
        Layer("reference", s0001.labels, "ref", s0001.voxel_counts),
        Layer("prediction", s0001.labels, "pred", s0001.voxel_counts),
    ]
    for layout in ("side by side", "combined"):
        view = ViewSettings("axial", 40.0, 400.0, "fill", layout, 0.45, visible)
        z = s0001.num_slices // 2
        rgb = compose_slice(s0001.ct, layers, z, view, s0001.spacing_mm)
        assert rgb.shape[0] == 512 and rgb.dtype == np.uint8
        # the overlay coloured the labelled pixels: not a plain gray image
        assert (rgb[..., 0] != rgb[..., 1]).mean() > 0.05
        ms = _median_ms(lambda v=view, z=z: to_png_bytes(compose_slice(
            s0001.ct, layers, z, v, s0001.spacing_mm)))  # fmt: skip
        print(f"\n512x512 axial slice, two overlays ({layout}), composed + PNG: {ms:.1f} ms")


def test_full_resolution_liver_mesh(s0001):
    from ctseg_core.viz.mesh import structure_mesh

    labels = np.asarray(s0001.labels)
    started = time.perf_counter()
    verts, faces = structure_mesh(labels, LABEL_OF["liver"], s0001.spacing_mm, max_faces=None)
    seconds = time.perf_counter() - started
    assert len(faces) > 1000
    extent_mm = verts.max(axis=0) - verts.min(axis=0)
    assert extent_mm[0] > 100  # a liver spans well over 10 cm left to right
    print(f"\nliver mesh at full resolution: {len(faces)} faces in {seconds:.2f} s")
