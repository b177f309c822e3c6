"""Dice + CE of channels-last logits, computed in blocks of voxels (the softmax loss's fast path).

Channels-last logits (B, K, *spatial) are a contiguous (N, K) matrix of N = B x prod(spatial)
voxel rows. The loss and its gradient go through that matrix a block of rows at a time, in
float32, and save nothing of size N x K for backward but the logits themselves: backward
computes the probabilities of each block again (up to ``KEEP_BYTES`` of them are kept
instead: below glibc's mmap threshold a float32 copy is cheaper than a second softmax). On a
CPU a block of ``CPU_BLOCK_VALUES`` stays in the cache, where whole-size float32 passes went to
memory: phantom_3d's full-resolution head
(48 x 48 x 32 voxels x 118 classes under bf16) took 51 ms forward and backward as whole passes
and 25 ms in blocks on 2 cores (a Xeon with AMX), a seventh of its training step, and no 35 MB
float32 copy of the probabilities is kept between forward and backward (glibc maps and unmaps
buffers over 32 MiB at every step, and the kernel zeroes their pages again). Elsewhere (a GPU)
a block holds up to ``DEVICE_BLOCK_VALUES`` values: a few blocks of a handful of kernels each,
no saved float32 probabilities (a 2 x 128^3 patch with 118 classes would keep 2 GB of them) and
no float32 temporary larger than a block.

The gradient (``losses._DiceCE``'s notation): with p = softmax(z) per row, N rows, S the
foreground classes present, D_k = P_k + T_k + s: dL/dz = p * (a_k + 1/N - c) + onehot *
(p_y b_y - 1/N), a_k = (2 I_k + s) / (|S| D_k^2), b_k = -2 / (|S| D_k) for k in S (else 0),
c = sum_k p_k a_k + p_y b_y per row.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from ..nosync import count_values

#: values (rows x classes) of a block on a CPU: 2 MB of float32, a core's L2 cache on the Xeons
#: measured (118 classes: blocks of 1024 to 16384 rows took the same time there)
CPU_BLOCK_VALUES = 2**19

#: float32 probabilities up to this size are kept for backward, not computed again: the mmap
#: threshold ``device.keep_freed_cpu_memory`` sets, below which a step's buffer is reused from
#: the heap, not mapped and zeroed anew (2 CPU cores, bf16 logits, forward and backward: 2
#: classes x 590k voxels 19 ms kept against 38 ms recomputed, 40 x 197k 21 against 28 ms; 118
#: x 74k, 35 MB, 22 ms recomputed against 41 ms for one whole-size pass kept)
KEEP_BYTES = 32 * 2**20

#: values (rows x classes) of a block elsewhere: 256 MB of float32
DEVICE_BLOCK_VALUES = 2**26


def dice_terms(inter: torch.Tensor, pred_sum: torch.Tensor, ref_sum: torch.Tensor, smooth: float):
    """(1 - mean soft Dice over the foreground classes present, a, b) from the per-class (K,)
    float32 intersection, predicted and reference sums; a and b (K,) as in the module doc (0
    for classes absent from the reference and for the background)."""
    present = ref_sum > 0
    present[0] = False
    # the count stays a tensor: reading it would make a GPU wait here every step
    count = present.sum().to(ref_sum.dtype).clamp(min=1.0)
    denom = (pred_sum + ref_sum + smooth).clamp(min=1e-8)
    dice = (2 * inter + smooth) / denom
    zero = torch.zeros_like(dice)
    dice_loss = torch.where(present, 1.0 - dice, zero).sum() / count
    a = torch.where(present, (2 * inter + smooth) / denom**2 / count, zero)
    b = torch.where(present, -2.0 / denom / count, zero)
    return dice_loss, a, b


def _rows(logits: torch.Tensor) -> torch.Tensor:
    """The (N, K) row view of channels-last (B, K, *spatial) logits (no copy)."""
    k = logits.shape[1]
    return logits.permute(0, *range(2, logits.dim()), 1).reshape(-1, k)


def _blocks(n: int, k: int, device: torch.device, whole: bool = False):
    """(start, stop) of each block of rows (one block of all of them: ``whole``)."""
    step = max(1, (CPU_BLOCK_VALUES if device.type == "cpu" else DEVICE_BLOCK_VALUES) // k)
    step = n if whole else step
    return ((start, min(n, start + step)) for start in range(0, n, step))


class DiceCEChannelsLast(torch.autograd.Function):
    """Cross-entropy + (1 - soft Dice over the foreground classes present), in row blocks.

    ``classes``: (B, *spatial) int64 class indices. Computed in float32 with autocast off in
    forward and backward (an autocast that reaches backward would run its sums in float16)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, classes: torch.Tensor, smooth: float) -> torch.Tensor:
        if classes.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(
                f"classes of shape {tuple(classes.shape)} do not match logits of shape "
                f"{tuple(logits.shape)} (B, K, *spatial)"
            )
        with torch.autocast(logits.device.type, enabled=False):
            return DiceCEChannelsLast._forward(ctx, logits, classes, smooth)

    @staticmethod
    def _forward(ctx, logits: torch.Tensor, classes: torch.Tensor, smooth: float) -> torch.Tensor:
        z = _rows(logits)
        n, k = z.shape
        flat = classes.reshape(n)
        f32 = {"dtype": torch.float32, "device": z.device}
        # kept: one block of all rows, the probabilities saved; else cache-sized blocks
        keep = 4 * n * k <= KEEP_BYTES
        kept = None
        p_true = torch.empty(n, **f32)
        pred_sum = torch.zeros(1, k, **f32)
        log_true_sum = torch.zeros((), **f32)
        for start, stop in _blocks(n, k, z.device, whole=keep):
            # float32 straight from bf16 logits: no separate cast of the block
            block = torch.log_softmax(z[start:stop], dim=1, dtype=torch.float32)
            log_true = block.gather(1, flat[start:stop].unsqueeze(1)).squeeze(1)
            log_true_sum += log_true.sum()
            p_true[start:stop] = log_true.exp()
            block.exp_()
            # a (1, rows) x (rows, K) product: about half the time of a column sum
            pred_sum.addmm_(block.new_ones(1, stop - start), block)
            if keep:
                kept = block
        pred_sum = pred_sum.view(k)
        ref_sum = count_values(flat, k).to(torch.float32)
        inter = torch.zeros(k, **f32).index_add_(0, flat, p_true)
        dice_loss, a, b = dice_terms(inter, pred_sum, ref_sum, smooth)
        ctx.save_for_backward(logits, classes, p_true, a, b, kept)
        return -log_true_sum / n + dice_loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        with torch.autocast(grad_out.device.type, enabled=False):
            return DiceCEChannelsLast._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx, grad_out: torch.Tensor):
        logits, classes, p_true, a, b, kept = ctx.saved_tensors
        z = _rows(logits)
        n, k = z.shape
        flat = classes.reshape(n)
        scale = grad_out.to(torch.float32)  # a scalar: folded into the small terms
        a_scaled = ((a + 1.0 / n) * scale).unsqueeze(0)
        b_true = b[flat] * p_true  # (N,)
        grad = torch.empty_like(z)  # (N, K) in the logits' dtype
        for start, stop in _blocks(n, k, z.device, whole=kept is not None):
            if kept is None:
                p = torch.softmax(z[start:stop], dim=1, dtype=torch.float32)
            else:  # read, not changed: a second backward (retain_graph) reads them again
                p = kept[start:stop]
            b_block = b_true[start:stop]
            c = torch.addmv(b_block, p, a).mul_(scale)  # (rows,)
            # p * (a_k - c) as two passes over p, without a full-size (a_k - c) temporary
            g = p * a_scaled
            g.addcmul_(p, c.unsqueeze(1), value=-1.0)
            g.scatter_add_(
                1, flat[start:stop].unsqueeze(1), ((b_block - 1.0 / n) * scale).unsqueeze(1)
            )
            grad[start:stop] = g
        # (N, K) back to (B, K, *spatial), lying channels last as the logits do
        spatial = logits.shape[2:]
        grad = grad.view(logits.shape[0], *spatial, k)
        return grad.permute(0, grad.dim() - 1, *range(1, grad.dim() - 1)), None, None
