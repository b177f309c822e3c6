"""The volumetric path end to end on the phantom: patch training, whole-volume validation,
stop and resume, and the 3D checkpoint evaluated from the CLI and the dashboard."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ctseg_core.cli import main
from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.data.patches import PatchDataset
from ctseg_core.data.slices import normalize_hu
from ctseg_core.errors import CtsegError
from ctseg_core.labels import LABEL_OF
from ctseg_core.models.checkpoint import load_checkpoint, load_model
from ctseg_core.runs.run_folder import read_history, read_status
from ctseg_core.training.losses import build_loss
from ctseg_core.training.presets import preset
from ctseg_core.training.trainer import Trainer
from ctseg_core.training.validation_volumes import VolumeValidation, axis_tiles, volume_tiles

FEW = ["liver", "spleen", "kidney_left", "kidney_right", "aorta", "urinary_bladder"]


def tiny_3d(root, run_name: str = "", cache=None, **train) -> RunConfig:
    """nnU-Net's PlainConvUNet, 3 stages of 8..32, on 32 x 32 x 16 patches at 6 mm: an epoch of
    2 steps and the whole-volume validation takes about a second."""
    settings = {"epochs": 2, "steps_per_epoch": 2, "amp": "off", "sample_figure": False} | train
    return RunConfig(
        DataConfig(
            data_root=str(root),
            cache_dir=str(cache) if cache else None,
            structures=FEW,
            batch_size=2,
            foreground_fraction=1 / 3,
            patch_size=(32, 32, 16),
            spacing_mm=(6.0, 6.0, 6.0),
        ),
        ModelConfig(name="plain_unet3d", features=[8, 16, 32], norm="instance", deep_supervision=1),
        TrainConfig(lr=3e-3, scheduler="cosine", **settings),
        run_name=run_name,
    ).validate()


def test_tiles_score_every_voxel_once_and_cover_short_axes_with_padding():
    for size, patch in [(100, 32), (64, 32), (20, 32), (33, 32), (32, 32)]:
        tiles = axis_tiles(size, patch)
        owned = np.zeros(size, int)
        for start, lo, hi, pad in tiles:
            assert 0 <= lo < hi <= patch
            owned[start + lo - pad : start + hi - pad] += 1
            # a short axis is centred in its one window, as the sliding window pads it
            assert pad == (max(0, patch - size) // 2) and (size >= patch or len(tiles) == 1)
        assert (owned == 1).all(), (size, patch, tiles)
    tiles = volume_tiles(0, (40, 20, 70), (32, 32, 16))
    assert len(tiles) == 2 * 1 * 5
    assert {t.real[1] for t in tiles} == {20} and {t.real[0] for t in tiles} == {32}


def test_volume_validation_dice_is_that_of_the_whole_volume(phantom_root, tmp_path):
    """A per-voxel model (a 1x1x1 convolution): cut into tiles or not, its prediction is the
    same, so the tiled validation must give the Dice of the whole resampled volumes."""
    config = tiny_3d(phantom_root, cache=tmp_path / "cache")
    config.data.patch_size = (24, 24, 32)  # z longer than the volumes: padded, not scored
    dataset = PatchDataset(config, "val")
    assert any(s.shape_xyz[2] < 32 for s in dataset.subjects)
    k = len(FEW) + 1
    torch.manual_seed(0)
    model = torch.nn.Conv3d(1, k, 1)
    with torch.no_grad():  # each class wins a band of intensities
        model.weight.copy_(torch.linspace(-6, 6, k).view(k, 1, 1, 1, 1))
        model.bias.copy_(torch.randn(k))
    keep = [(i, subject.shape_xyz[2] // 2) for i, subject in enumerate(dataset.subjects)]
    validation = VolumeValidation(dataset, config, keep=keep)
    metrics = validation.run(
        model, build_loss("dice_ce"), torch.device("cpu"), torch.autocast("cpu", enabled=False),
        channels_last=False,
    )  # fmt: skip
    values = np.array([0] + [LABEL_OF[n] for n in FEW])
    tp = np.zeros(len(FEW)), np.zeros(len(FEW)), np.zeros(len(FEW))
    tp, fp, fn = tp
    for subject in dataset.subjects:
        from ctseg_core.data.slices import normalize_hu

        x = normalize_hu(torch.from_numpy(np.array(subject.ct)), config.data.hu_window)
        with torch.no_grad():
            pred = values[model(x[None, None]).argmax(1)[0].numpy()]
        i_subject, z = next(k for k in keep if dataset.subjects[k[0]] is subject)
        np.testing.assert_array_equal(validation.kept[(i_subject, z)], pred[:, :, z])  # figure
        ref = np.array(subject.labels)
        ref = np.where(np.isin(ref, values), ref, 0)
        for i, name in enumerate(FEW):
            v = LABEL_OF[name]
            tp[i] += ((ref == v) & (pred == v)).sum()
            fp[i] += ((ref != v) & (pred == v)).sum()
            fn[i] += ((ref == v) & (pred != v)).sum()
    for i, name in enumerate(FEW):
        if tp[i] + fn[i] == 0:
            assert metrics["val_dice"][name] is None
        else:
            expected = 2 * tp[i] / (2 * tp[i] + fp[i] + fn[i])
            assert metrics["val_dice"][name] == pytest.approx(expected, abs=1e-12), name
    assert 0 < metrics["val_dice_mean"] < 1 and np.isfinite(metrics["val_loss"])


def test_validation_tiles_pad_with_the_runs_padding(phantom_root, tmp_path):
    """z longer than the volumes: each tile holds the volume's normalised voxels in the middle
    (as the sliding window centres them) and the run's padding around them (air: -1,
    nnU-Net's: 0)."""
    config = tiny_3d(phantom_root, cache=tmp_path / "cache")
    config.data.patch_size = (24, 24, 32)
    for padding, pad in (("air", -1.0), ("normalised_zero", 0.0)):
        config.data.padding = padding
        dataset = PatchDataset(config, "val")
        validation = VolumeValidation(dataset, config)
        tiles = validation.tiles[:3]
        image, labels = validation._batch(tiles)
        for b, tile in enumerate(tiles):
            volume = dataset.subjects[tile.subject]
            depth = volume.shape_xyz[2]
            assert depth < 32 and tile.real[2] == depth
            z0 = (32 - depth) // 2
            assert tile.pad == (0, 0, z0) and z0 > 0
            (x0, x1), (y0, y1) = ((s, s + 24) for s in tile.start[:2])
            ct = torch.from_numpy(np.array(volume.ct[x0:x1, y0:y1]))
            inside = image[b, 0, :, :, z0 : z0 + depth]
            assert torch.equal(inside, normalize_hu(ct, config.data.hu_window))
            reference = torch.from_numpy(np.array(volume.labels[x0:x1, y0:y1]))
            assert torch.equal(labels[b, :, :, z0 : z0 + depth], reference)
            outside = torch.ones(32, dtype=torch.bool)
            outside[z0 : z0 + depth] = False
            assert (image[b, 0, :, :, outside] == pad).all()
            assert (labels[b, :, :, outside] == 0).all()


