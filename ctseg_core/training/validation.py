"""Validation after each epoch: loss and per-structure Dice from one confusion pass.

Dice is measured at the training resolution (``target_size``), pooled over all validation
slices of all subjects: per label, TP/FP/FN are summed over the subjects where the structure is
annotated (a missing mask file is "not annotated" and excluded). A structure absent from every
validation reference gets None (NaN), and ``val_dice_mean`` is the mean over the rest.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np
import torch

from ..config import RunConfig
from ..data.slices import SliceDataset
from ..labels import NUM_LABELS, member_values, merged_annotated, value_of
from ..metrics.overlap import overlap_counts
from ..models.head import predicted_labels
from ..nosync import count_values
from . import distributed as ddp
from .losses import LossFn, annotated_rows


def _pooled_counts(confusions: np.ndarray, annotated: np.ndarray) -> tuple[np.ndarray, ...]:
    """(S, L, L) per-subject confusions + (S, L) annotated -> pooled (tp, fp, fn), each (L,)."""
    tp = np.zeros(NUM_LABELS, np.int64)
    fp, fn = tp.copy(), tp.copy()
    for conf, ann in zip(confusions, annotated, strict=True):
        c = overlap_counts(conf, ann)  # the metrics' definitions of TP, FP, FN
        tp += np.where(ann, c.tp, 0)
        fp += np.where(ann, c.fp, 0)
        fn += np.where(ann, c.fn, 0)
    return tp, fp, fn


def dice_from_confusions(confusions: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """(L,) float64 Dice per label value, NaN where no annotated reference voxel exists."""
    tp, fp, fn = _pooled_counts(confusions, annotated)
    ref = tp + fn
    dice = np.full(NUM_LABELS, np.nan)
    scored = ref > 0
    dice[scored] = 2 * tp[scored] / (2 * tp[scored] + fp[scored] + fn[scored])
    return dice


@torch.no_grad()
def validate(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    dataset: SliceDataset,
    config: RunConfig,
    loss_fn: LossFn,
    device: torch.device,
    autocast: AbstractContextManager,
    channels_last: bool,
    stop_check=None,
    progress=None,
) -> dict:
    """Run the validation slices; returns {"val_loss", "val_dice_mean", "val_dice": {name: dice}}.

    ``progress(done, total)``: called with 0 before the first batch and after each batch
    (``total`` batches on this rank); it reads nothing from the device.
    """
    model.eval()
    n_subjects = len(dataset.subjects)
    counts = torch.zeros(n_subjects * NUM_LABELS * NUM_LABELS, dtype=torch.int64, device=device)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # (sum, slices)
    lut = torch.from_numpy(dataset.lut).long().to(device)
    keep = learned_values(config, device)
    annotated = dataset.annotated_classes()
    total = len(loader)
    if progress is not None:
        progress(0, total)
    for done, (image, labels, subject) in enumerate(loader, start=1):
        if stop_check is not None:
            stop_check()
        # pinned on CUDA: asynchronous copies, so the host queues the next batch meanwhile
        image = image.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True).long()
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(image)
        # missing masks are not penalised, as in training
        loss = loss_fn(logits.float(), lut[labels], annotated_rows(annotated, subject, device))
        loss_sum[0] += loss.double() * len(image)
        loss_sum[1] += len(image)
        predicted = predicted_labels(logits, config)  # (B, H, W) label values
        ref = keep[labels]
        subject = subject.to(device, non_blocking=True).view(-1, 1, 1)
        counts += count_values((subject * NUM_LABELS + ref) * NUM_LABELS + predicted, len(counts))
        if progress is not None:
            progress(done, total)
    model.train()
    return validation_metrics(counts, loss_sum, dataset.annotated, config)


def learned_values(config: RunConfig, device: torch.device) -> torch.Tensor:
    """(118,) int64 on ``device``: reference label value -> the value it is scored as: itself
    for the run's structures, a merge's value for its members, else 0 (label values outside
    the run's structures count as background)."""
    keep = np.zeros(NUM_LABELS, dtype=np.int64)
    for name in config.data.structures:
        keep[member_values(name)] = value_of(name)
    return torch.from_numpy(keep).to(device)


def validation_metrics(
    counts: torch.Tensor, loss_sum: torch.Tensor, annotated: np.ndarray, config: RunConfig
) -> dict:
    """The epoch's metrics from this rank's sums, summed over the ranks first.

    counts: (S * 118 * 118,) int64 (subject, reference, prediction) confusions; loss_sum: (2,)
    float64 (loss sum, items); annotated: (S, 118) bool. Returns {"val_loss", "val_dice_mean",
    "val_dice": {name: dice or None}}.
    """
    ddp.all_reduce_sum(counts)
    ddp.all_reduce_sum(loss_sum)
    confusions = counts.view(len(annotated), NUM_LABELS, NUM_LABELS).cpu().numpy()
    dice = dice_from_confusions(confusions, merged_annotated(annotated, config.data.structures))
    per_structure = {}
    for name, value in zip(config.data.structures, _values(config), strict=True):
        d = dice[value]
        per_structure[name] = None if np.isnan(d) else float(d)
    scored = [d for d in per_structure.values() if d is not None]
    items = float(loss_sum[1])
    return {
        "val_loss": float(loss_sum[0]) / items if items else None,
        "val_dice_mean": float(np.mean(scored)) if scored else None,
        "val_dice": per_structure,
    }


def _values(config: RunConfig) -> np.ndarray:
    return np.array([value_of(n) for n in config.data.structures], dtype=np.int64)
