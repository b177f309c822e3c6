"""Batched tensor augmentation of (image, labels) on the training device.

image (B, C, H, W) float32 normalised (see slices.normalize_hu: -1 is the low end of the HU
window, used as the padding value); labels (B, H, W) uint8 label values. H is the canonical x
axis (patient right <-> left), W is y. One ``grid_sample`` per batch applies rotation, scaling
and elastic deformation together (bilinear for the image, nearest for the labels), then
intensity scale/shift and Gaussian noise. Every random number comes from ``generator`` (CPU),
so a seeded run is reproducible on a given device: the per-sample parameters and the coarse
elastic field are drawn on the CPU (a few numbers), the full-size grid is built on the batch's
device, and the full-size noise is drawn there by a generator seeded from ``generator`` (drawing
and copying it from the CPU made a GPU wait for the CPU every step).

Mirroring flips x and swaps paired left/right labels (``labels.lr_swap_lut``), so a kidney_left
stays on the patient's left. Slices holding an unpaired lateral structure
(``labels.UNPAIRED_LATERAL``: lung_middle_lobe_right, atrial_appendage_left) are never
mirrored: there is no partner label that would keep them anatomically true.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..labels import LABEL_OF, UNPAIRED_LATERAL, lr_swap_lut

_SWAP_LUT = torch.from_numpy(lr_swap_lut()).long()
_UNPAIRED = torch.tensor([LABEL_OF[n] for n in UNPAIRED_LATERAL], dtype=torch.long)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def _on(device: torch.device, g: torch.Generator) -> torch.Generator:
    """``g`` itself on the CPU; elsewhere a generator on ``device`` seeded from ``g``."""
    if device.type == "cpu":
        return g
    seed = int(torch.randint(0, 2**62, (1,), generator=g))
    return torch.Generator(device=device).manual_seed(seed)


def mirror_lr(
    image: torch.Tensor, labels: torch.Tensor, which: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip the x axis (dim -2) of the selected samples and swap their left/right labels.

    ``which``: (B,) bool, default all. Samples holding an unpaired lateral label stay as they are.
    """
    b = image.shape[0]
    which = torch.ones(b, dtype=torch.bool) if which is None else which.cpu().bool()
    if which.any():
        flat = labels.reshape(b, -1).long()
        unpaired = torch.isin(flat, _UNPAIRED.to(labels.device)).any(dim=1).cpu()
        which = which & ~unpaired
    if not which.any():
        return image, labels
    idx = which.nonzero().squeeze(1).to(image.device)
    image, labels = image.clone(), labels.clone()
    image[idx] = image[idx].flip(-2)
    lut = _SWAP_LUT.to(labels.device)
    labels[idx] = lut[labels[idx].flip(-2).long()].to(labels.dtype)
    return image, labels


def _spatial_grid(
    b: int, h: int, w: int, cfg: DataConfig, g: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W, 2) sampling grid on ``device`` and the (B,) bool (CPU) of samples it changes."""
    spatial = torch.rand(b, generator=g) < cfg.spatial_prob
    angle = _uniform(b, -cfg.rotation_deg, cfg.rotation_deg, g) * (math.pi / 180) * spatial
    scale = torch.where(spatial, _uniform(b, *cfg.scale_range, g), torch.ones(b))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta.to(device), [b, 1, h, w], align_corners=False)
    elastic = (torch.rand(b, generator=g) < cfg.elastic_prob) & (cfg.elastic_alpha_px > 0)
    if elastic.any():
        coarse = torch.randn(b, 2, 5, 5, generator=g) * elastic.view(b, 1, 1, 1)
        coarse = coarse.to(device)
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
        # pixels -> normalised grid units (2 / size), x displacement on W, y on H
        scale_xy = torch.tensor([2.0 / w, 2.0 / h], device=device).view(1, 2, 1, 1)
        scale_xy = scale_xy * cfg.elastic_alpha_px
        grid = grid + (field * scale_xy).permute(0, 2, 3, 1)
    return grid, spatial | elastic


def augment_batch(
    image: torch.Tensor, labels: torch.Tensor, cfg: DataConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly mirror (if ``cfg.mirror``), rotate/scale/deform, and change intensities.

    Returns new tensors of the same shapes and dtypes; the inputs are not modified.
    """
    g = generator
    b, _, h, w = image.shape
    device = image.device
    if cfg.mirror:
        image, labels = mirror_lr(image, labels, torch.rand(b, generator=g) < 0.5)
    grid, moved = _spatial_grid(b, h, w, cfg, g, device)
    if moved.any():
        # pad with the window's low end (-1): shift so that it becomes the zero padding
        image = F.grid_sample(image + 1.0, grid, mode="bilinear", align_corners=False) - 1.0
        warped = F.grid_sample(
            labels.unsqueeze(1).float(), grid, mode="nearest", align_corners=False
        )
        labels = warped.squeeze(1).round().to(labels.dtype)
    intensity = torch.rand(b, generator=g) < cfg.intensity_prob
    gain = torch.where(intensity, _uniform(b, 0.9, 1.1, g), torch.ones(b))
    offset = torch.where(intensity, _uniform(b, -0.1, 0.1, g), torch.zeros(b))
    image = image * gain.view(b, 1, 1, 1).to(device) + offset.view(b, 1, 1, 1).to(device)
    if cfg.noise_std > 0:
        noisy = (torch.rand(b, generator=g) < cfg.intensity_prob).float()
        sigma = _uniform(b, 0.0, cfg.noise_std, g) * noisy
        noise = torch.randn(image.shape, generator=_on(device, g), device=device)
        image = image + noise * sigma.view(b, 1, 1, 1).to(device)
    return image, labels
