"""A ctseg run started from an nnU-Net model folder (built with nnU-Net's own code): the network,
axes and CT normalisation are the model's, kept labels keep their output channels, a new one
starts fresh, and the run trains, resumes and is evaluated from the CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from nnunet_kit import INTENSITY, write_model_folder

from ctseg_core.cli import main
from ctseg_core.data.slices import normalize_hu
from ctseg_core.errors import ConfigError
from ctseg_core.models import build_model
from ctseg_core.models.checkpoint import load_checkpoint, load_model
from ctseg_core.nnunet.export import plans_json
from ctseg_core.nnunet.finetune import INIT_RECORD, finetune_changes, init_from_model
from ctseg_core.nnunet.folder import load_weights, read_model_folder
from ctseg_core.nnunet.plans import build_network, normalize
from ctseg_core.runs.run_folder import read_history
from ctseg_core.training.parts import build_parts
from ctseg_core.training.presets import user_config

pytest.importorskip("nnunetv2.utilities.get_network_from_plans")

#: spleen (model value 1) and liver (2) kept, kidney_left new; the model's aorta and my_tumour
#: are not trained
STRUCTURES = ["spleen", "liver", "kidney_left"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 3d_fullres PlainConvUNet (widths 4, 8, 16) on (z, y, x) patches of 16 x 32 x 24 at
    6 mm: network axis 0 is canonical z, so every kernel must be permuted."""
    root = tmp_path_factory.mktemp("nnunet")
    return write_model_folder(root, "3d_fullres", [6.0, 6.0, 6.0], [16, 32, 24], [0, 1, 2])


def _config(model_dir, phantom_root, cache, structures=STRUCTURES):
    changes = finetune_changes(model_dir) | {
        ("data", "data_root"): str(phantom_root), ("data", "cache_dir"): str(cache),
        ("data", "structures"): structures, ("data", "batch_size"): 2,
        ("train", "epochs"): 1, ("train", "steps_per_epoch"): 2, ("train", "amp"): "off",
        ("train", "sample_figure"): False,
    }  # fmt: skip
    return user_config({}, changes).validate()


def test_the_run_is_the_model_network_axes_and_normalisation(model_dir):
    """The ctseg network with the model's weights on a canonical (x, y, z) input fed [-1, 1] of
    the HU window computes nnU-Net's network on the (z, y, x) input with CTNormalization."""
    changes = finetune_changes(model_dir)
    assert changes["data", "patch_size"] == (24, 32, 16)  # (z, y, x) in the plans
    assert changes["data", "hu_window"] == (-990.0, 1400.0)
    assert changes["data", "hu_mean_std"] == (INTENSITY["mean"], INTENSITY["std"])
    assert changes["data", "padding"] == "normalised_zero"  # nnU-Net's 0 after normalising
    assert changes["data", "structures"] == ["spleen", "liver", "aorta"]  # my_tumour: no v2 name
    config = user_config({}, changes).validate()
    assert config.model.name == "plain_unet3d" and config.model.features == [4, 8, 16]
    model = build_model(config.model, config.data).eval()
    record = init_from_model(model, config)
    assert record["kept"] == {"background": 0, "spleen": 1, "liver": 2, "aorta": 3}
    assert record["fresh"] == [] and record["fold"] == "0"

    folder = read_model_folder(model_dir)
    reference = build_network(folder.config, 1, len(folder.labels))
    reference.load_state_dict(load_weights(folder.checkpoints[0])[0])
    rng = np.random.default_rng(0)
    hu_xyz = rng.uniform(-1200, 1600, (1, 24, 32, 16)).astype(np.float32)
    hu_zyx = np.ascontiguousarray(hu_xyz.transpose(0, 3, 2, 1))
    with torch.no_grad():
        want = reference(torch.from_numpy(normalize(hu_zyx.copy(), folder.config))[None])[0]
        got = model(normalize_hu(torch.from_numpy(hu_xyz), config.data.hu_window)[None])[0]
    want = want[:4].permute(0, 3, 2, 1)  # its channels 0..3: background, spleen, liver, aorta
    assert float((got - want).abs().max()) < 1e-4 * float(want.abs().max())


