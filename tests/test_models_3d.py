"""nnU-Net's 3D U-Nets in the registry: the package's own state dict key for key, rebuilt from a
checkpoint alone, deep supervision as the seed U-Net's, and the settings they refuse."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet
from dynamic_network_architectures.building_blocks.residual import BasicBlockD
from torch import nn

from ctseg_core.config import DataConfig, ModelConfig, RunConfig
from ctseg_core.errors import ConfigError
from ctseg_core.models import build_model, model_spec
from ctseg_core.models.checkpoint import load_checkpoint, load_model, save_checkpoint
from ctseg_core.models.head import init_output_bias
from ctseg_core.training.checks import check_run_config, registry_problems

torch.set_num_threads(1)

STRUCTURES = ["liver", "kidney_left", "kidney_right"]


def config_3d(name="plain_unet3d", patch=(32, 32, 16), context=1, **model) -> RunConfig:
    settings = {
        "features": [4, 8, 16],
        "strides": [1, 2, [2, 2, 1]],
        "kernel_sizes": [3, 3, [3, 3, 1]],
        "norm": "instance",
        **model,
    }
    return RunConfig(
        data=DataConfig(
            patch_size=patch,
            spacing_mm=(3.0, 3.0, 3.0),
            structures=STRUCTURES,
            context_slices=context,
        ),
        model=ModelConfig(name=name, **settings),
    )


def package_network(residual: bool) -> nn.Module:
    """The package's class, called directly as nnU-Net v2 calls it (4 output channels)."""
    common = dict(
        input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3], [3, 3, 3], [3, 3, 1]], strides=[[1, 1, 1], [2, 2, 2], [2, 2, 1]],
        num_classes=4, conv_bias=True, norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None, dropout_op_kwargs=None,
        nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, deep_supervision=False,
    )  # fmt: skip
    if residual:
        return ResidualEncoderUNet(
            **common, n_blocks_per_stage=[1, 3, 4], n_conv_per_stage_decoder=[1, 1],
            block=BasicBlockD,
        )  # fmt: skip
    return PlainConvUNet(**common, n_conv_per_stage=[2, 2, 2], n_conv_per_stage_decoder=[2, 2])


@pytest.mark.parametrize(("name", "residual"), [("plain_unet3d", False), ("resenc_unet3d", True)])
def test_registered_3d_network_has_the_packages_state_dict_key_for_key(name, residual):
    ours = build_model(config_3d(name).model).eval()
    theirs = package_network(residual).eval()
    ours_state, theirs_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(theirs_state)
    assert {k: v.shape for k, v in ours_state.items()} == {
        k: v.shape for k, v in theirs_state.items()
    }
    # the package's weights load into ours (and back), and give the same outputs
    ours.load_state_dict(theirs_state, strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)
    assert model_spec(name).spatial_dims == 3 and model_spec(name).inference == "patches"


def test_3d_network_rebuilt_from_its_checkpoint_alone(tmp_path):
    cfg = config_3d("resenc_unet3d", deep_supervision=1)
    torch.manual_seed(3)
    model = build_model(cfg.model)
    path = save_checkpoint(tmp_path / "best.pth", model, config=cfg, epoch=2)
    ckpt = load_checkpoint(path)  # torch.load(weights_only=True)
    assert ckpt["config"]["model"]["strides"] == [1, 2, [2, 2, 1]]
    assert ckpt["config"]["data"]["patch_size"] == (32, 32, 16)
    loaded, config = load_model(path)
    assert config.data.patch_size == (32, 32, 16) and config.data.spacing_mm == (3.0, 3.0, 3.0)
    assert config.model.kernel_sizes == [3, 3, [3, 3, 1]]
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_3d_deep_supervision_returns_the_used_levels_while_training_only():
    cfg = config_3d(deep_supervision=1)
    model = build_model(cfg.model).train()
    out = model(torch.randn(2, 1, 32, 32, 16))
    assert isinstance(out, tuple) and [tuple(o.shape) for o in out] == [
        (2, 4, 32, 32, 16),
        (2, 4, 16, 16, 8),
    ]
    assert model.eval()(torch.randn(1, 1, 32, 32, 16)).shape == (1, 4, 32, 32, 16)
    # the output prior reaches the full-resolution head and the deep-supervision one in use
    init_output_bias(model, torch.tensor([900.0, 90, 0, 10] + [0] * 114), torch.arange(118) % 4,
                     "softmax")  # fmt: skip
    for head in (model.head, *model.aux_heads):
        assert head.bias[0].item() == pytest.approx(torch.tensor(0.9).log().item(), abs=1e-6)
    assert len(model.aux_heads) == 1


