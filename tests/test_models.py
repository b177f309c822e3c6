"""The U-Net registry, the run configuration and safe checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.errors import ConfigError, CtsegError
from ctseg_core.models import build_model
from ctseg_core.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from ctseg_core.training.checks import check_run_config
from ctseg_core.training.presets import user_config

TINY = {"features": [8, 16, 32, 64], "bottleneck": 64}


def tiny_config(**train) -> RunConfig:
    return RunConfig(
        DataConfig(target_size=(64, 64)), ModelConfig(**TINY), TrainConfig(**train), run_name="t"
    )


def test_seed_unet_has_the_notebook_shape_and_size():
    config = RunConfig()
    model = build_model(config.model)
    assert config.model.features == [32, 64, 128, 256] and config.model.bottleneck == 512
    out = model(torch.zeros(2, 1, 128, 128))
    assert out.shape == (2, 118, 128, 128)  # background + 117 structures (softmax default)
    # 4 encoder double-convs + bottleneck + 4 decoder double-convs + transposed convs + head
    assert sum(p.numel() for p in model.parameters()) == 7_766_326


@pytest.mark.parametrize("name", ["unet", "attention_unet"])
def test_variants_map_2p5d_input_to_per_structure_logits(name):
    config = RunConfig(
        DataConfig(context_slices=3, structures=["liver", "spleen"]),
        ModelConfig(name=name, output="sigmoid", **TINY),
        TrainConfig(loss="bce"),
    ).validate()
    assert (config.model.in_channels, config.model.out_channels) == (3, 2)
    model = build_model(config.model)
    assert model(torch.randn(1, 3, 32, 48)).shape == (1, 2, 32, 48)
    has_gates = any("gates" in k for k in model.state_dict())
    assert has_gates == (name == "attention_unet")


def test_output_mode_and_label_map_follow_the_loss():
    soft = RunConfig(DataConfig(structures=["spleen", "liver"]))
    assert soft.output_mode == "softmax" and soft.model.out_channels == 3
    assert soft.label_map() == {"0": "background", "1": "spleen", "2": "liver"}
    sig = user_config(soft, {("train", "loss"): "focal"})  # as the CLI and the Train page do
    assert sig.output_mode == "sigmoid" and sig.model.out_channels == 2
    assert sig.label_map() == {"0": "spleen", "1": "liver"}
    assert user_config(sig, {("train", "loss"): "dice_ce"}).model.out_channels == 3
    # a loss that trains another output than the model's is refused, naming the fix
    mismatched = RunConfig(DataConfig(structures=["spleen"]), train=TrainConfig(loss="bce"))
    with pytest.raises(ConfigError, match=r"loss 'bce' trains a sigmoid output .* 'softmax'"):
        check_run_config(mismatched)


def test_configs_written_before_model_output_existed_keep_their_output():
    old = user_config(RunConfig(DataConfig(structures=["spleen"])), {("train", "loss"): "bce"})
    d = old.to_dict()
    del d["model"]["output"]  # config.json and checkpoints had only the top-level output_mode
    assert d["output_mode"] == "sigmoid"
    assert RunConfig.from_dict(d) == old


def test_config_round_trips_through_json():
    config = tiny_config(lr=3e-4, scheduler="cosine")
    config.data.hu_window = (-200.0, 400.0)
    again = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.data.hu_window == (-200.0, 400.0)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda c: setattr(c.train, "lr", 0.0), "learning rate must be a number > 0"),
        (lambda c: setattr(c.data, "target_size", (100, 128)), "multiples of 16"),
        (lambda c: setattr(c.data, "context_slices", 2), "must be odd"),
        (lambda c: setattr(c.data, "structures", ["livre"]), "unknown structure"),
        (lambda c: setattr(c.train, "loss", "mse"), "loss 'mse'"),
        (lambda c: setattr(c.train, "checkpoint_every", -1), "checkpoint every must be >= 0"),
    ],
)
def test_invalid_settings_are_refused(change, fragment):
    config = RunConfig()
    change(config)
    with pytest.raises(ConfigError, match=fragment):
        check_run_config(config)


def test_explicit_channel_counts_must_fit_and_derived_ones_follow_the_data():
    with pytest.raises(ConfigError, match="does not fit a softmax output"):
        RunConfig(model=ModelConfig(out_channels=5)).validate()
    config = RunConfig()  # channel counts derived ...
    config.data.structures = ["liver", "spleen"]
    config.data.context_slices = 5
    config.validate()  # ... and derived again after the data settings changed
    assert (config.model.in_channels, config.model.out_channels) == (5, 3)


def test_unknown_keys_and_models_are_refused():
    with pytest.raises(ConfigError, match="unknown train setting"):
        RunConfig.from_dict({"train": {"learning_rate": 1}})
    with pytest.raises(ConfigError, match="unknown model"):
        build_model(ModelConfig(name="transformer", in_channels=1, out_channels=2))


def test_empty_split_is_refused_before_anything_starts(tmp_path):
    root = tmp_path / "data"
    for sid in ("a", "b"):
        (root / sid / "segmentations").mkdir(parents=True)
        (root / sid / "ct.nii.gz").write_bytes(b"")
    (root / "meta.csv").write_text("image_id;split\na;train\nb;train\n")
    config = tiny_config()
    config.data.data_root = str(root)
    with pytest.raises(ConfigError, match="split 'val'"):
        check_run_config(config, check_data=True)


def test_checkpoint_loads_weights_only_and_rebuilds_the_model_alone(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    model = build_model(config.model).eval()
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    optimizer.step()
    path = save_checkpoint(tmp_path / "best.pth", model, optimizer, None, 3, config, [{"epoch": 1}])
    raw = torch.load(path, weights_only=True)  # plain data only: no code runs on load
    assert raw["epoch"] == 3 and raw["config"]["model"]["features"] == TINY["features"]
    assert isinstance(raw["rng"]["torch"], torch.Tensor)
    rebuilt, rebuilt_config = load_model(path)
    assert rebuilt_config == config and not rebuilt.training
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    assert not list(tmp_path.glob(".tmp-*"))  # the atomic write left no temporary file


def test_a_config_asking_for_a_network_its_weights_do_not_hold_is_refused_unbuilt(tmp_path):
    """A few-KB file whose config asks for a 19 GB bottleneck (an upload on a shared server):
    sized on the meta device and refused before anything is allocated (it was built first,
    tens of GB; reviewer). Memory is measured in a child process (its own peak)."""
    config = tiny_config()
    path = save_checkpoint(tmp_path / "best.pth", build_model(config.model), config=config)
    huge = load_checkpoint(path)
    huge["config"]["model"].update(features=[2048, 4096, 8192, 16384], bottleneck=32768)
    huge["model"] = {}
    torch.save(huge, tmp_path / "huge.pth")
    assert (tmp_path / "huge.pth").stat().st_size < 64 * 1024
    code = (
        "import sys\n"
        "from ctseg_core.errors import CtsegError\n"
        "from ctseg_core.models.checkpoint import load_model\n"
        "try:\n"
        f"    load_model({str(tmp_path / 'huge.pth')!r})\n"
        "except CtsegError as exc:\n"
        "    print(exc)\n"
        # VmHWM: this process's own peak (ru_maxrss would keep the forked pytest's over exec)
        "print(next(int(line.split()[1]) // 1024 for line in open('/proc/self/status')\n"
        "           if line.startswith('VmHWM:')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    message, peak_mb = out.stdout.strip().splitlines()
    assert "huge.pth do not fit the model its config describes" in message
    assert "(32768, 16384, 3, 3) in the config, None in the file" in message
    assert int(peak_mb) < 1500  # the interpreter and torch, no network
    # a file whose weights are those of another shape is refused alike
    other = load_checkpoint(path)
    other["model"]["head.weight"] = other["model"]["head.weight"][:1]
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(CtsegError, match=r"other\.pth do not fit .*head\.weight"):
        load_model(tmp_path / "other.pth")


def test_corrupt_and_foreign_checkpoints_get_a_clear_error(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CtsegError, match=r"junk\.pth cannot be loaded safely"):
        load_checkpoint(tmp_path / "junk.pth")
    torch.save({"state_dict": {}}, tmp_path / "other.pth")
    with pytest.raises(CtsegError, match="not a ctseg checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
    torch.save(
        {"format": "ctseg-checkpoint", "model": {}, "x": CtsegError("code")}, tmp_path / "evil.pth"
    )
    with pytest.raises(CtsegError, match="objects other than tensors"):
        load_checkpoint(tmp_path / "evil.pth")
    with pytest.raises(CtsegError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth")


@pytest.mark.parametrize("start", [b"junk\n", b"(unk\n", b"Gunk\n", b"K<html>"])
def test_a_text_file_named_pth_gets_the_one_line_error_not_a_traceback(tmp_path, start):
    # torch's weights-only unpickler reads these first bytes as pickle opcodes and fails with
    # KeyError, IndexError or struct.error: a saved error page or a note named model.pth
    path = tmp_path / "model.pth"
    path.write_bytes(start)
    with pytest.raises(CtsegError, match=r"model\.pth cannot be loaded safely"):
        load_checkpoint(path)


def test_deep_supervision_heads_train_at_lower_resolutions_and_vanish_in_eval(tmp_path):
    torch.manual_seed(0)
    config = tiny_config()
    config.model.deep_supervision = 2
    model = build_model(config.validate().model)
    outputs = model(torch.randn(2, 1, 64, 64))  # training mode: full, 1/2 and 1/4 resolution
    assert [tuple(o.shape) for o in outputs] == [
        (2, 118, 64, 64),
        (2, 118, 32, 32),
        (2, 118, 16, 16),
    ]
    path = save_checkpoint(tmp_path / "best.pth", model, None, None, 1, config, [])
    rebuilt, _ = load_model(path)  # eval mode: the plain model's single output
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))
    config.model.deep_supervision = 4  # no decoder level below the bottleneck to supervise
    with pytest.raises(ConfigError, match=r"deep_supervision must be 0\.\.3"):
        config.validate()


def test_checkpoints_say_version_2_and_version_1_files_still_load(tmp_path):
    """Version 2 holds model.output; an older ctseg is told to upgrade instead of failing on an
    unknown setting, and files of version 1 (no model.output) still load here."""
    config = RunConfig(DataConfig(structures=["liver"], target_size=(32, 32)), ModelConfig(**TINY))
    config.validate()
    model = build_model(config.model)
    path = save_checkpoint(
        tmp_path / "new.pth", model, torch.optim.Adam(model.parameters()), None, 1, config, []
    )
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["version"] == 2 and ckpt["config"]["model"]["output"] == "softmax"
    ckpt["version"] = 1
    del ckpt["config"]["model"]["output"]  # as version 1 wrote it: output_mode only
    torch.save(ckpt, tmp_path / "old.pth")
    _, old = load_model(tmp_path / "old.pth")
    assert old.model.output == "softmax" and old == config


def test_every_unknown_name_is_named_at_once():
    """user_config leaves an unknown loss to the full check, which names every problem."""
    config = user_config(
        RunConfig(),
        {("train", "loss"): "xyz", ("train", "optimizer"): "nadam", ("model", "name"): "vnet"},
    )
    with pytest.raises(ConfigError) as exc:
        check_run_config(config)
    for fragment in ("model 'vnet'", "loss 'xyz'", "optimizer 'nadam'"):
        assert fragment in str(exc.value)


def test_the_cli_parser_is_built_without_torch():
    """The registries import torch: --help and every other command must not wait for it."""
    code = "import sys; from ctseg_core.cli import build_parser; build_parser(); print(sorted(m for m in ('torch', 'ctseg_core.training.losses') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
