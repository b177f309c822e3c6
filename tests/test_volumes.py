"""Cached subjects resampled to a target spacing (data.volumes): grids, label fidelity, reuse."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctseg_core.data import volumes
from ctseg_core.data.cache import CachedSubject, open_cached
from ctseg_core.data.volumes import MAX_LOCATIONS, folder_name, open_resampled, resample_labels
from ctseg_core.errors import ConfigError, DataError
from ctseg_core.labels import NUM_LABELS


def _generated_subject(folder, labels_xyz, spacing_mm, subject_id="gen0") -> CachedSubject:
    """A cache entry written from arrays: CT = 40 HU inside structures, -1000 outside."""
    folder.mkdir(parents=True)
    ct = np.where(labels_xyz > 0, 40, -1000).astype(np.int16)
    np.save(folder / "ct.npy", np.ascontiguousarray(ct.transpose(2, 0, 1)))
    np.save(folder / "labels.npy", np.ascontiguousarray(labels_xyz.transpose(2, 0, 1)))
    meta = {
        "shape_xyz": list(labels_xyz.shape),
        "spacing_mm": list(spacing_mm),
        "annotated": [True] * NUM_LABELS,
        "voxel_counts": np.bincount(labels_xyz.ravel(), minlength=NUM_LABELS).tolist(),
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return CachedSubject(subject_id, folder, meta)


def _sphere(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


@pytest.fixture
def sphere_subject(tmp_path) -> CachedSubject:
    """60 x 50 x 40 voxels of 1 mm: a sphere of radius 12 mm (label 5, the liver) and a
    3 x 3 x 3 voxel cube (label 9) touching the sphere's bounding box."""
    labels = np.zeros((60, 50, 40), dtype=np.uint8)
    labels[_sphere(labels.shape, (28, 24, 20), 12)] = 5
    labels[40:43, 10:13, 5:8] = 9
    return _generated_subject(tmp_path / "entry", labels, (1.0, 1.0, 1.0))


def test_resampled_labels_equal_the_dense_trilinear_argmax_of_the_one_hot():
    labels = np.zeros((40, 36, 20), dtype=np.uint8)
    labels[5:20, 4:30, 3:15] = 3
    labels[15:35, 10:20, 5:18] = 7  # overlaps the box of 3: their boundary is contested
    labels[30:33, 30:33, 10:12] = 9
    labels[0:3, 0:5, :] = 1  # touches the volume's edges
    onehot = F.one_hot(torch.from_numpy(labels).long(), 10).permute(3, 0, 1, 2)[None].float()
    for grid in [(20, 18, 10), (13, 50, 7), (80, 72, 30)]:
        got, _ = resample_labels(labels, grid)
        dense = F.interpolate(onehot, size=grid, mode="trilinear", align_corners=False)
        assert np.array_equal(got, dense[0].argmax(0).numpy()), grid


def test_a_sphere_survives_twice_coarser_with_its_volume(sphere_subject):
    r = open_resampled(sphere_subject, (2.0, 2.0, 2.0))
    assert r.shape_xyz == (30, 25, 20) == r.labels.shape == r.ct.shape
    assert r.ct.dtype == np.int16 and r.labels.dtype == np.uint8
    source_mm3 = sphere_subject.voxel_counts[5] * 1.0  # 7153 voxels of 1 mm^3
    assert abs(r.voxel_counts[5] * 8 / source_mm3 - 1) < 0.06  # measured: 6848 mm^3, -4.3 %
    assert r.labels[14, 12, 10] == 5  # the centre, (28, 24, 20) mm -> voxel 14, 12, 10
    assert r.voxel_counts[9] > 0 and r.present[[5, 9]].all() and r.present.sum() == 2
    assert np.array_equal(r.voxel_counts, np.bincount(r.labels.ravel(), minlength=NUM_LABELS))
    # the CT follows: inside the sphere 40 HU, far outside -1000 HU
    assert r.ct[14, 12, 10] == 40 and r.ct[0, 24, 0] == -1000


def test_locations_are_voxels_of_their_structure_at_most_the_cap(sphere_subject):
    r = open_resampled(sphere_subject, (1.0, 1.0, 1.0))
    assert sorted(r.locations) == [5, 9]
    assert len(r.locations[5]) == MAX_LOCATIONS  # 7000+ voxels subsampled
    assert len(r.locations[9]) == 27  # all of them
    for value, at in r.locations.items():
        assert at.shape[1] == 3 and (r.labels[tuple(at.T)] == value).all()
        assert len(np.unique(at, axis=0)) == len(at)


def test_resampled_shape_is_the_extent_over_the_new_spacing_one_folder_per_spacing(
    phantom_root, cache_dir
):
    cached = open_cached(phantom_root, "s0000", cache_dir)  # 67 x 67 x 22 at 3.792 x 3.792 x 2.5
    shape, spacing = np.array(cached.shape_xyz), np.array(cached.spacing_mm)
    for target in [(3.0, 3.0, 3.0), (1.5, 2.0, 5.0)]:
        r = open_resampled(cached, target)
        assert r.shape_xyz == tuple(np.round(shape * spacing / target).astype(int))
        assert r.spacing_mm == target and r.labels.shape == r.shape_xyz
        assert r.folder == cached.folder / folder_name(target)
    assert r.shape_xyz == (169, 127, 11)
    stored = sorted(p.name for p in cached.folder.glob("resampled_*"))
    # (the session's cache may hold other tests' spacings too)
    assert {"resampled_1.5x2.0x5.0", "resampled_3.0x3.0x3.0"} <= set(stored)


