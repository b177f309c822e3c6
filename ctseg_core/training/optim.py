"""Optimizers and learning-rate schedulers named in TrainConfig, as registries.

A new optimizer is one entry in ``OPTIMIZERS`` (``build(params, train_config) -> Optimizer``),
a new scheduler one in ``SCHEDULERS`` (``build(optimizer, train_config) -> scheduler or None``,
stepped once per epoch). The CLI's choices, the config checks and the Train page read them.

Schedules over the run's progress. Cosine and poly are a learning-rate factor of the run's
progress p in [0, 1], ``lr = lr0 * shape(p)`` (``ProgressLR``), stepped after each epoch with
``training.budget``'s progress ``done / horizon``. Without a time
budget (``TrainConfig.minutes``) the horizon is ``epochs``: PyTorch's CosineAnnealingLR and
PolynomialLR over ``epochs``, in closed form. With a budget the horizon is ``done + more``,
``more`` the epochs expected to fit in the rest of the budget (and within ``epochs``), estimated
from the measured epochs again after every epoch: the same schedule with its horizon moved to
the epochs that fit; an epoch slower or faster than expected moves the horizon, not the lr
already used. A run resumed with another horizon (more or fewer ``epochs``, more minutes)
continues the schedule it would have followed had it been planned so from the start
(``ProgressLR.replan``; a finished run's lr rises from 0 to that schedule's value). Plateau and
"none" ignore the budget.
"""

from __future__ import annotations

import math
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


def cosine_factor(progress: float) -> float:
    """Cosine decay from 1 at progress 0 to 0 at 1 (CosineAnnealingLR at epoch / T_max)."""
    p = min(max(progress, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * p))


def poly_factor(progress: float, power: float) -> float:
    """(1 - progress) ** power, nnU-Net's decay (PolynomialLR at epoch / total_iters)."""
    return (1.0 - min(max(progress, 0.0), 1.0)) ** power


class ProgressLR:
    """``lr = base_lr * shape(progress)`` with the progress given at each ``step(progress)``.

    The progress only grows (a smaller one is ignored), so the lr of a monotone shape never
    climbs back within a run; only ``replan`` (a resume with a new horizon) sets it anew.
    ``state_dict`` holds the base lrs and the progress (plain floats); loading the state of
    PyTorch's CosineAnnealingLR / PolynomialLR (a checkpoint from before) takes their epoch
    share as the progress.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, shape: Callable[[float], float]):
        self.optimizer, self.shape = optimizer, shape
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.progress = 0.0
        self._apply()

    def _apply(self) -> None:
        factor = self.shape(self.progress)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor

    def step(self, progress: float) -> None:
        self.progress = max(self.progress, min(max(float(progress), 0.0), 1.0))
        self._apply()

    def replan(self, progress: float) -> None:
        """Set the progress to ``progress``, lower or higher (a resume with a new horizon)."""
        self.progress = min(max(float(progress), 0.0), 1.0)
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"base_lrs": list(self.base_lrs), "progress": self.progress}

    def load_state_dict(self, state: dict) -> None:
        self.base_lrs = [float(v) for v in state.get("base_lrs", self.base_lrs)]
        if "progress" in state:
            self.progress = float(state["progress"])
        else:  # an epoch-based torch scheduler's state
            horizon = state.get("T_max") or state.get("total_iters") or 1
            self.progress = min(max(state.get("last_epoch", 0) / horizon, 0.0), 1.0)
        self._apply()


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
            lambda opt, t: ProgressLR(opt, cosine_factor),
            "cosine decay over the epochs (or the time budget)",
        ),
        Choice(
            "poly",
            lambda opt, t: ProgressLR(opt, lambda p: poly_factor(p, t.poly_power)),
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


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict(state)``, each per-parameter tensor (Adam's moments, SGD's
    momentum) then laid out as its parameter.

    A resumed run may hold its weights in another memory layout than the run that saved it
    (channels last follows the device and precision: e.g. a 3D float32 CPU run saved before
    3D went channels last everywhere), and ``load_state_dict`` keeps the saved strides. PyTorch's
    fused Adam then updates the weights wrongly without an error (it pairs elements by storage
    position), so the moments take the weights' strides here.
    """
    optimizer.load_state_dict(state)
    for group in optimizer.param_groups:
        for param in group["params"]:
            slots = optimizer.state.get(param, {})
            for key, value in slots.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == param.shape
                    and value.stride() != param.stride()
                ):
                    slots[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainConfig):
    """The per-epoch scheduler ``t.scheduler`` (None for "none"); a ``ProgressLR`` for a shaped
    one (see the module docstring)."""
    return _entry(SCHEDULERS, "scheduler", t.scheduler).build(optimizer, t)


def step_scheduler(scheduler, record: dict, progress: float | None = None) -> None:
    """Advance the scheduler after an epoch (plateau watches the validation loss; a
    ``ProgressLR`` takes ``progress``, the run's share of its horizon: ``budget.Budget``)."""
    if scheduler is None:
        return
    if isinstance(scheduler, ProgressLR):
        scheduler.step(1.0 if progress is None else progress)
    elif isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        metric = record.get("val_loss")
        scheduler.step(metric if metric is not None else record.get("train_loss"))
    else:
        scheduler.step()
