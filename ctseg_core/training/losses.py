"""Losses over logits (B, K, *spatial) and class-index targets (B, *spatial) made on the fly.

Spatial axes are whatever the model gives: (H, W) for a slice model, (D, H, W) for a volumetric
one; nothing here assumes two. Targets: ``classes = lut[labels]`` with
``lut = models.head.class_lut(config)`` maps the uint8 label
slice to class indices (0 background, i for ``structures[i-1]``); nothing stores 117 channels.
Sigmoid losses compare channel i - 1 with ``classes == i`` (an implicit one-hot built per batch).

- ``dice_ce`` (softmax, default; nnU-Net's): cross-entropy + (1 - soft Dice) over the
  foreground classes present in the batch (batch Dice: sums over the whole batch);
- ``bce``: binary cross-entropy with logits per structure channel (the seed notebooks' loss);
- ``dice``: 1 - soft Dice of the per-structure sigmoids, over structures present in the batch;
- ``focal``: sigmoid focal loss (gamma 2, alpha 0.25), mean over all elements.

Partially annotated subjects: every loss takes ``annotated`` (B, 1 + S) bool, False where the
sample's subject has no mask file for class c (None: all annotated, the fast path). A missing
mask does not say "background", so such classes are never penalised there: softmax merges
them into the background for the cross-entropy (the background label then means "background or
an unannotated class", the marginal loss of Shi et al., MedIA 2021) and leaves the class out of
that sample's Dice sums (predicted, reference and intersection: a merge missing one member's
mask still labels the others); sigmoid losses give their channels zero weight there.

Everything is computed in float32 whatever the autocast dtype of the logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..device import memory_layout
from ..errors import ConfigError
from ..nosync import count_values, to_device
from .dice_ce_channels_last import DiceCEChannelsLast, dice_terms

SMOOTH = 1e-5
LossFn = Callable[..., torch.Tensor]  # (logits, classes, annotated=None) -> scalar


def _soft_dice_terms(
    probs: torch.Tensor, classes: torch.Tensor, channel_class: int, weight=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class (intersection, predicted sum, reference sum), each (num_classes,).

    ``probs`` (B, K, *spatial) is the probability of class ``c + channel_class`` in channel c
    (0 for softmax, 1 for sigmoid channels). Uses a gather + counts instead of a one-hot.
    ``weight`` (B, K) scales each sample's channels in all three sums (0 = not counted: a
    class without a mask file in that sample, whose voxels a partly annotated merge may still
    label; counted in the reference and intersection alone, its Dice reached 2).
    """
    k = probs.shape[1]
    num_classes = k + channel_class
    flat_classes = classes.reshape(-1)
    channel = (classes - channel_class).clamp(min=0).unsqueeze(1)  # (B, 1, *spatial)
    p_true = probs.gather(1, channel).reshape(-1)
    # classes without a channel add 0 (a mask would select a data-dependent count: a GPU sync)
    p_true = p_true * (flat_classes >= channel_class)
    if weight is None:
        ref_sum = count_values(flat_classes, num_classes).to(probs.dtype)
    else:  # each voxel weighted by its sample's weight of its class
        voxel = weight.to(probs.dtype).gather(1, channel.flatten(1)).reshape(-1)
        voxel = torch.where(flat_classes >= channel_class, voxel, torch.ones_like(voxel))
        ref_sum = torch.zeros(num_classes, dtype=probs.dtype, device=probs.device)
        ref_sum.index_add_(0, flat_classes, voxel)
        p_true = p_true * voxel
    intersection = torch.zeros(num_classes, dtype=probs.dtype, device=probs.device)
    intersection.index_add_(0, flat_classes, p_true)
    pred_sum = torch.zeros(num_classes, dtype=probs.dtype, device=probs.device)
    per_sample = probs.flatten(2).sum(dim=2)  # (B, K)
    if weight is not None:
        per_sample = per_sample * weight
    pred_sum[channel_class:] = per_sample.sum(dim=0)
    return intersection, pred_sum, ref_sum


def _dice_loss(intersection, pred_sum, ref_sum, first_class: int) -> torch.Tensor:
    """1 - mean soft Dice over the classes present (0 when none is; no device sync)."""
    inter, pred, ref = intersection[first_class:], pred_sum[first_class:], ref_sum[first_class:]
    present = (ref > 0).to(inter.dtype)
    dice = (2 * inter + SMOOTH) / (pred + ref + SMOOTH).clamp(min=1e-8)
    count = present.sum()
    return (count - (dice * present).sum()) / count.clamp(min=1.0)