def test_3d_model_refuses_a_patch_its_strides_cannot_divide_in_one_line():
    cfg = config_3d(patch=(32, 30, 16))
    problems = registry_problems(cfg)
    assert len(problems) == 1 and "\n" not in problems[0]
    assert "(32, 30, 16)" in problems[0] and "(4, 4, 2)" in problems[0]
    with pytest.raises(ConfigError, match=r"multiple of \(4, 4, 2\)"):
        check_run_config(cfg)
    assert registry_problems(config_3d(patch=(32, 32, 16))) == []


def test_3d_model_names_each_setting_it_cannot_take():
    no_patch = config_3d(patch=None)
    assert registry_problems(no_patch) == [
        "model plain_unet3d needs data.patch_size (x, y, z voxels), e.g. (96, 96, 96)"
    ]
    assert registry_problems(config_3d(context=3)) == [
        "a 3D model takes one channel: set context slices to 1 (got 3)"
    ]
    short = config_3d(strides=[1, 2])
    assert registry_problems(short) == [
        "model strides has 2 entries but the network has 3 stages (features [4, 8, 16]): give 3"
    ]
    deep = config_3d(deep_supervision=2)
    assert registry_problems(deep) == ["deep_supervision must be 0..1 for 3 stages (got 2)"]


def test_zero_spacing_or_a_flat_patch_refused_before_anything_starts():
    cfg = config_3d()
    cfg.data.spacing_mm = (3.0, 0.0, 3.0)
    cfg.data.patch_size = (32, 32)
    with pytest.raises(ConfigError) as info:
        cfg.validate()
    message = str(info.value)
    assert "spacing (3.0, 0.0, 3.0) mm must be three finite sizes > 0" in message
    assert "patch size (32, 32) must be three whole voxels" in message
    cfg.data.spacing_mm, cfg.data.patch_size = (math.inf, 4.0, 4.0), (32, 32, 32)
    with pytest.raises(ConfigError, match=r"spacing \(inf, 4.0, 4.0\) mm must be three finite"):
        cfg.validate()  # it passed, and a run folder was made before the volumes refused it


def test_configs_written_before_3d_models_load_unchanged():
    old = RunConfig().to_dict()
    for section, names in (
        ("data", ("patch_size", "spacing_mm")),
        ("model", ("kernel_sizes", "strides", "convs_per_stage", "decoder_convs_per_stage")),
    ):
        for name in names:
            del old[section][name]
    cfg = RunConfig.from_dict(old).validate()
    assert cfg.data.patch_size is None and cfg.model.strides is None
    assert cfg.to_dict()["model"]["features"] == [32, 64, 128, 256]
    back = RunConfig.from_dict(config_3d().to_dict())
    assert back.data.patch_size == (32, 32, 16) and back.data.spacing_mm == (3.0, 3.0, 3.0)


