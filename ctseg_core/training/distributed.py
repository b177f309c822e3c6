"""torch.distributed helpers: a no-op on one process, DDP under ``torchrun``.

Launch: ``torchrun --nproc_per_node N -m ctseg_core train ...``. torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK; ``init_from_env`` starts the process group (NCCL on GPUs, gloo on CPU).
Only rank 0 writes the run folder and prepares the cache (the others wait at a barrier, whose
timeout is the process group's, 30 minutes by default: prepare a large dataset beforehand with
``ctseg prepare``); every rank trains on its shard of each epoch's draw.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_world_size() -> int:
    """Processes of this run on this machine (torchrun's LOCAL_WORLD_SIZE; 1 without it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if is_distributed() else 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str = "auto") -> bool:
    """Start the process group when launched by torchrun; True when this call started it."""
    if not launched_by_torchrun() or is_distributed():
        return False
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def shutdown(wait: bool = True) -> None:
    """Leave the process group; ``wait``: first wait for every rank to get here.

    Without the wait a rank that finished early tore down its gloo connections while rank 0
    was still writing the last checkpoint, and aborted ("terminate called without an active
    exception") in about one run in three. After an error there is no wait: the other ranks
    may never arrive.
    """
    if is_distributed():
        if wait:
            barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (one all-gather)."""
    if not is_distributed():
        return bool(flag)
    flags: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(flags, bool(flag))
    return any(flags)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers of ``module`` (batch norm's running statistics), in place."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place when distributed); returns it."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
