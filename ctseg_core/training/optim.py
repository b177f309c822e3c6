"""Optimizers and learning-rate schedulers named in TrainConfig, as registries.

A new optimizer is one entry in ``OPTIMIZERS`` (``build(params, train_config) -> Optimizer``),
a new scheduler one in ``SCHEDULERS`` (``build(optimizer, train_config) -> scheduler or None``,
stepped once per epoch). The CLI's choices, the config checks and the Train page read them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Choice:
    """A registry entry: its name, how to build it, and a title for the pages and --help."""

    name: str
    build: Callable
    title: str


def _sgd(params, t: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        params, lr=t.lr, momentum=t.momentum, nesterov=t.momentum > 0, weight_decay=t.weight_decay
    )


def _fused(params) -> bool:
    """PyTorch's fused Adam kernels (one pass over the parameters instead of a few) exist for
    CPU and CUDA parameters only."""
    return bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)


OPTIMIZERS: dict[str, Choice] = {
    c.name: c
    for c in (
        Choice(
            "adam",
            lambda params, t: torch.optim.Adam(
                params, lr=t.lr, weight_decay=t.weight_decay, fused=_fused(params)
            ),
            "Adam",
        ),
        Choice(
            "adamw",
            lambda params, t: torch.optim.AdamW(
                params, lr=t.lr, weight_decay=t.weight_decay, fused=_fused(params)
            ),
            "AdamW (decoupled weight decay)",
        ),
        Choice("sgd", _sgd, "SGD with Nesterov momentum (nnU-Net's)"),
    )
}

SCHEDULERS: dict[str, Choice] = {
    c.name: c
    for c in (
        Choice(
            "plateau",
            lambda opt, t: torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode="min", factor=t.plateau_factor, patience=t.plateau_patience
            ),
            "halve on a validation-loss plateau",
        ),
        Choice(
            "cosine",
            lambda opt, t: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, t.epochs)),
            "cosine decay over the epochs",
        ),
        Choice(
            "poly",
            lambda opt, t: torch.optim.lr_scheduler.PolynomialLR(
                opt, total_iters=max(1, t.epochs), power=t.poly_power
            ),
            "polynomial decay (nnU-Net's)",
        ),
        Choice("none", lambda opt, t: None, "constant learning rate"),
    )
}


def _entry(registry: dict[str, Choice], what: str, name: str) -> Choice:
    try:
        return registry[name]
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(registry)}") from None


def build_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer ``t.optimizer`` over the model's trainable parameters."""
    params = [p for p in model.parameters() if p.requires_grad]
    return _entry(OPTIMIZERS, "optimizer", t.optimizer).build(params, t)


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig):
    """The per-epoch scheduler ``t.scheduler`` (None for "none")."""
    return _entry(SCHEDULERS, "scheduler", t.scheduler).build(optimizer, t)


def step_scheduler(scheduler, record: dict) -> None:
    """Advance the scheduler after an epoch (plateau watches the validation loss)."""
    if scheduler is None:
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        metric = record.get("val_loss")
        scheduler.step(metric if metric is not None else record.get("train_loss"))
    else:
        scheduler.step()