def _stored_as(t: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    """``t`` with its memory ordered by the axes ``order`` (outermost first), same values."""
    inverse = [order.index(axis) for axis in range(t.dim())]
    return t.permute(order).contiguous().permute(inverse)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("batch", [1, 2])
def test_kept_instance_norm_gradients_are_right_in_every_layout(dims, batch):
    """PyTorch 2.13's CPU instance norm gets one sample's gradients 140 % wrong when the
    gradient arrives channels last, and a batch's when the gradient interleaves its samples (a
    sequence-first head); its batch norm, one sample's whose input or gradient has a batch
    stride other than its size. The kept norms are right for every input and gradient layout,
    against the norm written out in float64."""
    from ctseg_core.models.nnunet import keep_channels_last

    torch.manual_seed(0)
    norm_type = nn.InstanceNorm3d if dims == 3 else nn.InstanceNorm2d
    last = torch.channels_last_3d if dims == 3 else torch.channels_last
    kept = keep_channels_last(nn.Sequential(norm_type(8, affine=True)))[0]
    assert type(kept) is not norm_type
    with torch.no_grad():
        kept.weight.normal_(), kept.bias.normal_()
    shape = (batch, 8, *(6, 5, 4)[:dims])
    x, grad = torch.randn(shape), torch.randn(shape)
    image = x.double().requires_grad_()
    weight, bias = (p.detach().double().requires_grad_() for p in (kept.weight, kept.bias))
    spatial, view = tuple(range(2, 2 + dims)), (1, -1) + (1,) * dims
    mean = image.mean(spatial, keepdim=True)
    var = ((image - mean) ** 2).mean(spatial, keepdim=True)
    want = (image - mean) / (var + kept.eps).sqrt() * weight.view(view) + bias.view(view)
    want.backward(grad.double())

    def odd_batch_stride(t):  # valid for one sample; x[None] makes such tensors
        return torch.empty_strided(shape, (8, *t.contiguous(memory_format=last).stride()[1:]))

    inputs = [x, x.contiguous(memory_format=last)] + ([odd_batch_stride(x).copy_(x)] * (batch == 1))
    grads = [grad, grad.contiguous(memory_format=last), _stored_as(grad, (*spatial, 0, 1))]
    grads += [odd_batch_stride(grad).copy_(grad)] * (batch == 1)
    for given, incoming in itertools.product(inputs, grads):
        sample = given.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        kept.zero_grad()
        out = kept(sample)
        out.backward(incoming)
        torch.testing.assert_close(out.double(), want.detach(), rtol=1e-5, atol=1e-5)
        for got, reference in ((sample, image), (kept.weight, weight), (kept.bias, bias)):
            torch.testing.assert_close(got.grad.double(), reference.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["plain_unet3d", "resenc_unet3d"])
def test_channels_last_instance_norm_keeps_the_layout_outputs_and_state_dict(name):
    """The norms swapped by keep_channels_last: same keys, same logits (float32), channels last."""
    from ctseg_core.models.nnunet import ChannelsLastInstanceNorm3d, keep_channels_last

    torch.manual_seed(0)
    cfg = config_3d(name)
    check_run_config(cfg)
    model = build_model(cfg.model).eval().to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 32, 32, 16).contiguous(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        expected, keys = model(x), list(model.state_dict())
        keep_channels_last(model)
        got = model(x)
        norms = [m for m in model.modules() if isinstance(m, nn.InstanceNorm3d)]
        assert norms and all(type(m) is ChannelsLastInstanceNorm3d for m in norms)
        assert list(model.state_dict()) == keys
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        # a layer keeps channels last, as PyTorch's own InstanceNorm3d does not
        y = norms[0](
            torch.randn(2, norms[0].num_features, 8, 8, 4).to(memory_format=torch.channels_last_3d)
        )
        assert y.is_contiguous(memory_format=torch.channels_last_3d)
        z = torch.randn(2, norms[0].num_features, 8, 8, 4)  # default layout: the parent's path
        torch.testing.assert_close(norms[0](z), nn.functional.instance_norm(
            z, weight=norms[0].weight, bias=norms[0].bias, eps=1e-5))  # fmt: skip
