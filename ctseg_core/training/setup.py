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
