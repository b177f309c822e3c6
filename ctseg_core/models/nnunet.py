"""nnU-Net's 3D U-Nets: ``PlainConvUNet`` and ``ResidualEncoderUNet`` of dynamic-network-architectures.

The networks are the package's own classes (a subclass adds nothing to their state dict), so a
state dict is nnU-Net's key for key and its weights load into them. Built as nnU-Net v2 builds
them: 3D convolutions with bias, instance norm (eps 1e-5, affine; ``norm`` "batch": batch norm),
LeakyReLU, He initialisation. Input (B, C, X, Y, Z) in the canonical axis order, output (B, K,
X, Y, Z) logits; each axis of the input must be a multiple of the product of its strides.

Deep supervision as the seed U-Net's: ``deep_supervision`` = n returns, in training mode, the
logits at full resolution and at the n decoder levels below it (a tuple, coarsest last); in eval
mode only the first. The package always builds one output layer per decoder level
(``decoder.seg_layers``); those below the n used get no gradient.

The package is installed with ``pip install --no-deps`` (``requirements-nodeps.txt``): it declares
timm, which would pull torchvision and another torch, but these two networks import only torch
and numpy.
"""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..device import memory_layout
from ..errors import ConfigError

#: residual blocks per encoder stage of nnU-Net's ResEnc presets (M, L, XL share them)
RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6)


@dataclass(frozen=True)
class Architecture:
    """The per-stage settings of a network, resolved: every kernel and stride (x, y, z)."""

    widths: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, int, int], ...]
    strides: tuple[tuple[int, int, int], ...]
    convs: tuple[int, ...]  # encoder convolutions (residual blocks for the residual encoder)
    decoder_convs: tuple[int, ...]

    @property
    def total_stride(self) -> tuple[int, int, int]:
        """What each input axis must be a multiple of (the product of the strides)."""
        return tuple(math.prod(s[axis] for s in self.strides) for axis in range(3))


def _triple(value, what: str) -> tuple[int, int, int]:
    whole = (numbers.Integral,)  # numpy's ints too (a config made in Python may hold them)
    values = [value] * 3 if isinstance(value, whole) else list(value)
    if len(values) != 3 or not all(isinstance(v, whole) and v >= 1 for v in values):
        raise ConfigError(f"model {what} {value!r} must be one int >= 1 or three (x, y, z)")
    return tuple(int(v) for v in values)


def architecture(model_config, residual: bool = False) -> Architecture:
    """The stages of ``model_config`` (a ModelConfig) with nnU-Net's defaults for unset entries.

    Defaults: kernel 3 at every stage; stride 1 at the first stage and 2 below; 2 convolutions
    per stage in the plain encoder and decoder; the residual encoder's blocks per stage are
    ``RESENC_BLOCKS`` and its decoder has 1 convolution per stage (nnU-Net's ResEnc presets).
    ConfigError when a list has not one entry per stage.
    """
    m = model_config
    widths = tuple(int(w) for w in m.features)
    n = len(widths)
    kernels = m.kernel_sizes if m.kernel_sizes is not None else [3] * n
    strides = m.strides if m.strides is not None else [1] + [2] * (n - 1)
    convs = m.convs_per_stage
    if convs is None:
        convs = list(RESENC_BLOCKS[:n]) + [6] * (n - len(RESENC_BLOCKS)) if residual else [2] * n
    decoder = m.decoder_convs_per_stage
    if decoder is None:
        decoder = [1 if residual else 2] * (n - 1)
    for what, values, want in (
        ("kernel_sizes", kernels, n),
        ("strides", strides, n),
        ("convs_per_stage", convs, n),
        ("decoder_convs_per_stage", decoder, n - 1),
    ):
        if len(values) != want:
            raise ConfigError(
                f"model {what} has {len(values)} entries but the network has {n} stages "
                f"(features {list(widths)}): give {want}"
            )
    kernels = tuple(_triple(k, "kernel size") for k in kernels)
    if any(k % 2 == 0 for kernel in kernels for k in kernel):
        raise ConfigError(f"model kernel sizes {[list(k) for k in kernels]} must be odd")
    if any(int(c) < 1 for c in (*convs, *decoder)):
        raise ConfigError("model convolutions per stage must be >= 1")
    return Architecture(
        widths=widths,
        kernel_sizes=kernels,
        strides=tuple(_triple(s, "stride") for s in strides),
        convs=tuple(int(c) for c in convs),
        decoder_convs=tuple(int(c) for c in decoder),
    )


