"""Slice preprocessing shared with inference, the cached slice dataset and the sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.data.cache import open_cached
from ctseg_core.data.slices import (
    ForegroundSampler,
    SliceDataset,
    context_indices,
    normalize_hu,
    resize_batch,
    validation_indices,
)
from ctseg_core.errors import DataError
from ctseg_core.labels import LABEL_OF
from ctseg_core.models.head import class_lut, label_scores, predicted_labels
from ctseg_core.training.losses import LOSSES

TINY = {"features": [8, 16, 32, 64], "bottleneck": 64}


def test_normalize_hu_clips_and_maps_the_window_to_minus_one_one():
    ct = torch.tensor([[[[-3000, -1000, 0, 500, 1000, 3000]]]], dtype=torch.int16)
    out = normalize_hu(ct, (-1000.0, 1000.0))
    assert out.dtype == torch.float32
    assert out.flatten().tolist() == [-1.0, -1.0, 0.0, 0.5, 1.0, 1.0]
    assert normalize_hu(torch.tensor([40.0]), (-160.0, 240.0)).item() == pytest.approx(0.0)
    hu = torch.tensor([-3000.0, 40.0, 3000.0])  # float32: it was clipped and scaled in place
    normalize_hu(hu, (-1000.0, 1000.0))
    assert hu.tolist() == [-3000.0, 40.0, 3000.0]


def test_resize_keeps_label_values_and_smooths_images():
    labels = torch.zeros(1, 1, 10, 6, dtype=torch.uint8)
    labels[0, 0, 2:8, 1:4] = 117
    labels[0, 0, 0, 0] = 5
    out = resize_batch(labels, (20, 12), mode="nearest")
    assert out.dtype == torch.uint8 and out.shape == (1, 1, 20, 12)
    assert set(out.unique().tolist()) == {0, 5, 117}
    assert int((out == 117).sum()) == 4 * int((labels == 117).sum())
    image = torch.zeros(1, 1, 64, 64)
    image[..., ::2, :] = 1.0  # a one-pixel stripe pattern: antialiasing averages it out
    small = resize_batch(image, (16, 16))
    assert small.shape == (1, 1, 16, 16) and torch.allclose(
        small, torch.full_like(small, 0.5), atol=0.05
    )


def test_context_indices_are_clamped_at_the_volume_ends():
    assert context_indices(0, 10, 5) == [0, 0, 0, 1, 2]
    assert context_indices(9, 10, 3) == [8, 9, 9]
    assert context_indices(4, 10, 1) == [4]


def test_label_scores_put_probabilities_at_label_values():
    structures = ["liver", "spleen"]
    soft = RunConfig(DataConfig(structures=structures))
    logits = torch.full((1, 3, 2, 2), -10.0)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = logits[0, 2, 1, 0] = logits[0, 2, 1, 1] = 10.0
    scores = label_scores(logits, soft)
    assert scores.shape == (1, 118, 2, 2)
    assert torch.allclose(scores.sum(1), torch.ones(1, 2, 2))
    argmax = scores.argmax(1)[0].tolist()
    assert argmax == [[0, LABEL_OF["liver"]], [LABEL_OF["spleen"], LABEL_OF["spleen"]]]

    sig = RunConfig(
        DataConfig(structures=structures), ModelConfig(output="sigmoid"), TrainConfig(loss="bce")
    )
    logits = torch.tensor([[[[3.0, -3.0]], [[-3.0, -1.0]]]])  # (1, 2 structures, 1, 2)
    scores = label_scores(logits, sig)
    assert torch.all(scores[:, 0] == 0.5)  # background wins where no structure passes 0.5
    assert scores.argmax(1)[0].tolist() == [[LABEL_OF["liver"], 0]]


@pytest.mark.parametrize("loss", ["dice_ce", "bce"])
def test_predicted_labels_equal_the_argmax_of_the_scores(loss):
    # a structure order other than label order, and bf16 logits as autocast hands them over
    structures = ["spleen", "aorta", "liver", "kidney_left"]
    config = RunConfig(
        DataConfig(structures=structures), ModelConfig(output=LOSSES[loss].output_mode),
        TrainConfig(loss=loss),
    )  # fmt: skip
    k = len(structures) + (config.output_mode == "softmax")
    g = torch.Generator().manual_seed(1)
    # distinct values per pixel, exact in bf16 (a tie may break differently: channel vs label
    # order); every channel negative in the left half, so sigmoid models predict background
    levels = torch.tensor([-3.0, -1.5, -0.5, 1.0, 2.5])[:k]
    logits = levels[torch.rand(3, 16, 16, k, generator=g).argsort(dim=-1)].permute(0, 3, 1, 2)
    logits[..., :8] -= 3.0
    logits = logits.bfloat16()
    predicted = predicted_labels(logits, config)
    assert predicted.shape == (3, 16, 16) and predicted.dtype == torch.int64
    assert torch.equal(predicted, label_scores(logits, config).argmax(dim=1))
    if loss == "bce":
        assert bool((predicted[..., :8] == 0).all()) and bool((predicted[..., 8:] > 0).all())
    with pytest.raises(DataError, match="channels"):
        predicted_labels(logits[:, 1:], config)


def test_class_lut_maps_unlearned_structures_to_background():
    config = RunConfig(DataConfig(structures=["spleen", "aorta"]))
    lut = class_lut(config)
    assert lut[LABEL_OF["spleen"]] == 1 and lut[LABEL_OF["aorta"]] == 2
    assert lut[LABEL_OF["liver"]] == 0 and lut[0] == 0


def _train_slices(root, cache) -> SliceDataset:
    config = RunConfig(
        DataConfig(
            data_root=str(root), cache_dir=str(cache), target_size=(64, 64), context_slices=3
        ),
        ModelConfig(**TINY),
    )
    return SliceDataset(config, "train")


@pytest.fixture(scope="module")
def sample_dataset(derived_sample, tmp_path_factory):
    """The train split of the derived sample: s0000 (30 slices) and s0001 (20, stored LAS)."""
    return _train_slices(derived_sample, tmp_path_factory.mktemp("slices-cache"))


@pytest.fixture(scope="module")
def s0000_dataset(s0000_root, tmp_path_factory):
    """The train split of tests/data: s0000 alone (30 slices, 41 structures present)."""
    return _train_slices(s0000_root, tmp_path_factory.mktemp("slices-cache"))


def test_dataset_reads_resized_2p5d_slices_of_the_sample(sample_dataset):
    ds = sample_dataset
    assert ds.subject_ids == ["s0000", "s0001"]  # the train split of meta.csv
    assert len(ds) == 30 + 20
    s, z = ds.locate(30 + 7)
    assert (s, z) == (1, 7)
    image, labels, subject = ds[37]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert labels.shape == (64, 64) and labels.dtype == torch.uint8 and subject == 1
    # resized by weighted means of values in [-1, 1]: inside it up to float rounding
    assert float(image.min()) >= -1.0 - 1e-6 and float(image.max()) <= 1.0 + 1e-6
    cached = ds.subjects[1]
    raw = torch.from_numpy(np.array(cached.labels[7]))[None, None]
    expected = resize_batch(raw, (64, 64), mode="nearest")[0, 0]
    assert torch.equal(labels, expected)
    # the middle channel is slice z; the outer ones its neighbours
    centre = normalize_hu(torch.from_numpy(np.array(cached.ct[7]))[None, None], (-1000, 1000))
    assert torch.allclose(image[1], resize_batch(centre, (64, 64))[0, 0])
    assert not torch.allclose(image[0], image[1])
    # slice presence agrees with the cache's voxel counts
    liver = LABEL_OF["liver"]
    assert ds.subjects[0].voxel_counts[liver] > 0 and ds.presence[:30, liver].any()
    assert (ds.subjects[0].folder / "slice_presence.npy").is_file()  # scanned once, stored
    assert ds.presence[:30, liver].sum() == sum(
        bool((np.asarray(ds.subjects[0].labels[z]) == liver).any()) for z in range(30)
    )


def test_dataset_pickles_without_its_volumes_for_spawned_loader_workers(sample_dataset):
    """A spawn or forkserver worker (macOS; Linux from Python 3.14) gets a pickled dataset:
    the memory maps must stay behind, or every worker receives a copy of every volume."""
    import pickle

    ds = sample_dataset
    expected = [ds[i] for i in (3, 37, 41)]  # opens both subjects' CT and label maps
    volumes = sum(s.ct.nbytes + s.labels.nbytes for s in ds.subjects)
    size = len(pickle.dumps(ds))
    assert volumes == (30 + 20) * 122 * 101 * 3  # int16 CT + uint8 labels per voxel
    assert size < volumes / 10
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(ds, [3, 37, 41]), batch_size=3, num_workers=1,
        multiprocessing_context="spawn",
    )  # fmt: skip
    image, labels, subjects = next(iter(loader))
    assert torch.equal(image, torch.stack([e[0] for e in expected]))
    assert torch.equal(labels, torch.stack([e[1] for e in expected]))
    assert subjects.tolist() == [0, 1, 1]


def test_sampler_oversamples_foreground_and_is_seeded(s0000_dataset):
    ds = s0000_dataset
    has_fg = ds.presence.any(axis=1)
    full = ForegroundSampler(ds, 400, foreground_fraction=1.0, seed=3)
    none = ForegroundSampler(ds, 400, foreground_fraction=0.0, seed=3)
    assert has_fg[list(full)].all()
    assert has_fg[list(full)].mean() >= has_fg[list(none)].mean()
    # rare structures: every structure present in training is drawn with fraction 1.0
    drawn = ds.presence[list(full)].any(axis=0)
    assert (drawn == ds.presence.any(axis=0)).all()
    again = ForegroundSampler(ds, 400, foreground_fraction=1.0, seed=3)
    assert list(again) == list(full)
    again.set_epoch(1)
    assert list(again) != list(full)


def test_sampler_shards_one_draw_across_ranks_like_distributed_sampler(s0000_dataset):
    ranks = [
        ForegroundSampler(s0000_dataset, 10, 0.5, seed=1, rank=r, world_size=2) for r in (0, 1)
    ]
    whole = ForegroundSampler(s0000_dataset, 10, 0.5, seed=1).draw().tolist()
    assert len(ranks[0]) == len(ranks[1]) == 5
    assert list(ranks[0]) == whole[0::2] and list(ranks[1]) == whole[1::2]


def test_validation_indices_cover_each_subject_evenly(sample_dataset):
    all_ids = validation_indices(sample_dataset, None)
    assert all_ids == list(range(50))
    some = validation_indices(sample_dataset, 4)
    # 4 evenly spaced slices of each subject: 0, 9.7, 19.3, 29 of 30 and 0, 6.3, 12.7, 19 of 20
    assert some == [0, 10, 19, 29, 30, 36, 43, 49]


def test_partially_annotated_subject_keeps_its_annotation_mask(derived_sample, tmp_path):
    entry = open_cached(derived_sample, "s0002", tmp_path)
    # background + vertebrae_L1 (the stray pulmonary_artery is not v2)
    assert entry.annotated.sum() == 1 + 1
    config = RunConfig(DataConfig(data_root=str(derived_sample), cache_dir=str(tmp_path)))
    ds = SliceDataset(config, "val")
    assert ds.annotated.shape == (1, 118) and ds.annotated[0, LABEL_OF["vertebrae_L1"]]
    assert not ds.annotated[0, LABEL_OF["liver"]]  # liver has voxels in s0000: not a "no"
