"""Checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of plain tensors, numbers, strings, lists and dicts only::

    {"format": "ctseg-checkpoint", "version": 1, "epoch": int (completed epochs),
     "model": state_dict, "optimizer": state_dict | None, "scheduler": state_dict | None,
     "config": RunConfig.to_dict(), "history": [epoch records], "extra": {...},
     "rng": {"torch": ByteTensor, ...}, "training_data": {...} | None}

``training_data``: what the model was trained on (``data.domain``); checkpoints written before
it was recorded have no such key and load the same.

so a file from elsewhere cannot run code when loaded, and the model is rebuilt from the
checkpoint alone (``load_model``).
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..errors import CtsegError
from ..fileio import atomic_path
from . import build_model

log = logging.getLogger(__name__)

FORMAT = "ctseg-checkpoint"
VERSION = 1


def _plain_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the bare model (unwrapping DDP / torch.compile wrappers)."""
    inner = getattr(model, "module", model)
    inner = getattr(inner, "_orig_mod", inner)
    return {k: v.detach().cpu() for k, v in inner.state_dict().items()}


def rng_state() -> dict[str, torch.Tensor]:
    """The global torch RNG states as tensors (CPU, and CUDA when present)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, torch.Tensor] | None) -> None:
    if not state:
        return
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    epoch: int = 0,
    config: RunConfig | dict | None = None,
    history: list[dict] | None = None,
    extra: dict | None = None,
    training_data: dict | None = None,
) -> Path:
    """Write a checkpoint atomically (temp file + rename); ``epoch`` counts completed epochs."""
    config_dict = config.to_dict() if isinstance(config, RunConfig) else dict(config or {})
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "epoch": int(epoch),
        "model": _plain_model_state(model),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "config": config_dict,
        "history": list(history or []),
        "extra": dict(extra or {}),
        "rng": rng_state(),
        "training_data": training_data,
    }
    path = Path(path)
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(payload, tmp)
    return path


def estimated_checkpoint_bytes(model: nn.Module, optimizer: str) -> int:
    """About the size in bytes of one checkpoint of ``model`` trained with ``optimizer``.

    The model's state (weights and buffers) plus the optimizer's per-parameter state: Adam and
    AdamW keep two moments, SGD one momentum buffer, each the size of the parameters. The rest
    (config, history, RNG state) is a few hundred kB at most.
    """
    state = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    moments = {"adam": 2, "adamw": 2}.get(optimizer, 1)
    return state + moments * params


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with ``weights_only=True``; CtsegError if missing, corrupt or foreign."""
    path = Path(path)
    if path.is_dir():
        pick = " or ".join(str(path / n) for n in ("best.pth", "last.pth") if (path / n).is_file())
        raise CtsegError(f"{path} is a folder; give a checkpoint file: {pick or 'a .pth in it'}")
    if not path.is_file():
        raise CtsegError(f"checkpoint {path} does not exist; give a .pth file from a run folder")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, OSError) as exc:
        why = (
            "it holds objects other than tensors and plain data, which are refused"
            if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc)
            else f"{type(exc).__name__}: not a readable PyTorch file"
        )
        raise CtsegError(
            f"checkpoint {path} cannot be loaded safely ({why}); "
            "use best.pth/last.pth of a ctseg run"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise CtsegError(
            f"{path} is not a ctseg checkpoint (no 'format': '{FORMAT}' entry); "
            "use best.pth/last.pth of a ctseg run"
        )
    if int(ckpt.get("version", 0)) > VERSION:
        raise CtsegError(
            f"{path} was written by a newer ctseg (checkpoint version {ckpt['version']}); "
            "upgrade ctseg to load it"
        )
    return ckpt


def config_of(ckpt: dict) -> RunConfig:
    """The RunConfig stored in a loaded checkpoint."""
    return RunConfig.from_dict(ckpt["config"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig]:
    """Rebuild the model of a checkpoint from the checkpoint alone; returned in eval mode."""
    ckpt = load_checkpoint(path, map_location="cpu")
    config = config_of(ckpt)
    model = build_model(config.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CtsegError(
            f"weights in {path} do not fit the model its config describes ({str(exc)[:160]})"
        ) from None
    return model.to(device).eval(), config
