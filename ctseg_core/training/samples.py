"""Prediction vs reference on a few fixed validation slices, saved as samples/epoch_<N>.png.

``SampleFigure`` runs the model on slices of a slice model's validation set;
``VolumeSampleFigure`` shows slices of a volumetric model's whole-volume validation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..config import RunConfig
from ..data.slices import SliceDataset, normalize_hu
from ..device import autocast_context
from ..labels import NUM_LABELS, merge_lut
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
        keep[values] = merge_lut(self.config.data.structures)[values]  # a merge in one colour
        try:
            save_sample_figure(
                image[:, centre].float().cpu().numpy(), keep[labels], predicted.astype(np.uint8),
                Path(run_dir) / "samples" / f"epoch_{epoch}.png",
                f"{run_dir.name}: epoch {epoch}, validation slices", self.aspects,
            )  # fmt: skip
        except OSError as exc:
            log.warning("could not save the sample figure: %s", exc)


def volume_slice_presence(labels_xyz: np.ndarray) -> np.ndarray:
    """(Z, 118) bool: which label values occur in each axial slice ``labels_xyz[:, :, z]``."""
    presence = np.zeros((labels_xyz.shape[2], NUM_LABELS), dtype=bool)
    for z in range(labels_xyz.shape[2]):
        values = np.bincount(np.asarray(labels_xyz[:, :, z]).ravel(), minlength=NUM_LABELS)
        presence[z] = values[:NUM_LABELS] > 0
    return presence


class VolumeSampleFigure:
    """The volumetric counterpart of ``SampleFigure``: up to ``n`` axial slices of the
    validation volumes (chosen as ``choose_sample_slices`` does, among the subjects this rank
    validates), shown with the prediction the epoch's validation made of the whole volume
    (``VolumeValidation.kept``): no forward pass of its own."""

    def __init__(self, validation, config: RunConfig, n: int = 3):
        self.validation, self.config = validation, config
        dataset = validation.dataset
        mine = sorted({t.subject for t in validation.tiles})
        presence = [volume_slice_presence(dataset.subjects[s].labels) for s in mine]
        keep = np.zeros(NUM_LABELS, dtype=bool)
        keep[np.unique(dataset.lut.nonzero()[0])] = True
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in presence])]).astype(np.int64)
        stacked = np.concatenate(presence) & keep if presence else np.zeros((0, NUM_LABELS), bool)
        stacked[:, 0] = False
        self.slices = []  # (subject, z)
        for i in choose_sample_slices(stacked, offsets, n):
            k = int(np.searchsorted(offsets, i, side="right") - 1)
            self.slices.append((mine[k], int(i - offsets[k])))
        validation.keep = list(self.slices)
        self.keep = np.where(keep, merge_lut(config.data.structures), 0).astype(np.uint8)
        self.aspects = []
        for s, _ in self.slices:
            (nx, ny, _), (sx, sy, _) = dataset.subjects[s].shape_xyz, dataset.subjects[s].spacing_mm
            self.aspects.append((ny * sy) / (nx * sx))

    def save(self, model, device, amp, channels_last: bool, run_dir: Path, epoch: int) -> None:
        """samples/epoch_<N>.png of the last validation's predictions (the model is unused:
        the signature is ``SampleFigure.save``'s)."""
        slices = [sz for sz in self.slices if sz in self.validation.kept]
        if not slices:
            return
        subjects, hu_window = self.validation.dataset.subjects, self.config.data.hu_window
        images = [
            normalize_hu(torch.from_numpy(np.array(subjects[s].ct[:, :, z])), hu_window).numpy()
            for s, z in slices
        ]
        reference = [self.keep[np.array(subjects[s].labels[:, :, z])] for s, z in slices]
        predicted = [self.validation.kept[sz] for sz in slices]
        aspects = [a for sz, a in zip(self.slices, self.aspects, strict=True) if sz in slices]
        try:
            save_sample_figure(
                images, reference, predicted,
                Path(run_dir) / "samples" / f"epoch_{epoch}.png",
                f"{run_dir.name}: epoch {epoch}, validation volumes", aspects,
            )  # fmt: skip
        except OSError as exc:
            log.warning("could not save the sample figure: %s", exc)
