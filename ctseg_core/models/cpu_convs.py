"""3D convolutions of one sample on the CPU through oneDNN, by splitting the sample in two.

PyTorch runs a float32 CPU convolution through its native im2col kernels instead of oneDNN when
the batch holds one sample and N x C x (first two spatial axes) is at most 20480
(``ConvParams::use_mkldnn`` in aten/src/ATen/native/Convolution.cpp: "for some case, native is
faster", a rule for small 2D images). A 3D U-Net trained on one patch per step (``phantom_3d``:
48 x 48 x 32 voxels) meets that rule in its first convolution (one input channel), in most
stages below the second and in its transposed convolutions, where the native 3D kernels are
slow: a 32 -> 64 convolution at 24 x 24 x 16 took 61 ms forward and backward as one sample and
38 ms as a batch of two (oneDNN), i.e. 3.2x the time per sample; phantom_3d's training step
took 0.29 s, and 0.245 s split (AMD EPYC, AVX2, float32, 2 threads).

``SplitConv3d`` and ``SplitConvTranspose3d`` cut such a sample along its first spatial axis into
two halves (a convolution's halves overlap by its kernel's reach) and pass them as a batch of
two, which PyTorch sends to oneDNN; the halves of the output are joined again. Results equal
the layer's own to float rounding, gradients included; the parameters, and so the state dict,
are the layer's own. Anything else (a batch of more than one, a GPU, autocast, an odd output
length, padding modes other than zeros) takes the layer's own forward. The choice is made in
Python per call, so ``torch.jit.trace`` of a split model would bake one sample's split into
the trace (ctseg never traces; ``torch.compile`` re-decides per shape).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: PyTorch's bound: a single sample with N * C * D * H above it already runs through oneDNN
NATIVE_LIMIT = 20480


def _native_path(x: torch.Tensor, groups: int, kernel: tuple[int, ...]) -> bool:
    """Whether PyTorch would run this float32 CPU convolution of ``x`` (1, C, D, H, W) through
    its native kernels (see the module doc), where a split into a batch of two would not."""
    return (
        x.dim() == 5
        and x.shape[0] == 1
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and groups == 1
        and not (kernel[-1] > 3 and kernel[-2] > 3)
        and x.shape[1] * x.shape[2] * x.shape[3] <= NATIVE_LIMIT
    )


def _join(y: torch.Tensor) -> torch.Tensor:
    """(2, C, D, H, W) halves -> (1, C, 2D, H, W), with standard strides.

    Channels last, the two halves lie one after the other in memory as the joined tensor does,
    so the join is a view, not a copy.
    """
    if y.is_contiguous(memory_format=torch.channels_last_3d):
        n, c, d, h, w = y.shape
        return y.permute(0, 2, 3, 4, 1).reshape(1, n * d, h, w, c).permute(0, 4, 1, 2, 3)
    return torch.cat([y[0:1], y[1:2]], dim=2)


class SplitConv3d(nn.Conv3d):
    """``nn.Conv3d`` that runs one CPU sample as two halves through oneDNN (module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            isinstance(self.padding, str)
            or self.padding_mode != "zeros"
            or not _native_path(x, self.groups, self.kernel_size)
        ):
            return super().forward(x)
        k, s, p, d = self.kernel_size[0], self.stride[0], self.padding[0], self.dilation[0]
        reach = d * (k - 1) + 1  # input rows one output row reads
        n_out = (x.shape[2] + 2 * p - reach) // s + 1
        if n_out < 2 or n_out % 2:
            return super().forward(x)
        half = n_out // 2
        span = (half - 1) * s + reach  # padded input rows behind half the output rows
        padded = F.pad(x, (0, 0, 0, 0, p, p)) if p else x
        pair = torch.cat([padded[:, :, :span], padded[:, :, half * s : half * s + span]])
        y = F.conv3d(
            pair, self.weight, self.bias, self.stride, (0, *self.padding[1:]), self.dilation
        )
        return _join(y)


class SplitConvTranspose3d(nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with kernel = stride along the first axis (a U-Net's upsampling)
    that runs one CPU sample as two halves through oneDNN (module doc)."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        if (
            output_size is not None
            or not _native_path(x, self.groups, self.kernel_size)  # (1, C, D, H, W) from here
            or self.kernel_size[0] != self.stride[0]
            or self.padding[0] != 0
            or self.output_padding[0] != 0
            or self.dilation[0] != 1
            or x.shape[2] < 2
            or x.shape[2] % 2
        ):
            return super().forward(x, output_size)
        half = x.shape[2] // 2  # output rows never mix input rows when kernel = stride
        pair = torch.cat([x[:, :, :half], x[:, :, half:]])
        y = F.conv_transpose3d(
            pair, self.weight, self.bias, self.stride, self.padding, self.output_padding,
            self.groups, self.dilation,
        )  # fmt: skip
        return _join(y)


def split_single_sample_convs(model: nn.Module) -> nn.Module:
    """``model`` with its ``nn.Conv3d`` and ``nn.ConvTranspose3d`` layers made ``SplitConv3d``
    and ``SplitConvTranspose3d``, in place: the same modules, parameters and state dict, faster
    on one float32 CPU sample at a time (module doc); unchanged elsewhere."""
    for module in model.modules():
        if type(module) is nn.Conv3d:
            module.__class__ = SplitConv3d
        elif type(module) is nn.ConvTranspose3d:
            module.__class__ = SplitConvTranspose3d
    return model