class _CtsegOutputs:
    """Mixed in before the package's class: ctseg's deep-supervision contract and head names.

    Adds no module, parameter or buffer, so the state dict stays the package's.
    """

    extra_heads: int = 0

    def forward(self, x):
        self.decoder.deep_supervision = bool(self.training and self.extra_heads)
        out = super().forward(x)
        if isinstance(out, list | tuple):
            return tuple(out[: 1 + self.extra_heads])  # full resolution first
        return out

    @property
    def head(self) -> nn.Module:
        """The full-resolution output convolution (``models.head.init_output_bias``)."""
        return self.decoder.seg_layers[-1]

    @property
    def aux_heads(self) -> list[nn.Module]:
        """The output convolutions of the deep-supervision levels in use, finest first."""
        return list(self.decoder.seg_layers[-2::-1][: self.extra_heads])

    @property
    def idle_heads(self) -> list[nn.Module]:
        """The output convolutions below the levels in use: no loss reaches their parameters,
        which DistributedDataParallel must be told of (``training.parts``)."""
        return list(self.decoder.seg_layers[: -1 - self.extra_heads])


@functools.cache
def network_classes() -> tuple[type, type]:
    """(plain, residual): the package's two classes with ctseg's outputs mixed in."""
    try:
        from dynamic_network_architectures.architectures.unet import (
            PlainConvUNet,
            ResidualEncoderUNet,
        )
    except ImportError:
        raise ConfigError(
            "the 3D networks need dynamic-network-architectures: run "
            "`python3 -m pip install --no-deps -r requirements-nodeps.txt`"
        ) from None
    plain = type("PlainUNet3D", (_CtsegOutputs, PlainConvUNet), {})
    residual = type("ResidualEncoderUNet3D", (_CtsegOutputs, ResidualEncoderUNet), {})
    return plain, residual


def package_arguments(model_config, residual: bool = False) -> dict:
    """The keyword arguments of the package's class for ``model_config`` (nnU-Net v2's choices)."""
    m = model_config
    if m.in_channels is None or m.out_channels is None:
        raise ConfigError(
            "model in_channels/out_channels are unset; build the model from a RunConfig "
            "(it derives them from the data settings and the loss)"
        )
    arch = architecture(m, residual)
    norm = nn.BatchNorm3d if m.norm == "batch" else nn.InstanceNorm3d
    args = {
        "input_channels": int(m.in_channels),
        "n_stages": len(arch.widths),
        "features_per_stage": list(arch.widths),
        "conv_op": nn.Conv3d,
        "kernel_sizes": [list(k) for k in arch.kernel_sizes],
        "strides": [list(s) for s in arch.strides],
        "num_classes": int(m.out_channels),
        "n_conv_per_stage_decoder": list(arch.decoder_convs),
        "conv_bias": True,
        "norm_op": norm,
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": nn.Dropout3d if m.dropout > 0 else None,
        "dropout_op_kwargs": {"p": float(m.dropout)} if m.dropout > 0 else None,
        "nonlin": nn.LeakyReLU,
        "nonlin_kwargs": {"inplace": True},
        "deep_supervision": False,
    }
    args["n_blocks_per_stage" if residual else "n_conv_per_stage"] = list(arch.convs)
    return args


def build_nnunet(model_config, residual: bool = False) -> nn.Module:
    """nnU-Net's 3D U-Net for ``model_config``, initialised as nnU-Net does (He, 1e-2)."""
    plain, res = network_classes()
    cls = res if residual else plain
    net = cls(**package_arguments(model_config, residual))
    net.apply(cls.initialize)
    net.extra_heads = int(model_config.deep_supervision)
    return net


def check_nnunet(run_config, residual: bool = False) -> list[str]:
    """What a 3D nnU-Net cannot take in ``run_config``, one line per problem."""
    d, m = run_config.data, run_config.model
    try:
        arch = architecture(m, residual)
    except ConfigError as exc:
        return [str(exc)]
    problems = []
    n = len(arch.widths)
    if n < 2:
        problems.append(f"a 3D U-Net needs at least 2 stages (features {list(m.features)})")
    if m.deep_supervision > max(0, n - 2):
        problems.append(
            f"deep_supervision must be 0..{max(0, n - 2)} for {n} stages (got {m.deep_supervision})"
        )
    if d.context_slices != 1:
        problems.append(
            f"a 3D model takes one channel: set context slices to 1 (got {d.context_slices})"
        )
    if d.patch_size is None:
        problems.append(f"model {m.name} needs data.patch_size (x, y, z voxels), e.g. (96, 96, 96)")
    elif len(d.patch_size) == 3:
        stride = arch.total_stride
        if any(int(p) % s for p, s in zip(d.patch_size, stride, strict=True)):
            fix = tuple(
                max(s, round(int(p) / s) * s) for p, s in zip(d.patch_size, stride, strict=True)
            )
            problems.append(
                f"patch size {tuple(d.patch_size)} cannot pass the network's strides: each axis "
                f"must be a multiple of {stride} (the product of its strides), e.g. {fix}"
            )
    return problems


