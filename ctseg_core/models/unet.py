"""The 2D U-Net of the seed notebooks, with optional attention gates (Attention U-Net).

Encoder: one double-conv block per entry of ``features`` (each followed by 2x2 max pooling),
a ``bottleneck`` double-conv, then one transposed-conv upsampling + skip concatenation +
double-conv per level back up, and a 1x1 convolution to ``out_channels`` logits.
Input (B, C, H, W) with H and W multiples of 2 ** len(features); output (B, K, H, W) logits.

Deep supervision (nnU-Net's): ``deep_supervision`` = n adds 1x1 heads on the n decoder levels
below full resolution; in training mode the forward then returns a tuple of logits at H, H/2,
.. H/2**n (``training.losses.deep_supervision_loss`` weighs them), in eval mode only the first,
so validation, inference and checkpoints see the plain model.
"""

from __future__ import annotations

import torch
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.BatchNorm2d(channels)


class DoubleConv(nn.Module):
    """(conv 3x3 -> norm -> ReLU) x 2, keeping H x W."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
            _norm(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
            _norm(norm, out_ch),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout2d(dropout))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class AttentionGate(nn.Module):
    """Additive attention (Oktay et al. 2018): weights a skip (B, Cs, H, W) by a gate (B, Cg, H, W)."""

    def __init__(self, skip_ch: int, gate_ch: int, inter_ch: int):
        super().__init__()
        self.theta = nn.Conv2d(skip_ch, inter_ch, 1, bias=False)
        self.phi = nn.Conv2d(gate_ch, inter_ch, 1, bias=True)
        self.psi = nn.Conv2d(inter_ch, 1, 1, bias=True)

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        attention = torch.sigmoid(self.psi(torch.relu(self.theta(skip) + self.phi(gate))))
        return skip * attention


class UNet2D(nn.Module):
    """2D U-Net: (B, in_channels, H, W) -> (B, out_channels, H, W) logits."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 118,
        features: list[int] | tuple[int, ...] = (32, 64, 128, 256),
        bottleneck: int = 512,
        attention: bool = False,
        norm: str = "batch",
        dropout: float = 0.0,
        deep_supervision: int = 0,
    ):
        super().__init__()
        if not 0 <= deep_supervision < len(features):
            raise ValueError(f"deep_supervision must be 0..{len(features) - 1}")
        self.features = list(features)
        self.downs = nn.ModuleList()
        ch = in_channels
        for width in self.features:
            self.downs.append(DoubleConv(ch, width, norm))
            ch = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = DoubleConv(ch, bottleneck, norm, dropout)
        self.ups = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        self.gates = nn.ModuleList() if attention else None
        ch = bottleneck
        for width in reversed(self.features):
            self.ups.append(nn.ConvTranspose2d(ch, width, 2, stride=2))
            if self.gates is not None:
                self.gates.append(AttentionGate(width, width, max(1, width // 2)))
            self.up_convs.append(DoubleConv(2 * width, width, norm))
            ch = width
        self.head = nn.Conv2d(ch, out_channels, 1)
        # decoder widths from the full resolution down: features[1], features[2], ..
        self.aux_heads = nn.ModuleList(
            nn.Conv2d(width, out_channels, 1) for width in self.features[1 : 1 + deep_supervision]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        decoded = []
        for level, (up, conv) in enumerate(zip(self.ups, self.up_convs, strict=True)):
            x = up(x)
            skip = skips[-1 - level]
            if self.gates is not None:
                skip = self.gates[level](skip, x)
            x = conv(torch.cat([skip, x], dim=1))
            decoded.append(x)
        out = self.head(x)
        if not (self.training and len(self.aux_heads)):
            return out
        lower = decoded[-2::-1]  # H/2, H/4, ..
        return (out, *(head(f) for head, f in zip(self.aux_heads, lower, strict=False)))
