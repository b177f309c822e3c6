"""Whole-CT prediction: grids and affines, batching, 2.5D context, TTA left/right safety, ensembles,
memory refusal, atomic outputs. Quality is not tested here (the models are untrained or rules)."""

from __future__ import annotations

import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ctseg_core.config import DataConfig, ModelConfig, RunConfig
from ctseg_core.data.volume import load_ct
from ctseg_core.errors import ConfigError, CtsegError
from ctseg_core.inference.files import predict_file
from ctseg_core.inference.label_files import read_slicer_ctbl
from ctseg_core.inference.predictor import Predictor, predict_volume
from ctseg_core.labels import LABEL_OF
from ctseg_core.models import register
from ctseg_core.models.checkpoint import save_checkpoint

torch.set_num_threads(1)

THRESHOLD_HU = 150.5  # never equal to an integer HU, so no ties


class ThresholdNet(nn.Module):
    """A rule, not a learned model: the single structure wherever the centre slice > 150.5 HU.

    Input (B, C, H, W) normalised with the (-1000, 1000) window (HU / 1000); softmax output
    (B, 2, H, W): background 0, structure (centre - 0.1505) * 50.
    """

    def __init__(self, threshold_hu: float = THRESHOLD_HU):
        super().__init__()
        self.threshold = threshold_hu / 1000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        return torch.cat([torch.zeros_like(centre), (centre - self.threshold) * 50], dim=1)


