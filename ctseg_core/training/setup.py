"""Optimizers and learning-rate schedulers named in TrainConfig (small registries)."""

from __future__ import annotations

import torch

from ..config import TrainConfig
from ..errors import ConfigError


def build_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW (lr, weight decay) or SGD with Nesterov momentum (nnU-Net's choice).

    Adam and AdamW use PyTorch's fused kernels (one pass over the parameters instead of a few;
    CPU and CUDA) when every parameter is on such a device.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, fused=fused)
    if t.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=t.lr,
            momentum=t.momentum,
            nesterov=t.momentum > 0,
            weight_decay=t.weight_decay,
        )
    raise ConfigError(f"unknown optimizer {t.optimizer!r}; use adam, adamw or sgd")


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig):
    """Per-epoch scheduler: plateau (on the val loss), cosine, poly, or None."""
    if t.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=t.plateau_factor, patience=t.plateau_patience
        )
    if t.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, t.epochs))
    if t.scheduler == "poly":
        return torch.optim.lr_scheduler.PolynomialLR(
            optimizer, total_iters=max(1, t.epochs), power=t.poly_power
        )
    if t.scheduler == "none":
        return None
    raise ConfigError(f"unknown scheduler {t.scheduler!r}; use plateau, cosine, poly or none")


def step_scheduler(scheduler, record: dict) -> None:
    """Advance the scheduler after an epoch (plateau watches the validation loss)."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        metric = record.get("val_loss")
        scheduler.step(metric if metric is not None else record.get("train_loss"))
    else:
        scheduler.step()


def init_output_bias(model: torch.nn.Module, voxel_counts, class_lut, output_mode: str) -> None:
    """Start the output layer at the training set's class frequencies (a prior).

    voxel_counts: (118,) voxels per label value over the training subjects; class_lut: (118,)
    label value -> class index. With zero biases every class starts at 1/K, and Adam needs
    hundreds of steps just to learn that most voxels are background; with the prior the first
    steps already learn shapes. Absent classes get a frequency of 1e-6.
    """
    heads = [getattr(model, "head", None), *getattr(model, "aux_heads", [])]
    heads = [h for h in heads if isinstance(h, torch.nn.Conv2d) and h.bias is not None]
    if not heads:
        return
    lut = torch.as_tensor(class_lut, dtype=torch.int64)
    counts = torch.zeros(int(lut.max()) + 1, dtype=torch.float64)
    counts.index_add_(0, lut, torch.as_tensor(voxel_counts, dtype=torch.float64))
    freq = (counts / counts.sum().clamp(min=1)).clamp(min=1e-6, max=1 - 1e-6)
    if output_mode == "softmax":
        bias = freq.log()
    else:
        freq = freq[1:]
        bias = (freq / (1 - freq)).log()
    with torch.no_grad():
        for head in heads:  # the deep-supervision heads predict the same classes
            if bias.numel() == head.bias.numel():
                head.bias.copy_(bias.to(head.bias.dtype))
