"""Prediction vs reference on a few fixed validation slices, saved as samples/epoch_<N>.png."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data.slices import SliceDataset
from ..device import autocast_context
from ..models.head import predicted_labels
from .figures import save_sample_figure

log = logging.getLogger(__name__)


def choose_sample_slices(presence: np.ndarray, offsets: np.ndarray, n: int = 3) -> list[int]:
    """Up to ``n`` slice indices that together show as many structures as possible.

    presence: (slices, labels) bool, label 0 (background) False; offsets: (subjects + 1,) the
    first slice of each subject. Greedy: each pick shows the most structures not shown yet,
    then prefers a subject not picked yet, then the slice showing the most structures (the
    first of equals). Three neighbouring slices of one abdomen would show one picture thrice.
    """
    subject_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    richness = presence.sum(axis=1)
    shown = np.zeros(presence.shape[1], dtype=bool)
    used = np.zeros(len(offsets) - 1, dtype=bool)
    chosen: list[int] = []
    for _ in range(min(n, len(presence))):
        new = (presence & ~shown).sum(axis=1)
        key = (new * 2 + ~used[subject_of]) * (presence.shape[1] + 1) + richness
        key[chosen] = -1
        pick = int(np.argmax(key))
        chosen.append(pick)
        shown |= presence[pick]
        used[subject_of[pick]] = True
    return chosen


class SampleFigure:
    """Plots the model's prediction each epoch on up to ``n`` validation slices chosen once
    (``choose_sample_slices``: together they show as many structures as possible)."""

    def __init__(self, dataset: SliceDataset, config: RunConfig, n: int = 3):
        self.dataset, self.config = dataset, config
        self.indices = choose_sample_slices(dataset.presence, dataset.offsets, n)
        # slices are resized to a square for the model; shown, they get back their shape in mm
        self.aspects = []
        for i in self.indices:
            subject = dataset.subjects[dataset.locate(i)[0]]
            (nx, ny), (sx, sy) = subject.labels.shape[1:], subject.spacing_mm[:2]
            self.aspects.append((ny * sy) / (nx * sx))

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
                f"{run_dir.name}: epoch {epoch}, validation slices", self.aspects,
            )  # fmt: skip
        except OSError as exc:
            log.warning("could not save the sample figure: %s", exc)