class SideNet(nn.Module):
    """Labels by image position only: kidney_left in the first half of H, kidney_right after.

    Output channels (softmax): background, kidney_right, kidney_left (the config's order).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        first_half = (torch.arange(h) < h // 2).float().view(1, h, 1).expand(b, h, w)
        left = 10 * first_half - 5
        return torch.stack([torch.zeros_like(left), -left, left], dim=1)


register("test_threshold")(lambda cfg: ThresholdNet())
register("test_threshold_300")(lambda cfg: ThresholdNet(300.5))


class LeftHalfNet(nn.Module):
    """kidney_left in the first half of H, nothing after (softmax: background, kidney_left)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        left = (10 * (torch.arange(h) < h // 2).float() - 5).view(1, h, 1).expand(b, h, w)
        return torch.stack([torch.zeros_like(left), left], dim=1)


class DilateNet(ThresholdNet):
    """ThresholdNet over each pixel's 3 x 3 neighbourhood (the structure grown by a pixel): a
    rule with a receptive field, so a pass sees what lies beside each pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centre = x[:, x.shape[1] // 2 : x.shape[1] // 2 + 1]
        grown = F.max_pool2d(centre, 3, stride=1, padding=1)
        return torch.cat([torch.zeros_like(grown), (grown - self.threshold) * 50], dim=1)


register("test_dilate")(lambda cfg: DilateNet())
register("test_side")(lambda cfg: SideNet())
register("test_left_half")(lambda cfg: LeftHalfNet())


def make_checkpoint(
    path, structures, name="unet", target=(64, 64), context=1, mirror=False, seed=0, output=None
):
    cfg = RunConfig(
        data=DataConfig(
            target_size=target, context_slices=context, structures=list(structures), mirror=mirror
        ),
        model=ModelConfig(name=name, features=[8, 16], bottleneck=16),
    )
    if output is not None:
        cfg.model.output = output
        cfg.model.out_channels = cfg.expected_out_channels
    torch.manual_seed(seed)
    from ctseg_core.models import build_model

    save_checkpoint(path, build_model(cfg.model), config=cfg)
    return path


@pytest.fixture(scope="module")
def unlabeled_ct(shared_extra):
    """A real 122 x 101 x 112 CT at 3 mm stored as int32 voxels (../shared, optional)."""
    return shared_extra / "unlabeled_ct_3mm.nii.gz"


@pytest.fixture(scope="module")
def s0000_ct(s0000_root):
    """A real 122 x 101 x 30 CT at 3 mm, int16 voxels (tests/data)."""
    return s0000_root / "s0000" / "ct.nii.gz"


def _fresh_model_writes_labels_on_the_ct_grid_and_affine(tmp_path, ct_path, shape):
    ckpt = make_checkpoint(tmp_path / "m.pth", ["liver", "spleen", "kidney_left", "aorta"])
    out = tmp_path / "out" / "pred.nii.gz"
    summary = predict_file(ct_path, [ckpt], out, split_masks=True)
    src, img = nib.load(str(ct_path)), nib.load(str(out))
    assert np.asarray(src.dataobj).dtype == np.int32  # the input is int32 voxels
    assert img.shape == src.shape == shape
    np.testing.assert_allclose(img.affine, src.affine, atol=1e-5)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.uint8 and data.max() <= 117
    assert set(np.unique(data)) <= {0, LABEL_OF["liver"], LABEL_OF["spleen"],
                                    LABEL_OF["kidney_left"], LABEL_OF["aorta"]}  # fmt: skip
    names = {e.name for e in read_slicer_ctbl(tmp_path / "out" / "pred.ctbl")}
    assert names == {"background", "liver", "spleen", "kidney_left", "aorta"}
    masks = sorted(p.name for p in (tmp_path / "out" / "pred" / "segmentations").iterdir())
    assert masks == ["aorta.nii.gz", "kidney_left.nii.gz", "liver.nii.gz", "spleen.nii.gz"]
    liver = nib.load(str(tmp_path / "out" / "pred" / "segmentations" / "liver.nii.gz"))
    np.testing.assert_array_equal(np.asarray(liver.dataobj), data == LABEL_OF["liver"])
    assert summary["shape"] == list(shape) and summary["orientation"] == "RAS"


def test_fresh_model_writes_labels_on_the_ct_grid_and_affine(tmp_path, int32_ct):
    """s0000's CT stored as int32 voxels."""
    _fresh_model_writes_labels_on_the_ct_grid_and_affine(tmp_path, int32_ct, (122, 101, 30))


def test_fresh_model_labels_the_real_unlabeled_ct_on_its_grid(tmp_path, unlabeled_ct):
    """The real unlabeled int32 CT of ../shared (optional, skipped without it)."""
    _fresh_model_writes_labels_on_the_ct_grid_and_affine(tmp_path, unlabeled_ct, (122, 101, 112))


def _threshold_rule_on_a_flipped_axis_ct(tmp_path, ct_path, target, voxel_ml):
    ckpt = make_checkpoint(tmp_path / "t.pth", ["vertebrae_T8"], "test_threshold", target, 3)
    out = tmp_path / "t.nii.gz"
    summary = predict_file(ct_path, [ckpt], out, batch_slices=7, statistics=True)
    hu = np.asarray(nib.load(str(ct_path)).dataobj)
    expected = np.where(hu > THRESHOLD_HU, LABEL_OF["vertebrae_T8"], 0)
    got = np.asarray(nib.load(str(out)).dataobj)
    np.testing.assert_array_equal(got, expected)
    import pandas as pd

    stats = pd.read_csv(tmp_path / "t_statistics.csv")
    assert summary["statistics"] == str(tmp_path / "t_statistics.csv")
    assert stats["structure"].tolist() == ["vertebrae_T8"]
    above = hu[hu > THRESHOLD_HU].astype(float)
    assert stats.loc[0, "volume_ml"] == pytest.approx(above.size * voxel_ml)
    assert stats.loc[0, "mean_hu"] == pytest.approx(above.mean())
    return expected


def test_threshold_rule_lands_on_the_right_voxels_of_a_flipped_axis_ct(tmp_path, derived_sample):
    # the derived s0001 is stored LAS (x flipped): the labels must come back on the file's own
    # voxel order; its bone is not symmetric, so a label mirrored in x would not match
    ct_path = derived_sample / "s0001" / "ct.nii.gz"
    expected = _threshold_rule_on_a_flipped_axis_ct(
        tmp_path, ct_path, (122, 101), 1.5 * 2 * 2.5 / 1000
    )
    assert (expected > 0).sum() > 1000
    assert not np.array_equal(expected, expected[::-1])


def test_threshold_rule_on_the_real_512_las_ct(tmp_path, sample_root):
    """The real s0001 of ../shared, stored LAS (optional, skipped without it)."""
    ct_path = sample_root / "s0001" / "ct.nii.gz"
    expected = _threshold_rule_on_a_flipped_axis_ct(
        tmp_path, ct_path, (512, 512), 0.9765625**2 * 2 / 1000
    )
    assert (expected > 0).sum() > 10_000


def test_batches_and_resizing_give_the_same_labels_whatever_the_batch_size(tmp_path, s0000_ct):
    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (64, 64), 3)
    ct = load_ct(s0000_ct)
    one = predict_volume(ct, [ckpt], batch_slices=1)
    many = predict_volume(ct, [ckpt], batch_slices=5)
    np.testing.assert_array_equal(one, many)
    # Resized to 64 x 64 and back, the rule still agrees with the CT on most voxels.
    direct = ct.array > THRESHOLD_HU
    agree = np.mean((one == LABEL_OF["liver"]) == direct)
    assert 0.97 < agree < 1.0


def test_context_slices_feed_the_centre_slice(tmp_path, s0000_ct):
    ct = load_ct(s0000_ct)
    single = make_checkpoint(tmp_path / "c1.pth", ["liver"], "test_threshold", (122, 101), 1)
    stacked = make_checkpoint(tmp_path / "c5.pth", ["liver"], "test_threshold", (122, 101), 5)
    np.testing.assert_array_equal(
        predict_volume(ct, [single], batch_slices=3), predict_volume(ct, [stacked], batch_slices=3)
    )


def test_mirror_tta_swaps_left_and_right_labels(tmp_path, s0000_ct):
    ct = load_ct(s0000_ct)
    ckpt = make_checkpoint(tmp_path / "s.pth", ["kidney_right", "kidney_left"], "test_side",
                           (122, 101), mirror=True)  # fmt: skip
    predictor = Predictor([ckpt], tta=True)
    assert predictor.strategy.augmentations(predictor.members[0]) == ["identity", "mirror"]
    plain = predict_volume(ct, [ckpt])
    with_tta = predictor.predict(ct)
    np.testing.assert_array_equal(with_tta, plain)
    assert (plain[:61] == LABEL_OF["kidney_left"]).all()
    assert (plain[61:] == LABEL_OF["kidney_right"]).all()


def test_a_mirror_trained_model_lacking_a_partner_gets_shift_tta(tmp_path, s0000_ct):
    """kidney_left without kidney_right: a mirrored pass would read kidney_left from its
    partner's missing channel (probability 0) and background would win the average; the
    shifted passes keep the kidney."""
    ckpt = make_checkpoint(tmp_path / "l.pth", ["kidney_left"], "test_left_half", (122, 101),
                           mirror=True)  # fmt: skip
    predictor = Predictor([ckpt], tta=True)
    assert predictor.strategy.augmentations(predictor.members[0]) == [
        "identity", "shift0", "shift1",
    ]  # fmt: skip
    labels = predictor.predict(load_ct(s0000_ct))
    # rows 59-62: the shifted passes move the rule's half 2 rows either way and vote there
    assert (labels[:59] == LABEL_OF["kidney_left"]).all() and (labels[63:] == 0).all()


def test_a_mirror_trained_model_of_the_lung_lobes_gets_shift_tta(tmp_path):
    """lung_middle_lobe_right has no partner: training never mirrors a slice holding it, and
    a mirrored pass scored it ~0 (its Dice 0.72 -> 0.06 on a trained phantom model), so such a
    model takes the shifted passes."""
    lobes = ["lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
             "lung_middle_lobe_right", "lung_lower_lobe_right"]  # fmt: skip
    ckpt = make_checkpoint(tmp_path / "lobes.pth", lobes, mirror=True)
    predictor = Predictor([ckpt], tta=True)
    assert predictor.strategy.augmentations(predictor.members[0]) == [
        "identity", "shift0", "shift1",
    ]  # fmt: skip


def test_models_trained_without_mirroring_get_shift_tta(tmp_path, s0000_ct):
    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (122, 101))
    predictor = Predictor([ckpt], tta=True)
    assert "mirror" not in predictor.strategy.augmentations(predictor.members[0])
    ct = load_ct(s0000_ct)
    np.testing.assert_array_equal(predictor.predict(ct), predict_volume(ct, [ckpt]))