def test_structure_volumes_are_kept_within_ten_percent_twice_coarser(phantom_root, cache_dir):
    checked = 0
    for sid in ["s0000", "s0002", "s0004"]:
        cached = open_cached(phantom_root, sid, cache_dir)
        r = open_resampled(cached, tuple(2 * s for s in cached.spacing_mm))
        before, after = cached.voxel_counts, r.voxel_counts * 8
        for k in np.flatnonzero(before >= 600)[1:]:  # structures of >= 75 coarse voxels
            assert abs(after[k] / before[k] - 1) < 0.10, (sid, k, before[k], after[k])
            checked += 1
    assert checked >= 15


def test_stored_volumes_are_reused_not_rewritten(phantom_root, cache_dir):
    cached = open_cached(phantom_root, "s0002", cache_dir)
    first = open_resampled(cached, (2.5, 2.5, 2.5))
    files = ["ct.npy", "labels.npy", "locations.npy", "meta.json"]
    stamps = [(first.folder / f).stat().st_mtime_ns for f in files]
    again = open_resampled(cached, (2.5, 2.5, 2.5))
    assert [(again.folder / f).stat().st_mtime_ns for f in files] == stamps
    assert isinstance(again.ct, np.memmap) and isinstance(again.labels, np.memmap)
    assert np.array_equal(again.labels, first.labels)
    assert {k: len(v) for k, v in again.locations.items()} == {
        k: len(v) for k, v in first.locations.items()
    }


def test_an_unwritable_cache_resamples_in_memory_and_warns_once(
    sphere_subject, tmp_path, caplog, monkeypatch
):
    monkeypatch.setattr(volumes, "_warned_read_only", False)
    stored = open_resampled(sphere_subject, (2.0, 2.0, 2.0))
    for target in [(3.0, 3.0, 3.0), (4.0, 4.0, 4.0)]:
        # a file where the folder would go: writing fails as on a read-only cache (even as root)
        (sphere_subject.folder / folder_name(target)).write_text("")
    with caplog.at_level(logging.WARNING, logger="ctseg_core.data.volumes"):
        r3 = open_resampled(sphere_subject, (3.0, 3.0, 3.0))
        r4 = open_resampled(sphere_subject, (4.0, 4.0, 4.0))
    assert r3.folder is None and r4.folder is None
    assert r3.shape_xyz == (20, 17, 13) == r3.labels.shape and r3.voxel_counts[5] > 0
    assert len(caplog.records) == 1 and "cannot store resampled volumes" in caplog.text
    assert (r3.labels[tuple(r3.locations[5].T)] == 5).all()
    assert stored.folder is not None  # the writable one was stored


def test_over_limit_grid_is_refused_naming_subject_and_spacing(sphere_subject, monkeypatch):
    monkeypatch.setenv("CTSEG_MAX_VOXELS", str(60 * 50 * 40))
    open_resampled(sphere_subject, (1.0, 1.0, 1.0))  # exactly the limit
    with pytest.raises(DataError) as caught:
        open_resampled(sphere_subject, (0.5, 0.5, 0.5))  # 120 x 100 x 80
    message = str(caught.value)
    assert "\n" not in message and "gen0" in message and "120 x 100 x 80" in message
    assert "CTSEG_MAX_VOXELS" in message and "(1.0, 1.0, 1.0) mm or coarser" in message
    assert not (sphere_subject.folder / folder_name((0.5, 0.5, 0.5))).exists()


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, 1.0)])
def test_a_spacing_that_is_not_three_sizes_above_zero_is_a_config_error(sphere_subject, spacing):
    with pytest.raises(ConfigError, match="must be three finite sizes > 0"):
        open_resampled(sphere_subject, spacing)


def test_the_spacing_suggested_over_the_voxel_limit_fits(monkeypatch):
    """Each axis of the grid rounds to the nearest voxel, so the cube root of the excess alone
    can suggest a spacing that is still over the limit (256 x 256 x 57 at 1 mm, a limit of
    20,000: 5.7 mm gives 45 x 45 x 10 = 20,250): the suggestion is one that fits."""
    import re

    monkeypatch.setenv("CTSEG_MAX_VOXELS", "20000")
    rng = np.random.default_rng(0)
    shapes = [(256, 256, 57)] + [tuple(int(v) for v in rng.integers(40, 600, 3)) for _ in range(30)]
    for shape in shapes:
        with pytest.raises(DataError) as exc:
            volumes.check_grid("s1", shape, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
        found = re.search(r"use a spacing of \(([\d.]+), ([\d.]+), ([\d.]+)\) mm", str(exc.value))
        suggested = tuple(float(v) for v in found.groups())
        volumes.check_grid("s1", shape, (1.0, 1.0, 1.0), suggested)  # fits: no error