def _per_sample_batch_norm(norm: nn.modules.instancenorm._InstanceNorm, x: torch.Tensor):
    """The instance norm of ``x`` (B, C, *spatial) as one batch norm per sample, in its layout."""
    out = []
    for i in range(x.shape[0]):
        # one sample whole, not sliced: a slice's backward makes a zeroed copy of the gradient
        sample = x if x.shape[0] == 1 else x[i : i + 1]
        if sample.stride() != _standard_strides(sample):  # valid for one sample (x[None])
            sample = sample.clone(memory_format=memory_layout(sample))
        out.append(F.batch_norm(sample, None, None, norm.weight, norm.bias, True, 0.0, norm.eps))
    return out[0] if len(out) == 1 else torch.cat(out)


def _standard_strides(x: torch.Tensor) -> tuple[int, ...]:
    """The strides of a fresh tensor of ``x``'s shape in ``x``'s layout (``memory_layout``)."""
    return torch.empty(x.shape, device="meta", memory_format=memory_layout(x)).stride()


def _with_standard_gradient(out: torch.Tensor) -> torch.Tensor:
    """``out``, whose gradient is copied into ``out``'s own layout with standard strides when
    it arrives otherwise: PyTorch's norm backwards (both instance and batch norm) return wrong
    gradients for some valid gradient layouts (module doc of ``ChannelsLastInstanceNorm3d``)."""
    if out.requires_grad:
        layout, strides = memory_layout(out), _standard_strides(out)
        out.register_hook(
            lambda grad: grad if grad.stride() == strides else grad.clone(memory_format=layout)
        )
    return out


class ChannelsLastInstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` as one batch norm per sample: the same parameters and outputs, a
    channels-last input kept channels last, and right gradients in every layout.

    PyTorch's CPU instance norm copies a channels_last_3d input to the default layout and
    returns it there, so the next convolution copies it back: on a 112 x 112 x 128 window of a
    6-stage U-Net under bf16 those copies took more time than the convolutions. And PyTorch
    2.13's CPU instance norm returns wrong gradients (input, weight and bias; 140 % off) for a
    batch of one sample whose gradient arrives channels last, in 2D and 3D, whatever the
    input's layout: one-patch 3D training (``phantom_3d``) met it at its first stage, whose
    convolution returned the default layout while the next sent its gradient back channels
    last, so the first convolution and norm learnt from wrong gradients. The instance norm of
    one sample is a batch norm with batch statistics, which PyTorch computes on the input as it
    lies, with the same float32 statistics (outputs differ from ``nn.InstanceNorm3d``'s by bf16
    rounding at most). Batch norm's backward has flaws of its own, for one sample whose batch
    stride is not its size (valid; ``x[None]`` makes one) in the input or the gradient, and
    PyTorch's instance norm for a batch of several whose gradient interleaves the samples (a
    sequence-first (L, N, C) head): such an input is copied first, and such a gradient is
    copied into the output's layout before the norm's backward sees it.
    Running statistics, and batches of several samples in the default layout, take
    ``nn.InstanceNorm3d``'s own path (with the gradient copy).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            x.dim() != 5
            or self.track_running_stats
            or (x.shape[0] > 1 and not x.is_contiguous(memory_format=torch.channels_last_3d))
        ):
            return _with_standard_gradient(super().forward(x))
        return _with_standard_gradient(_per_sample_batch_norm(self, x))


class ChannelsLastInstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` whose batch of one sample is a batch norm: PyTorch's own gets its
    gradient wrong when it arrives channels last (``ChannelsLastInstanceNorm3d``); larger
    batches take PyTorch's path (one call, not one per sample: a GPU's batches of 16); a
    gradient in another layout than the output's is copied into it first."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or self.track_running_stats or x.shape[0] > 1:
            return _with_standard_gradient(super().forward(x))
        return _with_standard_gradient(_per_sample_batch_norm(self, x))


def keep_channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its ``nn.InstanceNorm3d`` and ``nn.InstanceNorm2d`` layers made
    ``ChannelsLastInstanceNorm3d`` and ``ChannelsLastInstanceNorm2d``, in place: the same
    modules, parameters and state dict, faster on channels-last input, and right gradients
    whatever layout the gradient comes back in."""
    swaps = {
        nn.InstanceNorm3d: ChannelsLastInstanceNorm3d,
        nn.InstanceNorm2d: ChannelsLastInstanceNorm2d,
    }
    for module in model.modules():
        if type(module) in swaps:
            module.__class__ = swaps[type(module)]
    return model