def test_shift_tta_moves_the_slice_without_wrapping_the_far_edge_in(tmp_path):
    """The shifted passes rolled the slice: bone along one edge came in at the opposite edge,
    and with two of three passes seeing it there, air two pixels from that edge was labelled.
    A pass now sees each pixel where it lies or not at all, so a rule that only looks at a
    pixel's neighbours labels the same with and without TTA."""
    data = np.full((32, 32, 3), -1000, np.int16)
    data[-3:, :, :] = 1000  # bone along the last rows in x, air everywhere else
    path = tmp_path / "edge.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0])), path)
    ct = load_ct(path)
    ckpt = make_checkpoint(tmp_path / "d.pth", ["liver"], "test_dilate", (32, 32))
    predictor = Predictor([ckpt], tta=True)
    assert predictor.strategy.augmentations(predictor.members[0])[1:] == ["shift0", "shift1"]
    plain = predict_volume(ct, [ckpt])
    assert (plain[-4:] == LABEL_OF["liver"]).all() and (plain[:-4] == 0).all()  # grown by 1
    np.testing.assert_array_equal(predictor.predict(ct), plain)


def test_ensemble_averages_probabilities(tmp_path, s0000_ct):
    # Two rules at 150.5 and 300.5 HU: the mean of their two sigmoids passes 0.5 exactly at the
    # midpoint, 225.5 HU (sigmoid(a) + sigmoid(b) > 1 <=> a + b > 0).
    ct = load_ct(s0000_ct)
    a = make_checkpoint(tmp_path / "a.pth", ["liver"], "test_threshold", (122, 101))
    b = make_checkpoint(tmp_path / "b.pth", ["liver"], "test_threshold_300", (122, 101))
    both = predict_volume(ct, [a, b], batch_slices=16)
    expected = np.where(ct.array > 225.5, LABEL_OF["liver"], 0)
    np.testing.assert_array_equal(both, expected)


def test_ensemble_members_of_different_sizes_agree_where_the_members_agree(tmp_path, s0000_ct):
    ct = load_ct(s0000_ct)
    a = make_checkpoint(tmp_path / "a.pth", ["liver"], "test_threshold", (122, 101))
    b = make_checkpoint(tmp_path / "b.pth", ["liver"], "test_threshold", (64, 64), 3)
    both = predict_volume(ct, [a, b])
    only_a, only_b = predict_volume(ct, [a]), predict_volume(ct, [b])
    same = only_a == only_b
    assert same.mean() > 0.97
    # b's scores pass through the 122 x 101 working size first: a few boundary voxels may move.
    assert np.mean(both[same] == only_a[same]) > 0.9999


def test_2d_ensemble_members_with_more_tta_passes_count_alike(tmp_path, s0000_ct):
    """A mirror-trained member (2 passes) and one without mirroring (3, shifted): the
    ensemble's slice scores are the mean of each member's own average (it once averaged the
    5 passes, so the member with 3 counted for 3/5)."""
    ct = load_ct(s0000_ct).array
    structures = ["kidney_left", "kidney_right", "liver"]
    a = make_checkpoint(tmp_path / "a.pth", structures, mirror=True)
    b = make_checkpoint(tmp_path / "b.pth", structures, seed=1)
    zs = [10, 11, 12]
    scores = {}
    for name, members in (("a", [a]), ("b", [b]), ("ab", [a, b])):
        predictor = Predictor(members, device="cpu", tta=True)
        scores[name] = predictor.strategy._batch_scores(ct, zs)
    alone = [Predictor([m], device="cpu", tta=True) for m in (a, b)]
    assert [len(p.strategy.augmentations(p.members[0])) for p in alone] == [2, 3]
    assert (scores["a"] - scores["b"]).abs().max() > 1e-3
    torch.testing.assert_close(scores["ab"], (scores["a"] + scores["b"]) / 2, rtol=1e-5, atol=1e-6)


