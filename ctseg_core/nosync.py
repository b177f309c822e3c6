"""Tensor helpers for the training step that never make the host wait for an accelerator.

A CUDA step is fast only while the host queues work ahead of the GPU. Any read of a device
value, and any blocking host-to-device copy (``t.to("cuda")`` from pageable memory,
``torch.tensor(data, device="cuda")``), waits until the GPU has finished everything queued;
the host then launches the next kernels one by one while the GPU idles between them. Less
obvious culprits: ``torch.bincount`` on CUDA reads the input's minimum and maximum back to size
its output, and boolean-mask indexing reads the number of selected elements.
The tests run the training step's tensor work on the ``meta`` device, where any such read fails.
"""

from __future__ import annotations

import torch


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A (small) CPU tensor on ``device``, copied without making the host wait for the device.

    CUDA: through pinned memory, non-blocking (the caching host allocator keeps the pinned
    buffer until the copy is done). CPU: ``t`` itself.
    """
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, non_blocking=True)


def count_values(values: torch.Tensor, length: int) -> torch.Tensor:
    """(length,) int64 counts of each value 0..length-1 in ``values`` (int64, any shape).

    Every value must be below ``length`` (unlike ``torch.bincount``, no longer output is made).
    CPU: ``torch.bincount``. Elsewhere an ``index_add_`` of ones, whose output length does not
    depend on the data, so nothing is read back; it adds in int32 (64-bit atomics are missing on
    some GPUs, e.g. Apple's), exact below 2**31 values per call.
    """
    flat = values.reshape(-1)
    if flat.device.type == "cpu":
        return torch.bincount(flat, minlength=length)[:length]
    return _count_by_index_add(flat, length)


def _count_by_index_add(flat: torch.Tensor, length: int) -> torch.Tensor:
    counts = torch.zeros(length, dtype=torch.int32, device=flat.device)
    ones = torch.ones(flat.shape, dtype=torch.int32, device=flat.device)
    return counts.index_add_(0, flat, ones).long()