def test_a_finetuning_run_keeps_the_model_channels_trains_resumes_and_is_evaluated(
    model_dir, phantom_root, tmp_path, capsys
):
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    config = _config(model_dir, phantom_root, cache)
    torch.manual_seed(config.train.seed)
    parts = build_parts(config, None, 0, 1, lambda split: None)
    # on a CPU: instance norms as per-sample batch norms, one-patch convolutions split in two
    kinds = {type(m).__name__ for m in parts.model.modules()}
    assert {"ChannelsLastInstanceNorm3d", "SplitConv3d", "SplitConvTranspose3d"} <= kinds
    assert not kinds & {"InstanceNorm3d", "Conv3d", "ConvTranspose3d"}
    source, _ = load_weights(read_model_folder(model_dir).checkpoints[0])
    state = parts.model.state_dict()
    head = "decoder.seg_layers.1"  # full resolution (3 stages: two decoder levels)
    for channel, row in ((0, 0), (1, 1), (2, 2)):  # background, spleen, liver
        assert torch.equal(state[f"{head}.weight"][channel], source[f"{head}.weight"][row])
        assert state[f"{head}.bias"][channel] == source[f"{head}.bias"][row]
    first = "encoder.stages.0.0.convs.0.conv.weight"  # (O, I, z, y, x) -> (O, I, x, y, z)
    assert torch.equal(state[first], source[first].permute(0, 1, 4, 3, 2))
    # kidney_left is fresh: not any of the model's rows, its bias the class-frequency prior
    fresh = state[f"{head}.weight"][3]
    assert all(not torch.allclose(fresh, row) for row in source[f"{head}.weight"])
    counts = sum(s.voxel_counts for s in parts.train_set.subjects)
    per_class = np.bincount(parts.train_set.lut, weights=counts, minlength=4)
    prior = np.log(np.clip(per_class / per_class.sum(), 1e-6, 1 - 1e-6))
    assert float(state[f"{head}.bias"][3]) == pytest.approx(prior[3], rel=1e-5)

    base = ["train", "--init-from", str(model_dir), "--fold", "0", "--data", str(phantom_root),
            "--cache", str(cache), "--checkpoints", str(runs), "--run", "ft",
            "--structures", ",".join(STRUCTURES), "--batch-size", "2", "--epochs", "1",
            "--steps-per-epoch", "2", "--amp", "off", "--minutes", "0"]  # fmt: skip
    assert main(base) == 0, capsys.readouterr().err
    run = runs / "ft"
    record = json.loads((run / INIT_RECORD).read_text())
    checkpoint = model_dir / "fold_0" / "checkpoint_final.pth"
    assert record["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert record["kept"] == {"background": 0, "spleen": 1, "liver": 2}
    assert record["fresh"] == ["kidney_left"] and record["fold"] == "0"
    saved = load_checkpoint(run / "last.pth")["config"]
    assert saved["train"]["init_from"] == str(model_dir.resolve())
    assert tuple(saved["data"]["hu_mean_std"]) == (INTENSITY["mean"], INTENSITY["std"])
    assert saved["data"]["padding"] == "normalised_zero"

    resume = ["train", "--resume", str(run), "--epochs", "2"]
    assert main(resume) == 0, capsys.readouterr().err
    assert [r["epoch"] for r in read_history(run)] == [1, 2]
    assert np.isfinite(read_history(run)[-1]["train_loss"])
    model, loaded = load_model(run / "last.pth")  # the checkpoint alone gives the input map
    assert loaded.data.hu_mean_std == (INTENSITY["mean"], INTENSITY["std"])
    assert len(model._forward_pre_hooks) == 1
    # exported back to nnU-Net, the run's plans hold the model's normalisation
    intensity = plans_json(loaded, "Dataset998_Ft")["foreground_intensity_properties_per_channel"]
    assert (intensity["0"]["mean"], intensity["0"]["std"]) == (INTENSITY["mean"], INTENSITY["std"])

    argv = ["evaluate", "--data", str(phantom_root), "--split", "val", "--cache", str(cache),
            "--checkpoint", str(run / "best.pth"), "--no-report"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    table = pd.read_csv(run / "evaluation" / "evaluation_results_val.csv")
    assert set(table["structure"]) == set(STRUCTURES)
    assert table.dropna(subset=["dice"])["dice"].between(0, 1).all()


def test_a_three_stage_model_clamps_the_preset_deep_supervision(model_dir, tmp_path):
    """phantom_3d trains 2 extra heads; a 3-stage model (two decoder levels) has room for one:
    the fine-tune changes clamp it (the Train page and `ctseg train --init-from` both pass
    the base's), a 4-stage model keeps the preset's 2."""
    from ctseg_core.cli import build_parser
    from ctseg_core.cli.cmd_train import build_config
    from ctseg_core.training.checks import check_run_config
    from ctseg_core.training.presets import preset

    base = preset("phantom_3d")
    assert base.model.deep_supervision == 2
    changes = finetune_changes(model_dir, deep_supervision=2)
    assert changes["model", "deep_supervision"] == 1
    assert check_run_config(user_config(base, changes)).model.deep_supervision == 1
    args = build_parser().parse_args(["train", "--preset", "phantom_3d", "--init-from",
                                      str(model_dir)])  # fmt: skip
    assert check_run_config(build_config(args)).model.deep_supervision == 1
    four = write_model_folder(tmp_path, "3d_fullres", [6.0, 6.0, 6.0], [16, 32, 24], [0, 1, 2],
                              features=[4, 8, 16, 16])  # fmt: skip
    assert ("model", "deep_supervision") not in finetune_changes(four, deep_supervision=2)
    assert finetune_changes(four, deep_supervision=3)["model", "deep_supervision"] == 2


def test_a_2d_model_folder_is_refused_with_one_line(tmp_path):
    folder = write_model_folder(tmp_path, "2d", [3.0, 3.0], [32, 32], [0, 1, 2])
    with pytest.raises(ConfigError, match="is a 2d configuration; ctseg fine-tunes 3D models"):
        finetune_changes(folder)


@pytest.mark.parametrize(
    "key, value, said",
    [
        ("nonlin", "torch.nn.ReLU", "nonlin ReLU"),
        ("nonlin_kwargs", {"inplace": True, "negative_slope": 0.3}, "nonlin LeakyReLU"),
        ("norm_op_kwargs", {"eps": 0.1, "affine": True}, "norm_op_kwargs"),
        ("conv_bias", False, "conv_bias false"),
    ],
)
def test_a_model_whose_layers_differ_from_ctsegs_is_refused(tmp_path, key, value, said):
    """A plans' activation, norm epsilon or bias other than nnU-Net's defaults: ctseg's network
    would not compute the model's function (a LeakyReLU slope of 0.3 moved 27 % of the labels),
    so the fine-tune is refused in one line naming the setting."""
    folder = write_model_folder(tmp_path, "3d_fullres", [6.0, 6.0, 6.0], [16, 32, 24], [0, 1, 2])
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"][key] = value
    (folder / "plans.json").write_text(json.dumps(plans))
    with pytest.raises(ConfigError, match=f"plans.json: {said}.*would not compute"):
        finetune_changes(folder)


LOBES = ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
         "lung_middle_lobe_right", "lung_lower_lobe_right")  # fmt: skip


def test_a_merge_starts_from_the_model_member_rows_trains_and_is_evaluated(
    phantom_root, tmp_path, capsys
):
    """The model's five lobes (values 2..6) merged into "lungs": its output starts from their
    mean weight and the log-sum-exp of their biases; the run trains and is scored as lungs."""
    labels = {"background": 0, "liver": 1, **{name: i for i, name in enumerate(LOBES, 2)}}
    folder = write_model_folder(
        tmp_path / "model", "3d_fullres", [6.0, 6.0, 6.0], [16, 32, 24], [0, 1, 2], labels=labels
    )
    config = user_config({}, finetune_changes(folder) | {("data", "merge"): ["lungs"]}).validate()
    assert config.data.structures == ["liver", "lungs"] and config.model.out_channels == 3
    model = build_model(config.model, config.data)
    record = init_from_model(model, config)
    assert record["kept"] == {"background": 0, "liver": 1, "lungs": [2, 3, 4, 5, 6]}
    assert record["fresh"] == []
    source, _ = load_weights(read_model_folder(folder).checkpoints[0])
    state = model.state_dict()
    for head in ("decoder.seg_layers.0", "decoder.seg_layers.1"):
        weight, bias = source[f"{head}.weight"], source[f"{head}.bias"]
        assert torch.equal(state[f"{head}.weight"][1], weight[1])
        assert torch.allclose(state[f"{head}.weight"][2], weight[2:7].mean(0), atol=1e-7)
        lse = float(np.log(np.exp(bias[2:7].double().numpy()).sum()))
        assert float(state[f"{head}.bias"][2]) == pytest.approx(lse, abs=1e-6)

    runs, cache = tmp_path / "runs", tmp_path / "cache"
    argv = ["train", "--init-from", str(folder), "--merge", "lungs", "--data", str(phantom_root),
            "--cache", str(cache), "--checkpoints", str(runs), "--run", "ftm", "--batch-size",
            "2", "--epochs", "1", "--steps-per-epoch", "2", "--amp", "off", "--minutes", "0"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    run = runs / "ftm"
    assert json.loads((run / INIT_RECORD).read_text())["kept"]["lungs"] == [2, 3, 4, 5, 6]
    assert json.loads((run / "label_map.json").read_text())["2"] == "lungs"
    assert load_checkpoint(run / "last.pth")["config"]["data"]["structures"] == ["liver", "lungs"]
    argv = ["evaluate", "--data", str(phantom_root), "--split", "test", "--cache", str(cache),
            "--checkpoint", str(run / "last.pth"), "--no-report"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    table = pd.read_csv(run / "evaluation_last" / "evaluation_results_test.csv")
    assert set(table["structure"]) == {"liver", "lungs"}
    lungs = table[table["structure"] == "lungs"].iloc[0]
    assert lungs["ref_volume_ml"] > 0 and 0 <= lungs["dice"] <= 1