def test_ensemble_members_may_list_their_structures_in_any_order(tmp_path, s0000_ct):
    """Scores are read by label value: the same structures in another order ensemble alike
    (they were refused as "other structures"). ``b`` is ``c`` with its output rows swapped to
    match its order: the same function by label value, so the same ensemble with ``a``."""
    from ctseg_core.models.checkpoint import load_checkpoint

    ct = load_ct(s0000_ct)
    a = make_checkpoint(tmp_path / "a.pth", ["liver", "spleen"], seed=1)
    c = make_checkpoint(tmp_path / "c.pth", ["liver", "spleen"], seed=2)
    b = make_checkpoint(tmp_path / "b.pth", ["spleen", "liver"], seed=2)
    for path in (a, c):  # untrained: sharpen the head so that every label wins somewhere
        saved = load_checkpoint(path)
        saved["model"]["head.weight"] *= 50
        saved["model"]["head.bias"].zero_()
        torch.save(saved, path)
    saved = load_checkpoint(b)
    weights = load_checkpoint(c)["model"]
    for key in ("head.weight", "head.bias"):  # channel 0 background, 1 and 2 swapped
        weights[key] = weights[key][[0, 2, 1]]
    saved["model"] = weights
    torch.save(saved, b)
    both = Predictor([a, b], device="cpu").predict(ct)
    expected = Predictor([a, c], device="cpu").predict(ct)
    np.testing.assert_array_equal(both, expected)
    assert len(np.unique(expected)) == 3  # background, liver and spleen all win somewhere


def test_ensemble_of_softmax_and_sigmoid_members_is_refused(tmp_path):
    """A softmax's probabilities share one sum and a sigmoid's are each voted at 0.5: their
    mean was taken silently."""
    a = make_checkpoint(tmp_path / "a.pth", ["liver", "spleen"])
    b = make_checkpoint(tmp_path / "b.pth", ["liver", "spleen"], output="sigmoid")
    assert Predictor([b, b]).members[1].config.output_mode == "sigmoid"
    with pytest.raises(ConfigError, match=r"b\.pth outputs sigmoid scores and .*a\.pth softmax"):
        Predictor([a, b])


def test_ensemble_of_different_structures_is_refused(tmp_path):
    a = make_checkpoint(tmp_path / "a.pth", ["liver"])
    b = make_checkpoint(tmp_path / "b.pth", ["spleen"])
    with pytest.raises(ConfigError, match="same structures"):
        Predictor([a, b])


def test_ct_too_large_for_memory_is_refused_with_size_and_limit(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.pth", ["liver"])
    huge = np.broadcast_to(np.int16(0), (4096, 4096, 3000))  # 100 GB of voxels, no memory used
    with pytest.raises(
        CtsegError, match=r"4096 x 4096 x 3000 voxels needs about [\d.]+ GB.* GB memory limit"
    ):
        predict_volume(huge, [ckpt])  # type: ignore[arg-type]


def test_predict_file_refuses_before_reading_when_over_the_limit(tmp_path, s0000_ct):
    ckpt = make_checkpoint(tmp_path / "m.pth", ["liver"])
    out = tmp_path / "p.nii.gz"
    with pytest.raises(CtsegError, match=r"122 x 101 x 30 voxels.*0\.0 GB memory limit"):
        predict_file(s0000_ct, [ckpt], out, memory_limit_bytes=1 << 20)
    assert not any(tmp_path.glob("p*"))


def test_batch_is_lowered_before_refusing(tmp_path):
    ckpt = make_checkpoint(tmp_path / "m.pth", ["liver"], target=(256, 256))
    predictor = Predictor([ckpt], batch_slices=16)
    shape = (512, 512, 300)
    limit = predictor.estimate_bytes(shape, 4) + 1
    assert predictor.check_memory(shape, limit) == 4


def test_on_a_gpu_the_batch_fits_its_free_memory_or_the_ct_is_refused(tmp_path):
    """``device_limit_bytes`` stands in for a GPU's free memory: the batch is lowered to fit
    it, and a CT that does not fit even one slice at a time is refused in one line."""
    ckpt = make_checkpoint(tmp_path / "m.pth", ["liver"], target=(256, 256))
    predictor = Predictor([ckpt], device="cpu", batch_slices=16)
    shape, host = (512, 512, 300), 10**13
    on_gpu = predictor.strategy.device_bytes(shape, 4)
    assert on_gpu < predictor.estimate_bytes(shape, 4) - 512 * 512 * 300 * 6  # the CT stays
    assert predictor.check_memory(shape, host, None, on_gpu) == 4
    with pytest.raises(CtsegError, match=r"^a CT of 512 x 512 x 300 voxels needs about 0\.\d GB "
                       r"of cpu memory, more than the 0\.\d GB it can spare now; free the GPU, "
                       r"or predict on the CPU \(--device cpu\)$"):  # fmt: skip
        predictor.check_memory(shape, host, None, predictor.strategy.device_bytes(shape, 1) - 1)


def test_existing_outputs_are_kept_unless_overwrite_and_never_half_written(tmp_path, s0000_ct):
    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (64, 64))
    out = tmp_path / "p.nii.gz"
    out.write_bytes(b"user data")
    with pytest.raises(ConfigError, match="exists; pass --overwrite"):
        predict_file(s0000_ct, [ckpt], out)
    assert out.read_bytes() == b"user data"

    def interrupt(done, total, info):
        if done > 20:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_file(s0000_ct, [ckpt], out, overwrite=True, progress=interrupt, batch_slices=4)
    assert out.read_bytes() == b"user data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.nii.gz", "t.pth"]
    predict_file(s0000_ct, [ckpt], out, overwrite=True)
    assert nib.load(str(out)).shape == (122, 101, 30)


