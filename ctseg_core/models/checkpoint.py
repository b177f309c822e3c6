"""Checkpoints: written atomically, loadable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of plain tensors, numbers, strings, lists and dicts only::

    {"format": "ctseg-checkpoint", "version": 1, "epoch": int (completed epochs),
     "model": state_dict, "optimizer": state_dict | None, "scheduler": state_dict | None,
     "config": RunConfig.to_dict(), "history": [epoch records], "extra": {...},
     "rng": {"torch": ByteTensor, ...}, "training_data": {...} | None}

so a file from elsewhere cannot run code when loaded, and the model is rebuilt from the
checkpoint alone (``load_model``). ``training_data``: what the model was trained on
(``data.domain``); checkpoints written before it was recorded have no such key and load the same.
"""

from __future__ import annotations

import gc
import logging
import pickle
import shlex
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..errors import ConfigError, CtsegError
from ..fileio import DISK_FULL, atomic_path, cannot_read, is_dir, is_file, read_error
from . import build_model

log = logging.getLogger(__name__)

FORMAT = "ctseg-checkpoint"
#: 2: the config holds model.output (an older ctseg refuses it as an unknown setting, so it is
#: told to upgrade instead); version 1 files load as before
VERSION = 2

#: what torch's own writer raises when a write fails (it does not pass the OSError on): the
#: first failure, and the one its cleanup raises over it ("[enforce fail at
#: inline_container.cc:672] . unexpected pos 704 vs 598")
_TORCH_WRITE_FAILED = ("unexpected pos", "file write failed", "iostream error")


class CheckpointWriteError(CtsegError):
    """A checkpoint could not be written (a full disk, a refused write); the file under its
    name, if any, is the previous one, whole."""


class UnreadableCheckpoint(CtsegError):
    """A checkpoint file that cannot be used; ``problem`` is the message without the advice."""

    def __init__(self, problem: str, advice: str = "use best.pth/last.pth of a ctseg run"):
        super().__init__(f"{problem}; {advice}")
        self.problem = problem


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
    reason, full = None, False
    try:
        with atomic_path(path, suffix=".pth") as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as exc:
        if isinstance(exc, RuntimeError) and not any(s in str(exc) for s in _TORCH_WRITE_FAILED):
            raise
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        full = isinstance(exc, OSError) and exc.errno in DISK_FULL
    if reason is None:
        return path
    # raised out of the except block: the failed write's traceback holds torch's writer, and
    # with it the open (already deleted) temporary file and all the disk space it took
    gc.collect()
    need = _tensor_bytes(payload)
    if full or _free_bytes(path.parent) < need:
        raise CheckpointWriteError(no_space_text(path.parent, need))
    raise CheckpointWriteError(f"cannot write {path} ({reason})")


def _tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a nested dict / list: about the size of a checkpoint file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f}" if n < 10e6 else f"{n / 1e6:.0f}"