def dice_ce_reference(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Dice + CE through autograd (the definition; ``dice_ce_loss`` computes the same faster)."""
    log_probs = torch.log_softmax(logits.float().contiguous(), dim=1)
    ce = F.nll_loss(log_probs, classes)
    probs = log_probs.exp()
    return ce + _dice_loss(*_soft_dice_terms(probs, classes, 0), first_class=1)


class _DiceCE(torch.autograd.Function):
    """Dice + CE of logits in the default layout with a hand-written backward: with ~118 output
    channels at full resolution the autograd graph of the loss (zero-filled gradient buffers,
    gathers, two softmax passes) cost more than the network; here the gradient is one fused
    expression over the probabilities (channels-last logits: ``DiceCEChannelsLast``).

    With p = softmax(z), N pixels, S the foreground classes present in the batch,
    D_k = P_k + T_k + s: dL/dz = p * (a_k - c) + p / N + onehot * (p_y b_y - 1 / N), where
    a_k = (2 I_k + s) / (|S| D_k^2), b_k = -2 / (|S| D_k) for k in S (else 0) and
    c = sum_k p_k a_k + p_y b_y per pixel.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        n = classes.numel()
        # float32 softmax straight from bf16 logits: no separate full-size cast
        probs = torch.log_softmax(logits.contiguous(), dim=1, dtype=torch.float32)
        index = classes.unsqueeze(1)
        ce = -probs.gather(1, index).sum() / n
        probs.exp_()
        p_true = probs.gather(1, index).squeeze(1)  # (B, *spatial)
        flat = classes.reshape(-1)
        ref_sum = count_values(flat, k).to(probs.dtype)
        inter = torch.zeros(k, dtype=probs.dtype, device=probs.device)
        inter.index_add_(0, flat, p_true.reshape(-1))
        pred_sum = probs.sum(dim=[d for d in range(probs.dim()) if d != 1])
        dice_loss, a, b = dice_terms(inter, pred_sum, ref_sum, SMOOTH)
        ctx.save_for_backward(probs, classes, p_true, a, b)
        ctx.n, ctx.dtype = n, logits.dtype
        return ce + dice_loss

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        probs, classes, p_true, a, b = ctx.saved_tensors
        b_true = b[classes] * p_true  # (B, *spatial)
        # a row vector times the (K, H*W) blocks: no transposing copy of probs (an einsum over k
        # made one, and cost the NCHW backward 4x the time of this)
        bsz, k = probs.shape[:2]
        c = torch.matmul(a.view(1, 1, k), probs.view(bsz, k, -1)).view(b_true.shape) + b_true
        a_k = a.view(1, -1, *[1] * (probs.dim() - 2))
        scale = grad_out.to(probs.dtype)  # a scalar: folded into the small terms, not a full pass
        # p * (a_k - c) as two passes over p, without a full-size (a_k - c) temporary
        grad = probs * ((a_k + 1.0 / ctx.n) * scale)
        grad.addcmul_(probs, (c * scale).unsqueeze(1), value=-1.0)
        grad.scatter_add_(1, classes.unsqueeze(1), ((b_true - 1.0 / ctx.n) * scale).unsqueeze(1))
        return grad.to(ctx.dtype), None


def dice_ce_partial(
    logits: torch.Tensor, classes: torch.Tensor, annotated: torch.Tensor
) -> torch.Tensor:
    """Dice + CE when some samples lack some classes' masks (autograd; see the module doc).

    With every class annotated it equals ``dice_ce_reference``.
    """
    z = logits.float().contiguous()
    log_norm = torch.logsumexp(z, dim=1)  # (B, *spatial)
    absorbs = ~annotated
    absorbs[:, 0] = True  # the background label stands for itself and the unannotated classes
    absorbs = absorbs.view(*absorbs.shape, *_spatial_ones(z))
    merged = torch.logsumexp(z.masked_fill(~absorbs, float("-inf")), dim=1)
    labelled = z.gather(1, classes.unsqueeze(1)).squeeze(1)
    ce = (log_norm - torch.where(classes == 0, merged, labelled)).mean()
    probs = torch.softmax(z, dim=1)
    terms = _soft_dice_terms(probs, classes, 0, weight=annotated.to(probs.dtype))
    return ce + _dice_loss(*terms, first_class=1)


def annotated_rows(
    table: torch.Tensor | None, subjects: torch.Tensor | None, device: torch.device
) -> torch.Tensor | None:
    """The ``annotated`` argument for a batch: the (B, K) rows of an (S, K) CPU table
    (``SliceDataset.annotated_classes()``) for the (B,) subject indices, on ``device``.

    None (every loss's fast path) when there is no table or the batch annotates every class;
    decided on the CPU, so a GPU is never waited for.
    """
    if table is None or subjects is None:
        return None
    rows = table[subjects.cpu()]
    return None if bool(rows.all()) else to_device(rows, device)


def dice_ce_loss(
    logits: torch.Tensor, classes: torch.Tensor, annotated: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice over the foreground classes present in the batch)."""
    if annotated is not None:
        return dice_ce_partial(logits, classes, annotated)
    if memory_layout(logits) != torch.contiguous_format:
        return DiceCEChannelsLast.apply(logits, classes, SMOOTH)
    return _DiceCE.apply(logits, classes)


def _spatial_ones(logits: torch.Tensor) -> list[int]:
    """[1] * the number of spatial axes: views a (B, K) tensor against (B, K, *spatial)."""
    return [1] * (logits.dim() - 2)


def _sigmoid_targets(logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    k = logits.shape[1]
    channels = torch.arange(1, k + 1, device=classes.device).view(1, k, *_spatial_ones(logits))
    return (classes.unsqueeze(1) == channels).float()


def _channel_weight(logits: torch.Tensor, annotated: torch.Tensor | None) -> torch.Tensor | None:
    """(B, K, 1, ..) float32: 1 for the structure channels a sample annotates, else 0."""
    if annotated is None:
        return None
    return annotated[:, 1:].to(torch.float32).view(*logits.shape[:2], *_spatial_ones(logits))


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is None:
        return values.mean()
    total = (weight.sum() * math.prod(values.shape[2:])).clamp(min=1.0)
    return (values * weight).sum() / total


def bce_loss(
    logits: torch.Tensor, classes: torch.Tensor, annotated: torch.Tensor | None = None
) -> torch.Tensor:
    logits = logits.float().contiguous()
    targets = _sigmoid_targets(logits, classes)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return _weighted_mean(ce, _channel_weight(logits, annotated))


def sigmoid_dice_loss(
    logits: torch.Tensor, classes: torch.Tensor, annotated: torch.Tensor | None = None
) -> torch.Tensor:
    probs = torch.sigmoid(logits.float().contiguous())
    weight = None if annotated is None else annotated[:, 1:].to(probs.dtype)
    return _dice_loss(*_soft_dice_terms(probs, classes, 1, weight), first_class=1)


def focal_loss(
    logits: torch.Tensor,
    classes: torch.Tensor,
    annotated: torch.Tensor | None = None,
    gamma: float = 2.0,
    alpha: float = 0.25,
) -> torch.Tensor:
    logits = logits.float().contiguous()
    targets = _sigmoid_targets(logits, classes)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    focal = alpha_t * (1 - p_t) ** gamma * ce
    return _weighted_mean(focal, _channel_weight(logits, annotated))


def deep_supervision_loss(
    loss_fn: LossFn, logits: torch.Tensor | tuple[torch.Tensor, ...], classes: torch.Tensor
) -> torch.Tensor:
    """``loss_fn`` on a model's output; with deep supervision (a tuple of logits at full, 1/2,
    1/4, .. resolution) the sum of each level's loss against the class map sampled at that
    level, weighted 1, 1/2, 1/4, .. and normalised to sum to 1 (nnU-Net's weights, without its
    zeroed last level: the heads here stop above the bottleneck). classes: (B, *spatial) int64;
    each spatial axis is sampled with its own step (a 3D level may halve some axes only).
    """
    if isinstance(logits, torch.Tensor):
        return loss_fn(logits, classes)
    weights = [0.5**level for level in range(len(logits))]
    total = 0.0
    for weight, level_logits in zip(weights, logits, strict=True):
        steps = [
            full // part
            for full, part in zip(classes.shape[1:], level_logits.shape[2:], strict=True)
        ]
        # nearest sampling (the first voxel of each block), as a label map allows
        sampled = classes[(slice(None), *(slice(None, None, s) for s in steps))]
        total = total + weight * loss_fn(level_logits, sampled)
    return total / sum(weights)


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: its function and the output it trains.

    ``output_mode`` "softmax": channel 0 is the background and the classes exclude each other;
    "sigmoid": one independent channel per structure. The model's head follows it.
    """

    name: str
    fn: LossFn
    output_mode: str
    title: str