def test_outputs_never_replace_the_inputs_or_a_folder_of_other_files(tmp_path, s0000_ct):
    """Even with overwrite: an output onto the CT, or --split-masks over a subject folder."""
    import shutil

    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (64, 64))
    ct = tmp_path / "mine.nii.gz"
    shutil.copy(s0000_ct, ct)
    before = ct.read_bytes()
    with pytest.raises(ConfigError, match="holds the input"):
        predict_file(ct, [ckpt], ct, overwrite=True)
    subject = tmp_path / "s0000"
    (subject / "segmentations").mkdir(parents=True)
    shutil.copy(s0000_ct, subject / "ct.nii.gz")  # the dataset layout: the CT in the folder
    with pytest.raises(ConfigError, match="holds the input"):
        predict_file(subject / "ct.nii.gz", [ckpt], tmp_path / "s0000.nii.gz", split_masks=True,
                     overwrite=True)  # fmt: skip
    other = tmp_path / "other"
    (other / "segmentations").mkdir(parents=True)
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"holds notes\.txt"):
        predict_file(ct, [ckpt], tmp_path / "other.nii.gz", split_masks=True, overwrite=True)
    assert ct.read_bytes() == before and (subject / "ct.nii.gz").is_file()
    assert (other / "notes.txt").read_text() == "mine"
    # a folder of masks a --split-masks run wrote is replaced, as asked
    predict_file(ct, [ckpt], tmp_path / "p.nii.gz", split_masks=True)
    predict_file(ct, [ckpt], tmp_path / "p.nii.gz", split_masks=True, overwrite=True)
    assert [f.name for f in (tmp_path / "p" / "segmentations").iterdir()] == ["liver.nii.gz"]


def _listing(folder):
    """{relative path: bytes} of every file under ``folder`` (hidden ones included)."""
    return {
        str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()
    }


def test_overwrite_removes_the_earlier_predictions_outputs_it_does_not_write(tmp_path, s0000_ct):
    """--overwrite replaces the earlier prediction: its masks and statistics, which this run
    does not write, described the earlier labels and are removed, and the summary says so;
    what is not as ctseg writes it (the user's) is left, with a word; without --overwrite an
    earlier prediction's output is refused as OUT.nii.gz is."""
    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (64, 64))
    out = tmp_path / "p" / "p.nii.gz"
    predict_file(s0000_ct, [ckpt], out, split_masks=True, statistics=True)
    folder = out.parent
    assert sorted(_listing(folder)) == ["p.ctbl", "p.nii.gz", "p/segmentations/liver.nii.gz",
                                        "p_itksnap_labels.txt", "p_statistics.csv"]  # fmt: skip
    summary = predict_file(s0000_ct, [ckpt], out, overwrite=True)
    assert sorted(_listing(folder)) == ["p.ctbl", "p.nii.gz", "p_itksnap_labels.txt"]
    assert any("removed p_statistics.csv, p/ beside p.nii.gz" in w for w in summary["warnings"])

    predict_file(s0000_ct, [ckpt], out, split_masks=True, statistics=True, overwrite=True)
    mine = folder / "p" / "segmentations" / "my_tumour.nii.gz"  # not a name ctseg writes
    mine.write_bytes(b"mine")
    (folder / "p_statistics.csv").write_text("my,own\n1,2\n")
    summary = predict_file(s0000_ct, [ckpt], out, overwrite=True)
    assert (
        mine.read_bytes() == b"mine"
        and (folder / "p_statistics.csv").read_text() == "my,own\n1,2\n"
    )
    left = [w for w in summary["warnings"] if "is left as it is" in w]
    assert len(left) == 2 and not any("removed" in w for w in summary["warnings"])

    mine.unlink()
    predict_file(s0000_ct, [ckpt], out, split_masks=True, statistics=True, overwrite=True)
    for name in ("p.nii.gz", "p.ctbl", "p_itksnap_labels.txt"):  # masks, statistics left
        (folder / name).unlink()
    with pytest.raises(ConfigError, match=r"p_statistics\.csv exists, an earlier prediction's"):
        predict_file(s0000_ct, [ckpt], out)
    assert (folder / "p" / "segmentations" / "liver.nii.gz").is_file() and not out.exists()
    # masks with no label table of ctseg's naming them (a dataset's references look so): left
    (folder / "p_statistics.csv").unlink()
    summary = predict_file(s0000_ct, [ckpt], out)
    assert (folder / "p" / "segmentations" / "liver.nii.gz").is_file()
    assert any(w.startswith(f"{folder / 'p'} is left as it is") for w in summary["warnings"])


