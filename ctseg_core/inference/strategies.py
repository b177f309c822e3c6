"""How a CT is cut into model inputs and put back together: one strategy per kind of model.

A strategy is built with its ``Predictor`` (members, device, TTA, active label values) and
offers ``estimate_bytes(shape_xyz, batch, spacing_mm) -> int`` and ``label(ct_xyz, batch,
progress, spacing_mm) -> (X, Y, Z) uint8``. A model's registry entry names its strategy
(``ModelSpec.inference``): "slices" here, "patches" (sliding-window patches for a volumetric
model) in :mod:`.patches`.

``slices``: batches of axial slices (with their 2.5D context when the model was trained so),
each normalised and resized to the model's target size, scored (``label_scores``: (B, 118, h,
w) per label value), averaged over test-time augmentations and members, brought back to the
CT's in-plane size a few channels at a time and turned into labels with an argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.slices import context_indices, normalize_hu, resize_batch
from ..labels import NUM_LABELS, lr_swap_lut
from ..models.head import label_scores
from .patches import PatchStrategy

#: channels upsampled to the CT's size at once (bounds the largest float buffer)
_UPSAMPLE_CHANNELS = 16
#: TTA shifts (pixels at the model's resolution) for models trained without left/right mirroring
_TTA_SHIFTS = ((2, 2), (-2, -2))


class SliceStrategy:
    """Batches of axial slices through a 2D or 2.5D model (see the module doc)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        # scores of all members are averaged at the largest target size
        members = predictor.members
        self.work_size = tuple(max(m.target_size[i] for m in members) for i in range(2))

    def augmentations(self, member) -> list[str]:
        """The test-time augmentations of ``member`` ("identity" alone without TTA)."""
        if not self.predictor.tta:
            return ["identity"]
        if getattr(member.config.data, "mirror", False):
            return ["identity", "mirror"]
        return ["identity", *(f"shift{i}" for i in range(len(_TTA_SHIFTS)))]

    def estimate_bytes(self, shape_xyz: Sequence[int], batch_slices: int,
                       spacing_mm: Sequence[float] | None = None) -> int:  # fmt: skip
        """Peak memory (bytes) of labelling a CT of ``shape_xyz``, an estimate (any spacing).

        Volume terms: the int16 CT and the uint8 labels (plus a copy of each for reorientation).
        Batch terms: the scores at the working size (one, plus accumulator and resize buffer),
        the upsampling buffer at the CT's size and the model's activations (about six float
        maps of the first U-Net level per slice).
        """
        x, y, z = (int(s) for s in shape_xyz)
        b = int(batch_slices)
        h, w = self.work_size
        n_active = len(self.predictor.active)
        volume = x * y * z * (2 + 2 + 1 + 1)
        scores = 3 * b * NUM_LABELS * h * w * 4
        upsample = 2 * b * min(_UPSAMPLE_CHANNELS, n_active) * x * y * 4 + 2 * b * x * y * 4
        width = max(int(m.config.model.features[0]) for m in self.predictor.members)
        context = max(m.context for m in self.predictor.members)
        activations = b * h * w * 4 * (6 * width + 2 * context)
        return volume + scores + upsample + activations

    @torch.inference_mode()
    def _batch_scores(self, ct_xyz: np.ndarray, zs: list[int]) -> torch.Tensor:
        """(B, A, h, w) float32 scores of the active label values, averaged over TTA and members."""
        total, count = None, 0
        num_slices = ct_xyz.shape[2]
        for member in self.predictor.members:
            index = [i for z in zs for i in context_indices(z, num_slices, member.context)]
            stack = np.ascontiguousarray(np.moveaxis(ct_xyz[:, :, index], 2, 0))  # (B*C, X, Y)
            x = torch.from_numpy(stack).reshape(len(zs), member.context, *stack.shape[1:])
            x = normalize_hu(x, member.config.data.hu_window)
            x = resize_batch(x, member.target_size).to(self.predictor.device)
            for aug in self.augmentations(member):
                scores = self._scores(member, x, aug)
                if scores.shape[-2:] != self.work_size:
                    scores = F.interpolate(scores, size=self.work_size, mode="bilinear",
                                           align_corners=False)  # fmt: skip
                scores = scores[:, self.predictor.active]
                total = scores if total is None else total.add_(scores)
                count += 1
        return total.div_(count)

    def _scores(self, member, x: torch.Tensor, aug: str) -> torch.Tensor:
        if aug == "identity":
            return label_scores(member.model(x), member.config)
        if aug == "mirror":
            # H is the canonical x axis (patient left/right): flip, score, flip back, and give
            # each left/right label the score its mirror partner got.
            scores = label_scores(member.model(torch.flip(x, dims=[2])), member.config)
            lut = torch.from_numpy(lr_swap_lut().astype(np.int64)).to(scores.device)
            return torch.flip(scores, dims=[2])[:, lut]
        dh, dw = _TTA_SHIFTS[int(aug.removeprefix("shift"))]
        scores = label_scores(member.model(torch.roll(x, (dh, dw), dims=(2, 3))), member.config)
        return torch.roll(scores, (-dh, -dw), dims=(2, 3))

    def _to_labels(self, scores: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """(B, A, h, w) scores -> (B, X, Y) uint8 label values at the CT's in-plane size.

        Scores are upsampled a few channels at a time with a running maximum, so the largest
        buffer is (B, 16, X, Y) floats, not (B, 118, X, Y).
        """
        active = torch.tensor(self.predictor.active, dtype=torch.int64, device=scores.device)
        if tuple(scores.shape[-2:]) == size:
            return active[scores.argmax(dim=1)].to(torch.uint8).cpu().numpy()
        best_value = best_index = None
        for start in range(0, scores.shape[1], _UPSAMPLE_CHANNELS):
            chunk = F.interpolate(scores[:, start : start + _UPSAMPLE_CHANNELS], size=size,
                                  mode="bilinear", align_corners=False)  # fmt: skip
            value, index = chunk.max(dim=1)
            index += start
            if best_value is None:
                best_value, best_index = value, index
            else:
                better = value > best_value  # ties keep the lower label value, as argmax does
                best_value = torch.where(better, value, best_value)
                best_index = torch.where(better, index, best_index)
        return active[best_index].to(torch.uint8).cpu().numpy()

    def label(
        self,
        ct_xyz: np.ndarray,
        batch: int,
        progress: Callable[[int, int, str], None] | None,
        spacing_mm: Sequence[float] | None = None,
    ) -> np.ndarray:
        """(X, Y, Z) int16 HU -> (X, Y, Z) uint8 labels, ``batch`` slices at a time (the
        spacing is not needed); ``progress(done_slices, total_slices, "slices")`` after each batch."""
        x_size, y_size, num_slices = ct_xyz.shape
        labels = np.zeros(ct_xyz.shape, dtype=np.uint8)
        for start in range(0, num_slices, batch):
            zs = list(range(start, min(start + batch, num_slices)))
            scores = self._batch_scores(ct_xyz, zs)
            labels[:, :, zs[0] : zs[-1] + 1] = np.moveaxis(
                self._to_labels(scores, (x_size, y_size)), 0, 2
            )
            del scores
            if progress:
                progress(zs[-1] + 1, num_slices, "slices")
        return labels


#: strategy name (``ModelSpec.inference``) -> class
STRATEGIES: dict[str, type] = {"slices": SliceStrategy, "patches": PatchStrategy}
