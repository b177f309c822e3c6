"""What the machine is doing while a run trains: CPU, memory and (when there is one) GPU use.

Read from /proc on Linux (no psutil); elsewhere the CPU and RAM fields are None. Cheap: a few
small file reads, meant to be sampled every few seconds, not every step.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_PROC = Path("/proc")


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs since boot from /proc/stat; None where unreadable."""
    try:
        fields = (_PROC / "stat").read_text().split("\n", 1)[0].split()[1:]
        values = [float(v) for v in fields]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
    return sum(values[:8]) - idle, sum(values[:8])


def _meminfo_mb() -> tuple[float, float] | None:
    """(used, total) memory in MB from /proc/meminfo (used = total - available)."""
    try:
        info = {}
        for line in (_PROC / "meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = float(rest.split()[0]) / 1024.0  # kB -> MB
        return info["MemTotal"] - info["MemAvailable"], info["MemTotal"]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def _rss_mb() -> float | None:
    """This process's resident memory in MB (/proc/self/statm)."""
    try:
        pages = int((_PROC / "self" / "statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


class MachineSampler:
    """``sample()``: the machine's use since the previous sample, as a flat dict of numbers.

    Keys: ``cpu_pct`` (all cores, 0-100, None on the first sample or off Linux), ``ram_used_mb``,
    ``ram_total_mb``, ``rss_mb`` (this process), and with a CUDA device ``gpu_mem_mb`` (memory
    reserved by this process's torch), ``gpu_mem_total_mb`` and ``gpu_pct`` (utilisation, where
    the driver reports it; None otherwise).
    """

    def __init__(self, device: str = "") -> None:
        self.device = device
        self._last = _cpu_times()
        self._last_t = time.monotonic()

    def sample(self) -> dict:
        now = _cpu_times()
        cpu = None
        if now is not None and self._last is not None and now[1] > self._last[1]:
            cpu = round(100.0 * (now[0] - self._last[0]) / (now[1] - self._last[1]), 1)
        self._last = now
        mem = _meminfo_mb()
        out = {
            "cpu_pct": cpu,
            "ram_used_mb": round(mem[0], 1) if mem else None,
            "ram_total_mb": round(mem[1], 1) if mem else None,
            "rss_mb": None if (rss := _rss_mb()) is None else round(rss, 1),
        }
        if self.device.startswith("cuda"):
            out |= _gpu(self.device)
        return out


def _gpu(device: str) -> dict:
    """GPU memory (reserved by torch here, and the device's total) and utilisation."""
    import torch

    try:
        index = torch.device(device).index or 0
        total = torch.cuda.get_device_properties(index).total_memory / 1e6
        reserved = torch.cuda.memory_reserved(index) / 1e6
    except (RuntimeError, AssertionError):
        return {}
    try:
        util = float(torch.cuda.utilization(index))  # needs the NVML library (pynvml)
    except Exception:  # no NVML: torch raises ModuleNotFoundError or RuntimeError
        util = None
    return {"gpu_pct": util, "gpu_mem_mb": round(reserved, 1), "gpu_mem_total_mb": round(total, 1)}