def test_a_failure_while_writing_leaves_the_earlier_outputs_whole(tmp_path, s0000_ct, monkeypatch):
    """A full disk while writing the label files (after the labels and masks), or a rename that
    fails while swapping the set in: the earlier prediction's files stay, all of them and
    byte for byte, no temporary is left, and the error says what happened."""
    import errno
    from pathlib import Path

    import ctseg_core.inference.label_files as label_files

    liver = make_checkpoint(tmp_path / "liver.pth", ["liver"], "test_threshold", (64, 64))
    bone = make_checkpoint(tmp_path / "bone.pth", ["spleen"], "test_threshold_300", (64, 64))
    out = tmp_path / "p" / "p.nii.gz"
    predict_file(s0000_ct, [liver], out, split_masks=True, statistics=True)
    before = _listing(out.parent)

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    with monkeypatch.context() as patch:
        patch.setattr(label_files, "atomic_write_text", full)
        with pytest.raises(CtsegError, match=r"No space left on device.*nothing was replaced"):
            predict_file(s0000_ct, [bone], out, split_masks=True, overwrite=True)
    assert _listing(out.parent) == before

    rename = Path.rename

    def failing(self, target):
        if self.name.startswith(".tmp-") and str(target).endswith(".ctbl"):
            raise OSError(errno.EIO, "Input/output error", str(self))
        return rename(self, target)

    with monkeypatch.context() as patch:
        patch.setattr(Path, "rename", failing)
        with pytest.raises(CtsegError, match=r"Input/output error.*earlier outputs were put back"):
            predict_file(s0000_ct, [bone], out, split_masks=True, overwrite=True)
    assert _listing(out.parent) == before
    summary = predict_file(s0000_ct, [bone], out, split_masks=True, overwrite=True)
    assert [e.name for e in read_slicer_ctbl(summary["label_files"][0])] == ["background", "spleen"]
    assert sorted(_listing(out.parent)) == ["p.ctbl", "p.nii.gz", "p/segmentations/spleen.nii.gz",
                                            "p_itksnap_labels.txt"]  # fmt: skip


def test_a_file_that_is_no_ct_in_hounsfield_units_gets_a_warning(tmp_path, s0000_ct, s0000_root):
    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (64, 64))
    real = predict_file(s0000_ct, [ckpt], tmp_path / "ct.nii.gz")
    assert not any("Hounsfield" in w for w in real["warnings"])
    mask = s0000_root / "s0000" / "segmentations" / "liver.nii.gz"
    summary = predict_file(mask, [ckpt], tmp_path / "mask.nii.gz")
    assert any("values 0..1, which do not look like Hounsfield" in w for w in summary["warnings"])


