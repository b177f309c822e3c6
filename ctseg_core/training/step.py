"""One optimisation step on a batch: shared by the trainer and benchmarks/training_throughput.py.

``StepRunner(...)(image, labels, generator)`` moves a loader batch to the device, augments it
(``data.augment``), and runs forward, loss, backward, clipping and the optimizer step. It
returns the loss as a device tensor without reading it: reading a CUDA value waits for the GPU,
so the trainer reads each step's loss after the next step is queued.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..config import DataConfig
from ..data.augment import augment_batch
from ..data.augment3d import augment_batch_3d
from ..device import autocast_context
from .losses import annotated_rows, deep_supervision_loss


def backward_step(
    net: torch.nn.Module,
    image: torch.Tensor,
    classes: torch.Tensor,
    loss_fn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    autocast,
    grad_clip: float | None,
) -> torch.Tensor:
    """Forward (under ``autocast``), loss in float32, backward and gradient clipping.

    image (B, C, *spatial), classes (B, *spatial) int64, 2D or 3D. Returns the detached loss,
    unread (no device sync); the optimizer step is the caller's (``StepRunner`` does both).
    """
    with autocast:
        logits = net(image)
    loss = deep_supervision_loss(loss_fn, logits, classes)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    return loss.detach()


@dataclass
class StepRunner:
    """The fixed parts of a training step. ``lut``: (118,) int64 label value -> class, on device;
    ``annotated``: (S, K) bool on the CPU, ``SliceDataset.annotated_classes()`` (None: all);
    ``mirror_safe``: (S,) bool on the CPU, ``SliceDataset.mirror_safe()`` (None: all);
    ``spacing``: (S, 3) float64 on the CPU, each subject's voxel size where 3D patches keep
    their CTs' grids (``PatchDataset.subject_spacing()``; None: the config's spacing)."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    loss_fn: object
    lut: torch.Tensor
    data: DataConfig
    device: torch.device
    amp: torch.dtype | None
    channels_last: bool
    grad_clip: float | None
    annotated: torch.Tensor | None = None
    mirror_safe: torch.Tensor | None = None
    spacing: torch.Tensor | None = None

    def __call__(
        self,
        image: torch.Tensor,
        labels: torch.Tensor,
        generator: torch.Generator | None,
        subjects: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """image (B, C, H, W) float32, labels (B, H, W) uint8, subjects (B,) int64 subject
        indices (CPU), as the loader yields them; a volumetric model's patches are (B, C, X,
        Y, Z) and (B, X, Y, Z). ``generator`` None skips augmentation.

        Returns the detached float32 loss on the device.
        """
        image = image.to(self.device, non_blocking=True)
        labels = labels.to(self.device, non_blocking=True)
        if self.data.augment and generator is not None:
            allowed = None
            if self.mirror_safe is not None and subjects is not None:
                allowed = self.mirror_safe[subjects.cpu()]
            if image.dim() == 5:
                spacing = None
                if self.spacing is not None and subjects is not None:
                    spacing = self.spacing[subjects.cpu()]
                image, labels = augment_batch_3d(
                    image, labels, self.data, generator, allowed, spacing
                )
            else:
                image, labels = augment_batch(image, labels, self.data, generator, allowed)
        if self.channels_last:
            layout = torch.channels_last_3d if image.dim() == 5 else torch.channels_last
            image = image.contiguous(memory_format=layout)
        autocast = autocast_context(self.device, self.amp)
        classes = self.lut[labels.long()]
        annotated = annotated_rows(self.annotated, subjects, self.device)
        loss_fn = functools.partial(self.loss_fn, annotated=annotated)
        loss = backward_step(self.net, image, classes, loss_fn, self.optimizer,
                             self.scaler, autocast, self.grad_clip)  # fmt: skip
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss
