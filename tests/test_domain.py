"""What a run was trained on (training_data.json, the checkpoint's record) and the warnings for a
CT outside it: the phantom's model on a real CT, another voxel size, intensities not in HU."""

from __future__ import annotations

import json
import logging
import re
import shutil

import numpy as np
import pytest
import torch

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.data.cache import open_cached
from ctseg_core.data.dataset_root import open_dataset
from ctseg_core.data.domain import body_hu_percentiles, describe_training_data, is_phantom_ct
from ctseg_core.data.volume import load_ct
from ctseg_core.inference.domain import (
    checkpoint_training_data,
    domain_warnings,
    outside_training_data,
)
from ctseg_core.inference.files import predict_file
from ctseg_core.models import build_model
from ctseg_core.models.checkpoint import load_checkpoint, load_model, save_checkpoint

PHANTOM_ONLY = "was trained on the synthetic phantom only, not on real CTs"


def _entries(root, cache, split=None):
    index = open_dataset(root)
    ids = index.subjects_in(split) if split else index.subjects
    return [open_cached(root, s, cache) for s in ids]


def test_the_record_holds_the_training_cts_spacing_and_hu_ranges(phantom_root, session_cache):
    train = _entries(phantom_root, session_cache, "train")
    record = describe_training_data(train, phantom_root, "train")
    assert record["source"] == "phantom" and record["subjects"] == len(train) >= 3
    spacings = np.array([e.spacing_mm for e in train])
    assert record["spacing_mm"]["min"] == pytest.approx(spacings.min(axis=0), abs=1e-4)
    assert record["spacing_mm"]["max"] == pytest.approx(spacings.max(axis=0), abs=1e-4)
    assert record["hu_range"] == [
        min(e.meta["hu_range"][0] for e in train),
        max(e.meta["hu_range"][1] for e in train),
    ]
    profiles = np.array([body_hu_percentiles(e.ct) for e in train])
    assert record["body_hu"]["percentiles"] == [5, 50, 95]
    assert record["body_hu"]["min"] == pytest.approx(profiles.min(axis=0), abs=0.05)
    assert record["body_hu"]["max"] == pytest.approx(profiles.max(axis=0), abs=0.05)
    # soft tissue and fat around the median, bone in the top 5 percent
    assert -150 < record["body_hu"]["min"][1] <= record["body_hu"]["max"][1] < 60
    assert record["body_hu"]["max"][2] > 150