def test_cli_stats_refuses_to_overwrite_and_predict_errors_fit_one_line(
    tmp_path, extra_dir, capsys
):
    from ctseg_core.cli import main

    labels = extra_dir / "s0000_totalsegmentator_multilabel.nii.gz"
    ct = extra_dir.parent / "totalseg_sample" / "s0000" / "ct.nii.gz"
    before = ct.read_bytes()
    assert main(["stats", "--ct", str(ct), "--labels", str(labels), "--out", str(ct)]) == 2
    assert "must end with .csv" in capsys.readouterr().err
    table = tmp_path / "t.csv"
    table.write_text("mine")
    assert main(["stats", "--ct", str(ct), "--labels", str(labels), "--out", str(table)]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err and table.read_text() == "mine"
    assert ct.read_bytes() == before
    assert main(["stats", "--ct", str(ct), "--labels", str(labels), "--out", str(table),
                 "--overwrite"]) == 0  # fmt: skip
    assert table.read_text().startswith("structure") and "liver" in table.read_text()
    capsys.readouterr()
    mask = ct.parent / "segmentations" / "liver.nii.gz"
    assert main(["stats", "--ct", str(ct), "--labels", str(mask)]) == 0
    assert "holds only 0 and 1" in capsys.readouterr().err
    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (64, 64))
    if not torch.cuda.is_available():
        args = ["predict", "--ct", str(ct), "--checkpoint", str(ckpt), "--out",
                str(tmp_path / "p.nii.gz"), "--device", "cuda"]  # fmt: skip
        assert main(args) == 2
        err = capsys.readouterr().err
        assert "no CUDA GPU is available" in err and "Traceback" not in err
    (tmp_path / "afile").write_text("x")
    assert main(["export", "--labels", str(labels), "--out", str(tmp_path / "afile")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_the_cli_says_a_warning_once(tmp_path, s0000_root):
    """`ctseg predict` printed each warning twice: as a log line and as a note."""
    import os
    import subprocess
    import sys

    from ctseg_core.models import build_model

    cfg = RunConfig(data=DataConfig(target_size=(64, 64), structures=["liver"]),
                    model=ModelConfig(features=[4, 8], bottleneck=8)).validate()  # fmt: skip
    phantom = {"version": 1, "source": "phantom", "data_root": "/elsewhere"}
    ckpt = save_checkpoint(tmp_path / "m.pth", build_model(cfg.model), config=cfg,
                           training_data=phantom)  # fmt: skip
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "ctseg_core", "predict", "--ct", str(s0000_root / "s0000" /
         "ct.nii.gz"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "p.nii.gz")],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    printed = done.stdout + done.stderr
    assert printed.count("was trained on the synthetic phantom only") == 1, printed


def test_export_keeps_merge_names_and_replaces_label_files_only_when_told(tmp_path, capsys):
    """`ctseg export` over `ctseg predict`'s label files renamed a merged run's lungs as its
    first lobe (evaluate then scored the lungs as one lobe) and replaced them unasked."""
    from ctseg_core.cli import main
    from ctseg_core.inference.label_files import learned_values, write_label_files
    from ctseg_core.labels import names_of

    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    labels[0], labels[1] = LABEL_OF["lung_upper_lobe_left"], LABEL_OF["liver"]  # 10: "lungs"
    path = tmp_path / "p.nii.gz"
    nib.save(nib.Nifti1Image(labels, np.eye(4)), path)
    write_label_files(path, [10, LABEL_OF["liver"]], names_of(["lungs"]), learned=True)
    argv = ["export", "--labels", str(path), "--out", str(tmp_path)]
    assert main(argv) == 2
    assert f"{tmp_path / 'p.ctbl'} exists; add --overwrite" in capsys.readouterr().err
    write_label_files(
        path, [10, LABEL_OF["liver"], LABEL_OF["spleen"]], names_of(["lungs"]), learned=True
    )  # fmt: skip (the model learns the spleen, none found)
    assert main([*argv, "--overwrite"]) == 0
    ctbl = {e.value: e.name for e in read_slicer_ctbl(tmp_path / "p.ctbl")}
    assert ctbl == {0: "background", 10: "lungs", LABEL_OF["liver"]: "liver",
                    LABEL_OF["spleen"]: "spleen"}  # fmt: skip
    # what the model learns stays said (evaluate scores a folder by it)
    assert learned_values(path) == {10, LABEL_OF["liver"], LABEL_OF["spleen"]}
    assert main(["export", "--labels", str(path), "--out", str(tmp_path / "elsewhere")]) == 0
    assert {e.name for e in read_slicer_ctbl(tmp_path / "elsewhere" / "p.ctbl")} >= {"lungs"}


def _dicom_folder_gives_the_grid_of_the_nifti(tmp_path, series, nifti, shape, spacing):
    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (128, 128))
    out = tmp_path / "d.nii.gz"
    summary = predict_file(series, [ckpt], out)
    reference = load_ct(nifti)
    written = nib.load(str(out))
    assert written.shape == reference.original_shape == shape
    from ctseg_core.data.volume import to_canonical

    labels, affine = to_canonical(np.asarray(written.dataobj), written.affine)
    np.testing.assert_allclose(affine, reference.affine, atol=1e-4)  # same voxels in space
    assert labels.shape == reference.array.shape
    assert summary["spacing_mm"] == pytest.approx(spacing, abs=1e-4)


def test_dicom_folder_gives_the_grid_of_the_converted_nifti(
    tmp_path, derived_sample, derived_dicom
):
    """A DICOM series of the derived s0001 (LAS NIfTI; LPS slices of 101 rows x 122 columns)."""
    nifti = derived_sample / "s0001" / "ct.nii.gz"
    _dicom_folder_gives_the_grid_of_the_nifti(
        tmp_path, derived_dicom, nifti, (122, 101, 20), [1.5, 2.0, 2.5]
    )


def test_real_dicom_folder_gives_the_grid_of_its_nifti(tmp_path, sample_root, shared_extra):
    """The real scanner series of ../shared (optional, skipped without it)."""
    nifti = sample_root / "s0001" / "ct.nii.gz"
    _dicom_folder_gives_the_grid_of_the_nifti(
        tmp_path, shared_extra / "dicom_s0001", nifti, (512, 512, 20), [0.9766, 0.9766, 2.0]
    )


def _two_series_read_the_largest(tmp_path, series, shape) -> tuple:
    import pydicom

    folder = tmp_path / "mixed"
    folder.mkdir()
    files = sorted(series.iterdir())
    for path in files:
        (folder / path.name).write_bytes(path.read_bytes())
    for i, path in enumerate(files[:3]):  # a second, 3-slice series (e.g. a scout)
        ds = pydicom.dcmread(str(path))
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{i}"
        ds.save_as(str(folder / f"other_{i}.dcm"))
    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (128, 128))
    summary = predict_file(folder, [ckpt], tmp_path / "m.nii.gz")
    assert nib.load(str(tmp_path / "m.nii.gz")).shape == shape
    assert len(summary["warnings"]) == 1
    assert "holds 2 series; reading the largest" in summary["warnings"][0]
    assert f"({len(files)} files)" in summary["warnings"][0]
    assert "(3 files)" in summary["warnings"][0]
    return folder, ckpt


def test_real_dicom_folder_with_two_series_reads_the_largest(tmp_path, shared_extra):
    """The real scanner series of ../shared (optional, skipped without it)."""
    _two_series_read_the_largest(tmp_path, shared_extra / "dicom_s0001", (512, 512, 20))


