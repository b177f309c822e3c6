"""Prediction vs reference on a few fixed validation slices, saved as samples/epoch_<N>.png."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data.slices import SliceDataset, predicted_labels
from .figures import save_sample_figure
from .hardware import autocast_context

log = logging.getLogger(__name__)


class SampleFigure:
    """Chooses up to ``n`` validation slices once (those showing the most structures, from
    different subjects where possible) and plots the model's prediction on them each epoch."""

    def __init__(self, dataset: SliceDataset, config: RunConfig, n: int = 3):
        self.dataset, self.config = dataset, config
        richness = dataset.presence.sum(axis=1)
        chosen: list[int] = []
        for s in range(len(dataset.subjects)):
            lo, hi = int(dataset.offsets[s]), int(dataset.offsets[s + 1])
            chosen.append(lo + int(np.argmax(richness[lo:hi])))
        chosen.sort(key=lambda i: -richness[i])
        extra = [int(i) for i in np.argsort(-richness, kind="stable") if int(i) not in chosen]
        self.indices = (chosen + extra)[:n]

    @torch.no_grad()
    def save(self, model, device, amp, channels_last: bool, run_dir: Path, epoch: int) -> None:
        items = [self.dataset[i] for i in self.indices]
        image = torch.stack([it[0] for it in items]).to(device)
        labels = torch.stack([it[1] for it in items]).numpy()
        if channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        was_training = model.training
        model.eval()
        try:
            with autocast_context(device, amp):
                logits = model(image)
            predicted = predicted_labels(logits, self.config).cpu().numpy()
        finally:
            model.train(was_training)
        centre = image.shape[1] // 2
        keep = np.zeros(256, dtype=labels.dtype)
        values = np.unique(self.dataset.lut.nonzero()[0])
        keep[values] = values
        try:
            save_sample_figure(
                image[:, centre].float().cpu().numpy(), keep[labels], predicted.astype(np.uint8),
                Path(run_dir) / "samples" / f"epoch_{epoch}.png",
                f"{run_dir.name}: epoch {epoch}, validation slices",
            )  # fmt: skip
        except OSError as exc:
            log.warning("could not save the sample figure: %s", exc)