def test_a_slice_model_is_warned_of_a_ct_whose_field_of_view_it_would_magnify(
    derived_sample, cache_dir
):
    """A 2D model sees each axial slice resized to its target size: a CT cropped to a third of
    the smallest training CT's extent reaches it magnified 3x; a 3D model (patches at a
    spacing) does not."""
    train = _entries(derived_sample, cache_dir)
    record = describe_training_data(train, derived_sample, "all", slice_model=True)
    extents = np.array([np.multiply(e.ct.shape[1:], e.spacing_mm[:2]) for e in train])
    assert record["slice_field_of_view_mm"]["min"] == pytest.approx(extents.min(axis=0), abs=0.1)
    assert record["slice_field_of_view_mm"]["max"] == pytest.approx(extents.max(axis=0), abs=0.1)
    assert "slice_field_of_view_mm" not in describe_training_data(train, derived_sample, "all")

    def check(record, ct_zxy, spacing_mm):
        extent = np.multiply(ct_zxy.shape[1:], spacing_mm[:2])
        return outside_training_data(record, spacing_mm, body_hu_percentiles(ct_zxy),
                                     input_is_phantom=False, field_of_view_mm=extent)  # fmt: skip

    for entry in train:
        assert check(record, entry.ct, entry.spacing_mm) == [], entry.subject_id
    entry = train[int(np.argmin(extents.prod(axis=1)))]
    nx, ny = (n // 3 for n in entry.ct.shape[1:])
    crop = np.asarray(entry.ct[:, :nx, :ny])
    (found,) = check(record, crop, entry.spacing_mm)
    x_mm, y_mm = nx * entry.spacing_mm[0], ny * entry.spacing_mm[1]
    assert found.startswith("the CT covers another field of view than the CTs the checkpoint")
    lo, hi = record["slice_field_of_view_mm"]["min"], record["slice_field_of_view_mm"]["max"]
    assert f"x {x_mm:.0f} mm (trained on {lo[0]:.0f}-{hi[0]:.0f})" in found
    assert f"y {y_mm:.0f} mm (trained on {lo[1]:.0f}-{hi[1]:.0f})" in found
    volumetric = describe_training_data(train, derived_sample, "all")
    assert check(volumetric, crop, entry.spacing_mm) == []


def test_a_volumetric_model_is_warned_of_a_ct_much_smaller_than_its_training_cts(
    derived_sample, cache_dir, tmp_path
):
    """A 3D model pads a CT smaller than its patch: on a crop of a third of the smallest
    training CT along x and z it labelled without a word (6 % of a crop's labels agreed with
    the whole CT's in a review); a slice model's record holds no such extent."""
    train = _entries(derived_sample, cache_dir)
    record = describe_training_data(train, derived_sample, "all")
    extents = np.array([np.multiply(np.roll(e.ct.shape, -1), e.spacing_mm) for e in train])
    assert record["extent_mm"]["min"] == pytest.approx(extents.min(axis=0), abs=0.1)
    assert record["extent_mm"]["max"] == pytest.approx(extents.max(axis=0), abs=0.1)
    slices = describe_training_data(train, derived_sample, "all", slice_model=True)
    assert "extent_mm" not in slices

    def check(record, ct_zxy, spacing_mm):
        return domain_warnings(["r/best.pth"], ct_zxy, spacing_mm, input_is_phantom=False,
                               records=[record])  # fmt: skip

    for entry in train:
        assert check(record, entry.ct, entry.spacing_mm) == [], entry.subject_id
    entry = train[int(np.argmin(extents.prod(axis=1)))]
    nz, nx = entry.ct.shape[0] // 3, entry.ct.shape[1] // 3
    crop = np.asarray(entry.ct[:nz, :nx])
    (found,) = check(record, crop, entry.spacing_mm)
    lo, hi = record["extent_mm"]["min"], record["extent_mm"]["max"]
    x_mm, z_mm = nx * entry.spacing_mm[0], nz * entry.spacing_mm[2]
    assert found == (
        f"the CT covers much less than the CTs r/best.pth was trained on: x {x_mm:.0f} mm "
        f"(trained on {lo[0]:.0f}-{hi[0]:.0f}), z {z_mm:.0f} mm (trained on {lo[2]:.0f}-"
        f"{hi[2]:.0f}); its windows are padded around it, with little context: expect poorer "
        "labels"
    )
    assert "covers much less" not in " ".join(check(slices, crop, entry.spacing_mm))
    bigger = np.concatenate([entry.ct, entry.ct], axis=0)  # twice as long: no warning
    assert check(record, bigger, entry.spacing_mm) == []
    # a run resumed with the record of before: it gains the extent, the rest kept
    older = {k: v for k, v in record.items() if k != "extent_mm"}
    from ctseg_core.data.domain import record_training_data

    resumed = record_training_data(tmp_path, train, derived_sample, "all", resumed=older)
    assert resumed == record


def test_body_percentiles_are_those_of_the_whole_ct_within_10_hu(s0000_root):
    """A CT of 30 slices of 512 x 512 real HU (sampled in z and in-plane, not whole): each
    slice a mosaic of 4 x 5 of s0000's 30 slices (122 x 101), air around them."""
    s0000 = np.asarray(load_ct(s0000_root / "s0000" / "ct.nii.gz").array).transpose(2, 0, 1)
    ct = np.full((30, 512, 512), -1024, dtype=np.int16)
    for z in range(30):
        for row in range(4):
            for col in range(5):
                ct[z, row * 122 : (row + 1) * 122, col * 101 : (col + 1) * 101] = s0000[
                    (z + 5 * row + col) % 30
                ]
    exact = np.percentile(ct[ct >= -500], [5, 50, 95])
    assert body_hu_percentiles(ct) == pytest.approx(exact, abs=10)


def test_body_percentiles_of_the_real_512_ct_are_those_of_the_whole_ct(sample_root, cache_dir):
    """The real s0001 of ../shared (optional, skipped without it)."""
    entry = open_cached(sample_root, "s0001", cache_dir)  # 512 x 512 x 20: sampled, not whole
    ct = np.asarray(entry.ct, dtype=np.float32)
    exact = np.percentile(ct[ct >= -500], [5, 50, 95])
    assert body_hu_percentiles(entry.ct) == pytest.approx(exact, abs=10)


def _phantom_record(phantom_root, session_cache) -> dict:
    record = describe_training_data(
        _entries(phantom_root, session_cache, "train"), phantom_root, "train"
    )
    for entry in _entries(phantom_root, session_cache):  # every split, the held-out ones too
        assert outside_training_data(record, entry.spacing_mm, body_hu_percentiles(entry.ct),
                                     input_is_phantom=True) == [], entry.subject_id  # fmt: skip
    return record


def test_the_phantoms_model_warns_on_a_real_ct_and_not_on_the_phantom(
    phantom_root, session_cache, grid512_root
):
    record = _phantom_record(phantom_root, session_cache)
    real = open_cached(grid512_root, "s0000", session_cache)  # 0.715 x 0.715 x 3.0 mm
    found = outside_training_data(record, real.spacing_mm, body_hu_percentiles(real.ct),
                                  input_is_phantom=False, what="s0000", model="tiny/best.pth")  # fmt: skip
    assert len(found) == 2
    assert found[0].startswith(f"tiny/best.pth {PHANTOM_ONLY}: its labels on s0000")
    lo, hi = record["spacing_mm"]["min"], record["spacing_mm"]["max"]
    assert lo[0] > 0.715 and lo[1] > 0.715  # finer in-plane than the phantom's
    assert lo[2] <= 3.0 <= hi[2]  # 3 mm slices are within the phantom's
    assert (
        f"x 0.715 mm (trained on {lo[0]:.3g}-{hi[0]:.3g}), "
        f"y 0.715 mm (trained on {lo[1]:.3g}-{hi[1]:.3g})" in found[1]
    )
    assert ", z " not in found[1]


def test_the_phantoms_model_warns_on_the_real_512_ct(phantom_root, session_cache, sample_root):
    """The real 512 x 512 s0001 of ../shared (optional, skipped without it)."""
    record = _phantom_record(phantom_root, session_cache)
    real = open_cached(sample_root, "s0001", session_cache)  # 0.977 x 0.977 x 2.0 mm
    found = outside_training_data(record, real.spacing_mm, body_hu_percentiles(real.ct),
                                  input_is_phantom=False, what="s0001", model="tiny/best.pth")  # fmt: skip
    assert len(found) == 2
    assert found[0].startswith(f"tiny/best.pth {PHANTOM_ONLY}: its labels on s0001")
    lo, hi = record["spacing_mm"]["min"][0], record["spacing_mm"]["max"][0]
    assert f"x 0.977 mm (trained on {lo:.3g}-{hi:.3g}), y 0.977 mm" in found[1]
    assert ", z " not in found[1]  # 2 mm slices are within the phantom's


def _check_intensities(record: dict, ct) -> float:
    """A CT in HU is not flagged against ``record``; the same CT with its HU shifted or scaled
    (a lost rescale intercept or slope) is. Returns the 5th percentile of the body voxels the
    warning gives for the CT with its HU halved."""
    zxy = ct.array.transpose(2, 0, 1)

    def check(array):
        return outside_training_data(record, ct.spacing_mm, body_hu_percentiles(array),
                                     input_is_phantom=False, what="the upload")  # fmt: skip

    assert check(zxy) == []
    # stored without its rescale intercept: air at 0, tissue near +1000
    (found,) = check(zxy.astype(np.int32) + 1024)
    assert found.startswith("the intensities of the upload are unlike those of the CTs")
    assert "p50 " in found and "p95 " in found
    median = float(found.split("p50 ")[1].split(" HU")[0])
    assert median > 900
    # a rescale slope of 0.5: lung and air fall among the body voxels
    (found,) = check((zxy.astype(np.float32) * 0.5).astype(np.int16))
    assert re.search(r"p5 -?\d+ HU \(trained on", found), found
    return float(found.split("p5 ")[1].split(" HU")[0])


def test_intensities_far_from_the_training_cts_are_flagged(derived_sample, int32_ct, cache_dir):
    record = describe_training_data(_entries(derived_sample, cache_dir), derived_sample, "all")
    assert record["source"] == "dataset" and record["subjects"] == 4
    ct = load_ct(int32_ct)  # the real s0000 CT, stored as int32 voxels
    halved = (ct.array.astype(np.float32) * 0.5).astype(np.int16)
    p5 = np.percentile(halved[halved >= -500], 5)  # of the whole CT: the warning's is sampled
    assert -500 <= p5 < -490  # air and lung, halved, are the lowest body voxels now
    assert _check_intensities(record, ct) == pytest.approx(p5, abs=10)


def test_intensities_of_another_real_patient_are_judged(sample_root, shared_extra, cache_dir):
    """The real sample and an unlabeled CT of another patient (../shared, optional)."""
    record = describe_training_data(_entries(sample_root, cache_dir), sample_root, "all")
    assert record["source"] == "dataset"
    assert _check_intensities(record, load_ct(shared_extra / "unlabeled_ct_3mm.nii.gz")) == -499


def test_a_phantom_ct_is_known_in_its_dataset_and_as_an_upload(phantom_root, s0000_root, tmp_path):
    ct = phantom_root / "s0001" / "ct.nii.gz"
    assert is_phantom_ct(ct)
    upload = tmp_path / "upload.nii.gz"  # outside its dataset: by its header
    shutil.copy(ct, upload)
    assert is_phantom_ct(upload)
    assert not is_phantom_ct(s0000_root / "s0000" / "ct.nii.gz")  # a real CT
    (tmp_path / "junk.nii.gz").write_bytes(b"not an image")
    assert not is_phantom_ct(tmp_path / "junk.nii.gz") and not is_phantom_ct(tmp_path)


def test_a_run_records_its_data_and_predict_warns_outside_it(
    phantom_root, s0000_root, tmp_path, caplog, one_torch_thread
):
    from ctseg_core.training.trainer import Trainer

    config = RunConfig(
        DataConfig(data_root=str(phantom_root), target_size=(64, 64), batch_size=4,
                   structures=["liver", "spleen"], val_slices_per_subject=2),
        ModelConfig(features=[4, 8, 16, 32], bottleneck=64),
        TrainConfig(epochs=1, steps_per_epoch=1, amp="off", sample_figure=False),
        run_name="ph",
    )  # fmt: skip
    assert Trainer(config, checkpoints_root=tmp_path).run() == "finished"
    run_dir = tmp_path / "ph"
    record = json.loads((run_dir / "training_data.json").read_text())
    assert record["source"] == "phantom" and record["data_root"] == str(phantom_root)
    assert record["subjects"] == len(open_dataset(phantom_root).subjects_in("train"))
    assert load_checkpoint(run_dir / "best.pth")["training_data"] == record
    assert checkpoint_training_data(run_dir / "last.pth") == record

    real = s0000_root / "s0000" / "ct.nii.gz"  # a real CT
    with caplog.at_level(logging.WARNING, logger="ctseg_core.inference"):
        summary = predict_file(real, [run_dir / "best.pth"], tmp_path / "real.nii.gz")
    phantom = [w for w in summary["warnings"] if PHANTOM_ONLY in w]
    assert phantom == [f"ph/best.pth {PHANTOM_ONLY}: its labels on {real} do not follow the "
                       "anatomy; use a checkpoint trained on real CTs"]  # fmt: skip
    assert phantom[0] in caplog.messages  # the CLI's log says it too
    caplog.clear()
    test_ct = phantom_root / open_dataset(phantom_root).subjects_in("test")[0] / "ct.nii.gz"
    with caplog.at_level(logging.WARNING, logger="ctseg_core.inference"):
        summary = predict_file(test_ct, [run_dir / "best.pth"], tmp_path / "phantom.nii.gz")
    assert summary["warnings"] == [] and not caplog.messages


def test_a_checkpoint_without_a_record_loads_and_is_judged_by_its_dataset(
    phantom_root, s0000_root, tmp_path
):
    def old_checkpoint(data_root, name):
        """A checkpoint as written before records were kept: no "training_data" key."""
        config = RunConfig(DataConfig(data_root=str(data_root), structures=["liver"]),
                           ModelConfig(features=[4, 8, 16, 32], bottleneck=64))  # fmt: skip
        path = save_checkpoint(tmp_path / name, build_model(config.model), config=config)
        ckpt = torch.load(path, weights_only=True)
        del ckpt["training_data"]
        torch.save(ckpt, path)
        return path

    on_phantom = old_checkpoint(phantom_root, "phantom.pth")
    _, config = load_model(on_phantom)
    assert config.data.structures == ["liver"] and "training_data" not in load_checkpoint(
        on_phantom
    )
    assert checkpoint_training_data(on_phantom) == {
        "version": 1, "source": "phantom", "data_root": str(phantom_root)
    }  # fmt: skip
    assert checkpoint_training_data(old_checkpoint(s0000_root, "real.pth")) is None
    found = outside_training_data(checkpoint_training_data(on_phantom), (0.8, 0.8, 1.0),
                                  [-100.0, 40.0, 300.0], input_is_phantom=False)  # fmt: skip
    assert len(found) == 1 and PHANTOM_ONLY in found[0]  # nothing else recorded to compare


def test_a_resume_on_another_copy_of_the_same_subjects_is_refused():
    """Same ids, other CTs (a phantom of another --size, a downsampled copy): the record's
    range of voxel sizes tells them apart (the ids' digest alone passed them; reviewer)."""
    from types import SimpleNamespace

    from ctseg_core.data.domain import check_resumed_data, describe_training_data
    from ctseg_core.errors import ConfigError

    def subjects(mm):
        ct = np.full((2, 4, 4), 40, np.int16)  # (Z, X, Y) soft tissue
        return [
            SimpleNamespace(subject_id=f"s{i}", spacing_mm=mm, meta={}, ct=ct) for i in range(3)
        ]

    record = describe_training_data(subjects((1.0, 1.0, 2.5)), "/data/a", "train")
    check_resumed_data(record, subjects((1.0, 1.0, 2.5)), "/data/a")  # the same: resumed
    with pytest.raises(ConfigError, match=r"the same subjects in /data/b have \[1.6, 1.6, 4.0\]"):
        check_resumed_data(record, subjects((1.6, 1.6, 4.0)), "/data/b")
    with pytest.raises(ConfigError, match="gives 2 other ones here"):
        check_resumed_data(record, subjects((1.0, 1.0, 2.5))[:2], "/data/b")