def no_space_text(folder: str | Path, checkpoint_bytes: int) -> str:
    """The line of a full disk, with the free space measured now: "no space left on <folder>
    (N MB free; a checkpoint needs M MB)"."""
    free = _mb(_free_bytes(Path(folder)))
    return (
        f"no space left on {folder} ({free} MB free; a checkpoint needs {_mb(checkpoint_bytes)} MB)"
    )


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
    if exc := read_error(path):  # torch would call it "not a readable PyTorch file"
        problem, _, fix = cannot_read(f"checkpoint {path}", exc, path).rpartition("; ")
        raise UnreadableCheckpoint(problem, fix) from None
    if is_dir(path):
        pick = " or ".join(str(path / n) for n in ("best.pth", "last.pth") if is_file(path / n))
        raise CtsegError(f"{path} is a folder; give a checkpoint file: {pick or 'a .pth in it'}")
    if not is_file(path):
        raise UnreadableCheckpoint(
            f"checkpoint {path} does not exist", "give a .pth file from a run folder"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a file that is no PyTorch file fails anywhere in the unpickler
        if isinstance(exc, EOFError) or "central directory" in str(exc):
            size = path.stat().st_size
            raise UnreadableCheckpoint(
                f"checkpoint {path} is cut short ({_mb(size)} MB; its end is missing, as a write "
                "stopped by a full disk or a crash leaves it)"
            ) from None
        why = (
            "it holds objects other than tensors and plain data, which are refused"
            if isinstance(exc, pickle.UnpicklingError) and "Unsupported global" in str(exc)
            else f"{type(exc).__name__}: not a readable PyTorch file"
        )
        raise UnreadableCheckpoint(
            f"checkpoint {path} cannot be loaded safely ({why})", *_nnunet_advice(path)
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or "model" not in ckpt:
        raise UnreadableCheckpoint(
            f"{path} is not a ctseg checkpoint (no 'format': '{FORMAT}' entry)",
            *_nnunet_advice(path),
        )
    if int(ckpt.get("version", 0)) > VERSION:
        raise UnreadableCheckpoint(
            f"{path} was written by a newer ctseg (checkpoint version {ckpt['version']})",
            "upgrade ctseg to load it",
        )
    return ckpt


def _nnunet_advice(path: Path) -> tuple[str, ...]:
    """(advice,) for a fold's checkpoint of an nnU-Net model folder, which ctseg opens as a
    folder (``--model``); () for any other file (the default advice)."""
    try:
        model = path.parent.parent
        if path.parent.name.startswith("fold_") and is_file(model / "plans.json"):
            return (f"it is an nnU-Net model's: give its model folder instead (--model {model})",)
    except OSError:
        pass
    return ()


def checkpoint_structures(path: str | Path) -> list[str]:
    """The structures (and merges, ``labels.MERGES``) a checkpoint's run learns, in its output
    order, read memory-mapped (the tensors are not read); CtsegError, one line, for a file
    that is not a ctseg checkpoint."""
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        config = ckpt["config"] if ckpt.get("format") == FORMAT else None
    except Exception:
        config = None
    if not isinstance(config, dict):
        config = load_checkpoint(path)["config"]  # its one-line refusal, or a legacy layout
    return list(RunConfig.from_dict(config).data.structures)


def intact_checkpoints(run_dir: str | Path, skip: Path | None = None) -> list[tuple[Path, int]]:
    """The complete ctseg checkpoints of a run folder as (path, epoch), newest epoch first
    (last.pth before best.pth before checkpoint_epoch<N>.pth at the same epoch); ``skip``: one
    file left out (the broken one).

    Cheap: each is opened memory-mapped, which reads its index and plain data but not the
    tensors; a file cut short (no zip index at its end) or foreign is left out.
    """
    run_dir = Path(run_dir)
    names = ["last.pth", "best.pth"]
    names += sorted(p.name for p in run_dir.glob("checkpoint_epoch*.pth"))
    found = []
    for rank, name in enumerate(names):
        path = run_dir / name
        if not is_file(path) or (skip is not None and path == Path(skip)):
            continue
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            epoch = int(ckpt["epoch"]) if ckpt.get("format") == FORMAT else None
        except Exception:  # any file that does not open is not intact
            epoch = None
        if epoch is not None:
            found.append((rank, path, epoch))
    found.sort(key=lambda f: (-f[2], f[0]))
    return [(path, epoch) for _, path, epoch in found]


def later_than(run_dir: str | Path, epoch: int, skip: Path | None = None) -> list[str]:
    """What ``run_dir`` holds past ``epoch``, which a resume from an epoch-``epoch`` checkpoint
    in it would replace: its intact checkpoints of later epochs ("best.pth (epoch 4)"; ``skip``
    left out) and history.jsonl's later records ("history.jsonl (epochs 3-6)"); [] for none."""
    from ..runs.run_folder import read_history

    later = [f"{p.name} (epoch {e})" for p, e in intact_checkpoints(run_dir, skip) if e > epoch]
    records = [
        r["epoch"]
        for r in read_history(run_dir)
        if isinstance(r.get("epoch"), int) and r["epoch"] > epoch
    ]
    if records:
        later.append(f"history.jsonl (epochs {min(records)}-{max(records)})")
    return later


def resume_command(checkpoint: Path, branch: bool = False) -> str:
    """The command that continues a run from ``checkpoint`` (its folder, for last.pth);
    ``branch``: in a new run folder (``later_than`` finds epochs past it in its own)."""
    target = checkpoint.parent if checkpoint.name == "last.pth" else checkpoint
    into = " --branch NEW_NAME" if branch else ""
    return f"ctseg train --resume {shlex.quote(str(target))}{into}"


def continue_hint(run_dir: str | Path, first: str = "", skip: Path | None = None) -> str:
    """How to go on after a failure, in words: the intact checkpoints of ``run_dir`` and the
    command that continues from the newest ("intact: last.pth (epoch 2), best.pth (epoch 1):
    free disk space, then continue with `ctseg train --resume RUN`"), or the command that starts
    anew from its settings; ``first``: what to do before (free disk space)."""
    then = f"{first}, then " if first else ""
    intact = intact_checkpoints(run_dir, skip)
    if not intact:
        config = shlex.quote(str(Path(run_dir) / "config.json"))
        return (
            f"no intact checkpoint in {run_dir}: {then}start a new run with its settings, "
            f"`ctseg train --config {config} --run NEW_NAME`"
        )
    names = ", ".join(f"{p.name} (epoch {e})" for p, e in intact)
    newest, epoch = intact[0]
    branch = newest.name != "last.pth" and bool(later_than(run_dir, epoch, skip))
    return f"intact: {names}: {then}continue with `{resume_command(newest, branch)}`"


def resume_source(path: str | Path) -> tuple[Path, Path]:
    """(run folder, checkpoint) that ``--resume PATH`` names: a run folder and its last.pth, or
    a checkpoint file of a run folder (best.pth, checkpoint_epoch<N>.pth); ConfigError for a file
    outside a run folder (no config.json beside it)."""
    path = Path(path)
    if not is_file(path):
        return path, path / "last.pth"
    if not is_file(path.parent / "config.json"):
        raise ConfigError(
            f"{path} is a file outside a run folder (no config.json beside it); resume takes a "
            "run folder, whose last.pth it continues, or a checkpoint file in one"
        )
    return path.parent, path


def load_to_resume(run_dir: Path, source: Path) -> dict:
    """``source`` (a checkpoint of ``run_dir``) loaded to continue training; ConfigError naming
    the intact checkpoints of the run and the command that continues from one when it cannot
    be read (cut short by a full disk, say)."""
    try:
        return load_checkpoint(source)
    except UnreadableCheckpoint as exc:
        if not is_dir(run_dir) or "newer ctseg" in exc.problem:
            raise  # no run folder to look in; a file to upgrade for, not a broken one
        problem = exc.problem
    raise ConfigError(f"{problem}; {continue_hint(run_dir, skip=source)}")


def config_of(ckpt: dict) -> RunConfig:
    """The RunConfig stored in a loaded checkpoint."""
    return RunConfig.from_dict(ckpt["config"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, RunConfig]:
    """Rebuild the model of a checkpoint from the checkpoint alone; returned in eval mode."""
    ckpt = load_checkpoint(path, map_location="cpu")
    config = config_of(ckpt)
    # sized on the meta device first: a config may describe a network far larger than the
    # weights the file holds (a few KB asking for tens of GB), which is refused, not built
    with torch.device("meta"):
        shapes = {
            k: tuple(v.shape)
            for k, v in build_model(config.model, config.data).state_dict().items()
        }
    weights = ckpt["model"] if isinstance(ckpt.get("model"), dict) else {}
    held = {k: tuple(v.shape) for k, v in weights.items() if isinstance(v, torch.Tensor)}
    if shapes != held:
        differ = sorted(set(shapes) ^ set(held)) or [k for k in shapes if shapes[k] != held[k]]
        raise CtsegError(
            f"weights in {path} do not fit the model its config describes ({len(differ)} "
            f"tensors differ, e.g. {differ[0]}: {shapes.get(differ[0])} in the config, "
            f"{held.get(differ[0])} in the file); use a checkpoint written by ctseg"
        )
    model = build_model(config.model, config.data)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CtsegError(
            f"weights in {path} do not fit the model its config describes ({str(exc)[:160]})"
        ) from None
    return model.to(device).eval(), config
