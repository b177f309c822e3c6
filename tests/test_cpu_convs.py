"""One-sample 3D convolutions split in two for oneDNN (ctseg_core.models.cpu_convs)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn
from torch.profiler import profile

from ctseg_core.models import build_model
from ctseg_core.models.cpu_convs import (
    SplitConv3d,
    SplitConvTranspose3d,
    split_single_sample_convs,
)
from ctseg_core.models.nnunet import keep_channels_last
from ctseg_core.training.losses import build_loss, deep_supervision_loss
from ctseg_core.training.presets import preset

CL = torch.channels_last_3d


def _assert_close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to float32 rounding: sums over thousands of voxels in another order differ by
    ~1e-6 of the largest value (a weight gradient sums over every output voxel)."""
    torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-5 * float(want.abs().max()))


def _forward_backward(layer: nn.Module, x: torch.Tensor, seed: int = 0):
    """The output and the gradients of (input, weight, bias) for a random upstream gradient."""
    x = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    y.backward(g)
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


@pytest.mark.parametrize(
    "channels, shape, kwargs",
    [
        ((32, 64), (24, 24, 16), dict(kernel_size=3, padding=1)),
        ((32, 64), (24, 24, 16), dict(kernel_size=3, padding=1, stride=2)),
        ((1, 16), (20, 22, 16), dict(kernel_size=3, padding=1)),  # the first layer
        ((16, 8), (10, 12, 6), dict(kernel_size=3, padding=2, dilation=2)),
        ((16, 118), (12, 12, 8), dict(kernel_size=1)),  # a segmentation head
        ((8, 8), (9, 10, 6), dict(kernel_size=3, padding=1, stride=2)),  # 5 output rows: odd
        ((8, 8), (12, 12, 8), dict(kernel_size=(3, 1, 3), padding=(1, 0, 1), stride=(2, 1, 1))),
    ],
)
@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_split_convolution_equals_the_layer_forward_and_backward(channels, shape, kwargs, layout):
    torch.manual_seed(0)
    plain = nn.Conv3d(*channels, **kwargs)
    split = copy.deepcopy(plain)
    split_single_sample_convs(split)
    assert type(split) is SplitConv3d
    x = torch.randn(1, channels[0], *shape).contiguous(memory_format=layout)
    for got, want in zip(_forward_backward(split, x), _forward_backward(plain, x), strict=True):
        assert got.shape == want.shape
        _assert_close(got, want)
    if plain(x).is_contiguous(memory_format=layout):
        assert split(x).is_contiguous(memory_format=layout)


@pytest.mark.parametrize("shape", [(6, 6, 4), (5, 6, 4)])  # 5: odd, the layer's own forward
def test_split_transposed_convolution_equals_the_layer(shape):
    torch.manual_seed(0)
    plain = nn.ConvTranspose3d(64, 32, kernel_size=2, stride=2)
    split = split_single_sample_convs(copy.deepcopy(plain))
    assert type(split) is SplitConvTranspose3d
    x = torch.randn(1, 64, *shape).contiguous(memory_format=CL)
    for got, want in zip(_forward_backward(split, x), _forward_backward(plain, x), strict=True):
        _assert_close(got, want)


def _kernels(step) -> set[str]:
    with profile() as prof:
        step()
    return {event.key for event in prof.key_averages()}


def test_one_sample_runs_through_onednn_only_when_split():
    """Why the split exists: PyTorch's own choice for one sample is its native kernel."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    torch.manual_seed(0)
    plain = nn.Conv3d(32, 64, kernel_size=3, padding=1)
    split = split_single_sample_convs(copy.deepcopy(plain))
    x = torch.randn(1, 32, 24, 24, 16).contiguous(memory_format=CL)
    assert "aten::slow_conv3d_forward" in _kernels(lambda: plain(x))
    kernels = _kernels(lambda: split(x))
    assert "aten::mkldnn_convolution" in kernels and "aten::slow_conv3d_forward" not in kernels
    # two samples already run through oneDNN: the split leaves them to the layer
    pair = torch.randn(2, 32, 24, 24, 16)
    assert "aten::mkldnn_convolution" in _kernels(lambda: split(pair))
    torch.testing.assert_close(split(pair), plain(pair))


def _smooth(model: nn.Module) -> nn.Module:
    """``model`` with SiLU for LeakyReLU: at a kink, float rounding alone (a pre-activation
    of 3e-7 on either side of 0) moves a gradient by a few percent."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.LeakyReLU):
                setattr(module, name, nn.SiLU())
    return model


@pytest.mark.parametrize(
    "name, split", [("plain_unet3d", True), ("plain_unet3d", False), ("resenc_unet3d", True)]
)
def test_phantom_3d_network_on_a_cpu_gets_the_gradients_of_the_float64_network(name, split):
    """The preset's PlainConvUNet (or a ResidualEncoderUNet of its widths) as the trainer runs
    it on a CPU (channels last, its instance norms ``keep_channels_last``, its convolutions
    split): one patch's loss and gradients are those of the same network in float64 and the
    default layout. Without keep_channels_last the first stage's gradients were 140 % off
    (PyTorch's instance norm, one sample, a gradient arriving channels last)."""
    cfg = preset("phantom_3d")
    if name != cfg.model.name:
        cfg.model = dataclasses.replace(
            cfg.model, name=name, convs_per_stage=None, decoder_convs_per_stage=None
        )
    torch.manual_seed(0)
    reference = _smooth(build_model(cfg.model)).double().train()
    model = keep_channels_last(copy.deepcopy(reference).float().to(memory_format=CL))
    if split:
        split_single_sample_convs(model)
        assert sum(type(m) is SplitConv3d for m in model.modules()) > 0
        assert not any(type(m) in (nn.Conv3d, nn.ConvTranspose3d) for m in model.modules())
    assert list(model.state_dict()) == list(reference.state_dict())
    x = torch.randn(1, 1, *cfg.data.patch_size, dtype=torch.float64)
    classes = torch.randint(0, 118, (1, *cfg.data.patch_size))
    loss_fn = build_loss(cfg.train.loss)
    logits, losses = [], []
    for net, image in ((reference, x), (model, x.float().contiguous(memory_format=CL))):
        outputs = net(image)
        loss = deep_supervision_loss(loss_fn, outputs, classes)
        loss.backward()
        logits.append(outputs)
        losses.append(loss.item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for got, want in zip(logits[1], logits[0], strict=True):
        _assert_close(got.detach().double(), want.detach())
    grads = [(param, a.grad, b.grad.double()) for (param, a), b in zip(
        reference.named_parameters(), model.parameters(), strict=True) if a.grad is not None]  # fmt: skip
    largest = max(float(a.norm()) for _, a, _ in grads)
    compared = 0
    for param, want, got in grads:
        if float(want.norm()) < 1e-5 * largest:  # a convolution's bias before an instance norm
            continue
        compared += 1
        assert float((got - want).norm() / want.norm()) < 1e-3, param  # the bug: 1.4
    assert compared > 20
