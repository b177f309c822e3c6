"""Pick the device, mixed precision and memory format the hardware is good at.

CPU: bf16 autocast only where the CPU has native bf16 (AMX or AVX-512 BF16; ~2.3x faster on
such a CPU for the seed U-Net), with channels_last, and glibc told to keep freed memory for the
next step (``keep_freed_cpu_memory``). CUDA: bf16 where supported, else fp16 with a GradScaler;
channels_last on; cuDNN picks its convolution algorithms by timing them (``prepare_device``).
MPS: fp32.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from contextlib import AbstractContextManager

import torch

from .errors import ConfigError

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameter numbers


#: the mixed-precision modes of TrainConfig.amp (the CLI's --amp choices)
AMP_MODES = ("auto", "bf16", "fp16", "off")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags in /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_bf16() -> bool:
    """True when /proc/cpuinfo lists amx_bf16 or avx512_bf16."""
    return bool({"amx_bf16", "avx512_bf16"} & _cpu_flags())


def cpu_has_amx() -> bool:
    """True when /proc/cpuinfo lists amx_bf16: bf16 matrix tiles, ~4x the bf16 GEMM rate of
    AVX-512 BF16 alone (measured on 2 cores: ~1500 against ~400 GFLOP/s)."""
    return "amx_bf16" in _cpu_flags()


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """ "auto"/None: CUDA, else Apple's MPS, else the CPU; a name is checked against what this
    machine has (ConfigError for an unknown name or a GPU it lacks)."""
    name = "auto" if name is None else str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {name!r} is not a torch device; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device cuda was asked for but no CUDA GPU is available; use auto or cpu")
    return device


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` ("auto", "bf16", "fp16", "off") on ``device``, or None."""
    if mode == "off" or device.type == "mps":
        return None
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise ConfigError("amp fp16 needs a CUDA GPU; use bf16 or off on this device")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def memory_layout(x: torch.Tensor) -> torch.memory_format:
    """Channels last (a 4D or 5D tensor lying so in memory), else the default layout."""
    last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    return (
        last
        if last is not None and x.is_contiguous(memory_format=last)
        else torch.contiguous_format
    )


def resolve_channels_last(
    value: bool | str,
    device: torch.device,
    amp: torch.dtype | None,
    norm: str = "batch",
    volumetric: bool = False,
) -> bool:
    """ "auto": on a GPU, and on a CPU under bf16 autocast unless a 2D model uses instance norm
    (PyTorch's CPU InstanceNorm2d copies channels_last inputs: the phantom demo's epochs took
    15 s with channels_last, 13 s without). A 3D model's instance norms are swapped for
    ``models.nnunet.ChannelsLastInstanceNorm3d``, which keeps the layout, and runs channels
    last on a CPU in float32 too (``benchmarks/training_throughput.py --kind 3d``: phantom_3d's
    step 1.5x faster channels last in bf16 on a Xeon with AMX, 1.16x in float32 on an AVX2 EPYC
    without native bf16, where float32 is what "auto" picks)."""
    if isinstance(value, bool):
        return value
    if value != "auto":
        raise ConfigError(f"channels_last must be true, false or 'auto' (got {value!r})")
    if device.type == "cpu":
        return volumetric or (amp is not None and norm != "instance")
    return device.type == "cuda"


def autocast_context(device: torch.device, amp: torch.dtype | None) -> AbstractContextManager:
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def prepare_device(device: torch.device) -> None:
    """Process-wide settings for training on ``device``, before the first step.

    CPU: ``keep_freed_cpu_memory``. CUDA: ``cudnn.benchmark``, so cuDNN times its convolution
    algorithms for each new input shape and keeps the fastest (training slices all have the
    target size: one search per shape, at the first steps), as nnU-Net trains; its choice may
    differ between runs, so CUDA runs are not bitwise repeatable (CPU runs are).
    """
    if device.type == "cpu":
        keep_freed_cpu_memory()
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


@functools.cache
def keep_freed_cpu_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS (Linux).

    A CPU training step allocates and frees the same multi-MB activation buffers every time.
    With glibc's defaults many of them are mmap-ed and unmap-ed at each step, and the kernel
    zeroes their pages again on first touch: the phantom demo's step with deep supervision
    took 123 ms instead of 97. Raising the mmap threshold to its 32 MiB maximum and switching
    heap trimming off keeps them in the heap. Process-wide and once: resident memory then
    stays at the peak of one step (still bounded by the batch) instead of dropping between
    steps. Returns False where there is no glibc (macOS, Windows, musl), changing nothing.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    done = (
        mallopt(_M_MMAP_THRESHOLD, 32 * 2**20) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    )
    log.debug("glibc keeps freed memory for reuse: %s", done)
    return done


def loader_workers(requested: int | None, device: torch.device, local_ranks: int = 1) -> int:
    """Loader processes per rank: ``requested``, or when None 0 on a CPU and up to 8 otherwise.

    On a CPU the model step uses every core and a batch is read in ~1 % of its time: worker
    processes would only compete for the cores. A GPU step is 10-100x faster: loading in the
    training process would stall it (one process reads a 512 x 512 slice of a real CT and
    resizes it to 256 x 256 at ~1,900 slices/s; an H100 trains the seed U-Net on ~800 a second
    in bf16), so each of the ``local_ranks`` processes on this machine takes an equal share of
    its cores, one kept free.
    """
    if requested is not None:
        return requested
    if device.type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 1) // max(1, local_ranks) - 1))


#: where the kernel shows a container's memory limit and use (cgroup v2, then v1)
CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def host_free_bytes(cgroup_files=CGROUP_FILES) -> int:
    """Memory a new job on this host can use now, in bytes: MemAvailable of /proc/meminfo (else
    the physical pages), and no more than the container's limit less its use where a cgroup
    limits the process (a served dashboard in a container sees the host's free memory in
    /proc/meminfo, not its own limit)."""
    free = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            free = 8 << 30
    for limit_file, usage_file in cgroup_files:
        try:
            with open(limit_file, encoding="ascii") as f:
                limit = f.read().strip()
            with open(usage_file, encoding="ascii") as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:  # "max", or v1's page-rounded 2**63
            return max(0, min(free, int(limit) - used))
        return free
    return free


def free_bytes(device: torch.device | str) -> int:
    """Memory free for new tensors on ``device``, in bytes: on a GPU what CUDA reports free plus
    what PyTorch's caching allocator holds there unused (a served dashboard's earlier work);
    elsewhere the host's (``host_free_bytes``; MPS shares the host's memory)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    return host_free_bytes()