def test_a_3d_run_trains_stops_resumes_and_repeats_an_uninterrupted_one(phantom_root, tmp_path):
    cache = tmp_path / "cache"
    whole = Trainer(tiny_3d(phantom_root, "whole", cache, epochs=3, sample_figure=True),
                    checkpoints_root=tmp_path)  # fmt: skip
    assert whole.run() == "finished"
    run = tmp_path / "whole"
    history = read_history(run)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    # 4 patches per epoch: too few to leave background; the numbers are checked by the test above
    assert all(0 <= r["val_dice_mean"] < 1 and r["train_slices"] == 4 for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert set(history[-1]["val_dice"]) == set(FEW)
    assert (run / "samples" / "epoch_3.png").stat().st_size > 10_000
    # patches at a spacing: the field of view does not scale what a 3D model sees
    record = json.loads((run / "training_data.json").read_text())
    assert "slice_field_of_view_mm" not in record
    assert min(record["extent_mm"]["min"]) > 0  # its CTs' extent: a much smaller CT is said
    # the network comes back from the checkpoint alone (weights_only), the package's own keys
    model, config = load_model(run / "best.pth")
    assert type(model).__mro__[2].__name__ == "PlainConvUNet"
    assert config.data.patch_size == (32, 32, 16) and config.data.spacing_mm == (6.0, 6.0, 6.0)
    assert model(torch.zeros(1, 1, 32, 32, 16)).shape == (1, len(FEW) + 1, 32, 32, 16)

    def interrupt(p) -> None:  # Ctrl-C in the second epoch
        if p.kind == "step" and p.epoch == 2:
            raise KeyboardInterrupt

    config = tiny_3d(phantom_root, "part", cache, epochs=3, sample_figure=True)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, checkpoints_root=tmp_path, callbacks=[interrupt]).run()
    assert read_status(tmp_path / "part")["state"] == "stopped"
    assert load_checkpoint(tmp_path / "part" / "last.pth")["epoch"] == 1
    assert Trainer.resume(tmp_path / "part").run() == "finished"
    resumed = read_history(tmp_path / "part")
    for a, b in zip(history, resumed, strict=True):
        for key in ("train_loss", "val_loss", "val_dice_mean", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["epoch"], key)