def test_dicom_folder_with_two_series_reads_the_largest_and_says_so(
    tmp_path, derived_dicom, capsys
):
    from ctseg_core.cli import main

    assert len(list(derived_dicom.iterdir())) == 20
    folder, ckpt = _two_series_read_the_largest(tmp_path, derived_dicom, (122, 101, 20))
    argv = [
        "predict",
        "--ct",
        str(folder),
        "--checkpoint",
        str(ckpt),
        "--out",
        str(tmp_path / "c.nii.gz"),
    ]
    assert main(argv) == 0
    assert "note: " in capsys.readouterr().out


def test_the_summary_gives_shape_and_spacing_along_the_files_own_axes(tmp_path):
    """A file stored S, L, P at 3, 1 and 2 mm: the summary's shape, spacing and orientation all
    follow the file's axes (its spacing was the RAS order's, 1, 2, 3)."""
    data = np.full((10, 30, 20), -1000, dtype=np.int16)
    data[3:7, 10:20, 5:15] = 400
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 3.0, -1.0, -2.0, 1.0
    path = tmp_path / "slp.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    ckpt = make_checkpoint(tmp_path / "t.pth", ["liver"], "test_threshold", (64, 64))
    summary = predict_file(path, [ckpt], tmp_path / "out.nii.gz")
    assert summary["orientation"] == "SLP"
    assert summary["shape"] == [10, 30, 20] and summary["spacing_mm"] == [3.0, 1.0, 2.0]


def test_predict_says_which_test_time_passes_it_ran(tmp_path, s0000_ct, capsys):
    """``--tta`` is the mirror for a model trained with it, else shifted copies: said on the
    command line and in --json (it said only "tta": true)."""
    import json

    from ctseg_core.cli import main

    pair = ["kidney_left", "kidney_right"]
    mirrored = make_checkpoint(tmp_path / "m.pth", pair, mirror=True)
    plain = make_checkpoint(tmp_path / "p.pth", pair)
    assert main(["predict", "--ct", str(s0000_ct), "--checkpoint", str(mirrored), "--out",
                 str(tmp_path / "a.nii.gz"), "--tta", "--device", "cpu"]) == 0  # fmt: skip
    assert "test-time passes: the left/right mirror (labels swapped)\n" in capsys.readouterr().out
    argv = ["predict", "--ct", str(s0000_ct), "--checkpoint", str(plain), "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "b.nii.gz"), "--tta", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tta_passes"] == {str(plain): ["shift0", "shift1"]}
    assert main([*argv, "--out", str(tmp_path / "c.nii.gz")]) == 0
    assert "test-time passes" not in capsys.readouterr().out


def test_statistics_of_a_ct_without_a_voxel_size_are_refused(tmp_path, s0000_ct, capsys):
    """A NIfTI with pixdim 0 along an axis and no sform is read at 1 mm there (said): labels
    on its grid are still right, volumes in ml would be made up: --statistics and ``ctseg
    stats`` refuse them in one line, before any work (they wrote them, 3x too small here)."""
    from ctseg_core.cli import main

    img = nib.load(s0000_ct)
    header = img.header.copy()
    header.set_sform(None, code=0)
    zero = nib.Nifti1Image(np.asanyarray(img.dataobj), None, header)
    zero.header.set_qform(img.affine, code=1)
    zero.header["pixdim"][3] = 0.0
    ct = tmp_path / "zero.nii.gz"
    nib.save(zero, ct)
    ckpt = make_checkpoint(tmp_path / "m.pth", ["liver"])
    line = (
        f"{ct} gives no voxel size along z (pixdim 0): volumes in ml would be made up; write "
        "the real voxel size into the file, or "
    )
    with pytest.raises(ConfigError, match="^" + re.escape(line + "predict without --statistics")):
        predict_file(ct, [ckpt], tmp_path / "p.nii.gz", statistics=True)
    assert not any(tmp_path.glob("p*"))
    summary = predict_file(ct, [ckpt], tmp_path / "p.nii.gz")  # the labels: with a note
    assert any("1 mm was assumed along z" in w for w in summary["warnings"])
    assert main(["stats", "--ct", str(ct), "--labels", str(tmp_path / "p.nii.gz")]) == 2
    assert capsys.readouterr().err == f"error: {line}use a CT that does\n"
    assert main(["stats", "--ct", str(s0000_ct), "--labels", str(tmp_path / "p.nii.gz")]) == 0


def test_stats_of_labels_elsewhere_say_they_miss_the_ct(tmp_path, s0000_ct, capsys):
    """``ctseg stats`` compares labels with the CT: said so (it said "its reference")."""
    from ctseg_core.cli import main

    img = nib.load(s0000_ct)
    labels = np.zeros(img.shape, dtype=np.uint8)
    labels[40:60, 40:60, 10:20] = LABEL_OF["liver"]
    moved = img.affine.copy()
    moved[:3, 3] += 10_000.0  # ten metres away
    nib.save(nib.Nifti1Image(labels, moved), tmp_path / "far.nii.gz")
    assert main(["stats", "--ct", str(s0000_ct), "--labels", str(tmp_path / "far.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: far.nii.gz does not overlap its CT in world coordinates")