#: the loss registry: the CLI's --loss choices, the config checks and the Train page read it
LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, output_mode: str, title: str) -> Callable[[LossFn], LossFn]:
    """Decorator: add ``fn(logits, classes, annotated=None) -> scalar`` as loss ``name``."""
    if output_mode not in ("softmax", "sigmoid"):
        raise ValueError(f"output_mode must be softmax or sigmoid, got {output_mode!r}")

    def wrap(fn: LossFn) -> LossFn:
        LOSSES[name] = LossSpec(name, fn, output_mode, title)
        return fn

    return wrap


register_loss("dice_ce", "softmax", "Dice + cross-entropy (softmax)")(dice_ce_loss)
register_loss("bce", "sigmoid", "binary cross-entropy (sigmoid)")(bce_loss)
register_loss("dice", "sigmoid", "soft Dice (sigmoid)")(sigmoid_dice_loss)
register_loss("focal", "sigmoid", "focal loss (sigmoid)")(focal_loss)


def loss_spec(name: str) -> LossSpec:
    """The registered loss ``name``; ConfigError naming the known ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}") from None


def build_loss(name: str) -> LossFn:
    """The loss ``fn(logits (B, K, *spatial), classes (B, *spatial) int64, annotated=None)``."""
    return loss_spec(name).fn