def test_the_cli_trains_a_3d_preset_and_evaluates_its_checkpoint(phantom_root, tmp_path, capsys):
    ckpts, cache = tmp_path / "runs", tmp_path / "cache"
    args = ["train", "--preset", "phantom_3d", "--data", str(phantom_root), "--cache", str(cache),
            "--checkpoints", str(ckpts), "--run", "p3", "--patch-size", "32", "32", "16",
            "--spacing", "6", "6", "6", "--features", "8", "16", "32", "--deep-supervision", "1",
            "--epochs", "1", "--steps-per-epoch", "1", "--minutes", "0", "--amp", "off",
            "--structures", ",".join(FEW)]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    config = load_checkpoint(ckpts / "p3" / "best.pth")["config"]
    assert (
        config["model"]["name"] == "plain_unet3d" and config["data"]["padding"] == "normalised_zero"
    )
    assert tuple(config["data"]["patch_size"]) == (32, 32, 16)
    argv = ["evaluate", "--data", str(phantom_root), "--split", "val", "--cache", str(cache),
            "--checkpoint", str(ckpts / "p3" / "best.pth"), "--no-report"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    table = pd.read_csv(ckpts / "p3" / "evaluation" / "evaluation_results_val.csv")
    assert set(table["structure"]) <= set(FEW) and len(table) > 0
    # a structure absent from the reference is NaN (left out of means), the others are scored
    scored = table.dropna(subset=["dice"])
    assert len(scored) >= 4 and scored["dice"].between(0, 1).all()
    # bad 3D settings are named before anything starts
    bad = [*args[:-4], "--patch-size", "30", "32", "16", "--run", "bad"]
    assert main(bad) == 2
    assert "patch size (30, 32, 16) cannot pass the network's strides" in capsys.readouterr().err


def test_presets_for_3d_validate_and_name_their_network():
    for name, spacing in (("phantom_3d", 4.0), ("gpu_3d", 1.5)):
        config = preset(name, "/data").validate()
        assert config.model.name == "plain_unet3d" and config.data.spacing_mm == (spacing,) * 3
        assert config.data.padding == "normalised_zero"  # nnU-Net's, so its export agrees
        old = config.to_dict()
        del old["data"]["padding"]  # a config.json written before the setting: air, as trained
        assert RunConfig.from_dict(old).data.padding == "air"
        assert config.model.norm == "instance" and config.model.deep_supervision >= 2


@pytest.mark.parametrize("amx", [True, False])
def test_phantom_3d_is_twice_as_wide_where_the_cpu_has_amx(monkeypatch, amx):
    from ctseg_core import device

    flags = frozenset({"avx512_bf16", "amx_bf16"} if amx else {"avx2", "fma"})
    monkeypatch.setattr(device, "_cpu_flags", lambda: flags)
    config = preset("phantom_3d", "/data").validate()
    widths = [32, 64, 128, 256, 320] if amx else [16, 32, 64, 128, 256]
    assert config.model.features == widths and config.model.convs_per_stage == [1] * 5
    assert device.cpu_has_bf16() is amx


def test_new_features_stretch_the_presets_one_convolution_per_stage(tmp_path):
    """phantom_3d holds one convolution per stage for its five stages: --features with four
    stages keeps one per stage (it was refused with a fix no flag can give); a list that
    differs from stage to stage is not guessed at but named."""
    from ctseg_core.cli import build_parser
    from ctseg_core.cli.cmd_train import build_config
    from ctseg_core.errors import ConfigError
    from ctseg_core.models import build_model
    from ctseg_core.training.checks import check_run_config

    base = ["train", "--data", "/data", "--preset", "phantom_3d"]
    config = build_config(build_parser().parse_args([*base, "--features", "8", "16", "32", "64"]))
    check_run_config(config)
    assert config.model.convs_per_stage == [1, 1, 1, 1]
    assert config.model.decoder_convs_per_stage == [1, 1, 1]
    model = build_model(config.model)
    assert len(model.encoder.stages) == 4 and len(model.decoder.stages) == 3
    assert all(len(stage[-1].convs) == 1 for stage in model.encoder.stages)  # one conv each
    # a config whose list differs per stage keeps it, and the mismatch is named
    uneven = preset("phantom_3d").to_dict()
    uneven["model"]["convs_per_stage"] = [1, 2, 2, 2, 2]
    path = tmp_path / "uneven.json"
    path.write_text(json.dumps(uneven), encoding="utf-8")
    args = build_parser().parse_args(["train", "--data", "/data", "--config", str(path),
                                      "--features", "8", "16", "32", "64"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"convs_per_stage has 5 entries .* 4 stages"):
        check_run_config(build_config(args))


def test_another_3d_model_on_phantom_3d_takes_its_own_blocks_per_stage():
    """phantom_3d's one convolution per stage was kept when the residual encoder was picked
    (Train page or --model): it built 1 block per stage (5.1 M parameters) where nnU-Net's
    ResEnc has 1, 3, 4, 6, 6 (28 M), and gpu_3d's did not. Lists given with it are kept."""
    from ctseg_core.models import build_model
    from ctseg_core.models.nnunet import architecture
    from ctseg_core.training.presets import user_config

    config = user_config(preset("phantom_3d"), {("model", "name"): "resenc_unet3d"})
    assert architecture(config.model, residual=True).convs == (1, 3, 4, 6, 6)
    assert architecture(config.model, residual=True).decoder_convs == (1, 1, 1, 1)
    assert sum(p.numel() for p in build_model(config.model).parameters()) > 20e6
    given = user_config(
        preset("phantom_3d"),
        {("model", "name"): "resenc_unet3d", ("model", "convs_per_stage"): [1, 2, 2, 2, 2]},
    )
    assert given.model.convs_per_stage == [1, 2, 2, 2, 2]
    same = user_config(preset("phantom_3d"), {("train", "lr"): 1e-3})
    assert same.model.convs_per_stage == [1, 1, 1, 1, 1]  # the preset's own network keeps them
    # a partial config that names no model keeps its lists whatever model the user picks
    partial = {"model": {"features": [16, 32, 64, 128, 256], "convs_per_stage": [1] * 5,
                         "decoder_convs_per_stage": [1] * 4}}  # fmt: skip
    named = user_config(partial, {("model", "name"): "plain_unet3d"})
    assert named.model.convs_per_stage == [1] * 5
    assert named.model.decoder_convs_per_stage == [1] * 4


def test_the_cli_padding_flag_sets_the_padding_and_a_bad_one_is_refused(capsys):
    from ctseg_core.cli import build_parser
    from ctseg_core.cli.cmd_train import build_config

    parser = build_parser()
    base = ["train", "--data", "/data", "--model", "plain_unet3d", "--patch-size", "32", "32",
            "16", "--spacing", "3", "3", "3"]  # fmt: skip
    assert build_config(parser.parse_args(base)).data.padding == "air"  # the field's default
    zero = build_config(parser.parse_args([*base, "--padding", "normalised_zero"]))
    assert zero.data.padding == "normalised_zero"
    air = build_config(parser.parse_args([*base, "--preset", "phantom_3d", "--padding", "air"]))
    assert air.data.padding == "air"  # the flag wins over the preset's
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--padding", "zero"])
    assert "invalid choice: 'zero' (choose from" in capsys.readouterr().err


def test_a_3d_run_that_cannot_fit_in_memory_is_refused_before_the_cache_is_built(
    phantom_root, tmp_path
):
    config = tiny_3d(phantom_root, "huge", tmp_path / "cache")
    config.data.patch_size, config.data.batch_size = (1024, 1024, 512), 8
    with pytest.raises(CtsegError, match=r"needs about [\d.]+ GB for one training step"):
        Trainer(config, checkpoints_root=tmp_path).run()
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "huge").exists()  # no run folder either (it was left "failed")
