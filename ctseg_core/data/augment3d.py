"""Batched tensor augmentation of 3D patches (image, labels) on the training device.

image (B, C, X, Y, Z) float32 normalised to the HU window's [-1, 1] (-1 = its low end: air);
labels (B, X, Y, Z) uint8 label values; axes canonical (x the patient's
left <-> right axis, y posterior <-> anterior, z inferior <-> superior). In this order, per
sample, each drawn with its probability in ``DataConfig``:

- mirror along x with the left/right labels swapped (``augment.mirror_lr``; ``cfg.mirror``,
  probability 0.5, only where ``mirror_allowed``; a patch holding an unpaired lateral label is
  never mirrored);
- rotation about x, y and z (each angle uniform in +-``rotation_deg``, as nnU-Net rotates 3D
  patches about all three axes) and isotropic scaling by s uniform in ``scale_range``, with
  ``spatial_prob``. Convention, as the 2D ``augment_batch``: **s > 1 makes structures larger**
  (zoom in; a structure's voxel count grows by about s**3); a positive angle about z turns +x
  towards +y (right-hand rule; likewise y -> z about x, z -> x about y). Rotation is physical:
  the grid's spacing (``spacing_mm``, isotropic if None) is taken into account, so a
  96 x 96 x 64 patch is rotated, not sheared. All moved samples go through ONE ``affine_grid``
  + ``grid_sample`` (trilinear for the image, nearest for the labels); what comes in from outside
  the patch is background and, in the image, -1 (the window's low end) for ``padding`` "air",
  else the patches' padding (``patches.pad_value``: nnU-Net's rotations fill its normalised
  0 too); samples whose transform is the identity are not resampled at all;
- new vessel intensities (``vessel_contrast_prob``) and a monotone intensity curve
  (``curve_prob``), as in 2D;
- gamma (``gamma_prob``, nnU-Net's transform): the window rescaled to [0, 1], u -> u ** gamma,
  back to [-1, 1]; gamma below 1 or above 1 with equal odds (uniform in [low, 1) or [1, high] of
  ``gamma_range``). The window's ends (-1, 1) stay where they are; values outside are clipped.
  Unlike nnU-Net the mean and spread are not restored: the fixed HU window is the reference;
- brightness/contrast (gain 0.9..1.1, offset -0.1..0.1, ``intensity_prob``) and Gaussian noise
  (std uniform in [0, ``noise_std``], ``intensity_prob``), as in 2D.

Elastic deformation (``elastic_prob``) is not applied in 3D: nnU-Net leaves it off by default,
and a 3D field would cost a second full-size grid for little gain.

Every random number comes from ``generator`` (CPU); the per-sample parameters cross to the
batch's device in one non-blocking copy and nothing is read back from the device.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import DataError
from ..labels import VESSELS
from ..nosync import to_device
from .augment import (
    _KNOTS,
    VESSEL_HU,
    _uniform,
    apply_curve,
    gaussian_noise,
    mirror_lr,
    vessel_contrast,
)
from .patches import pad_value

# per-sample parameters packed into one (B, 17) tensor for a single host-to-device copy
_PACKED = ("mirror", "theta", "gamma", "gain", "offset", "sigma")
_PACKED_WIDTHS = (1, 12, 1, 1, 1, 1)


def rotation_xyz(angles_rad: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations Rz @ Ry @ Rx of content in (x, y, z), from (B, 3) angles (radians)
    about x, y and z; a positive angle about z turns +x towards +y."""
    cos, sin = torch.cos(angles_rad), torch.sin(angles_rad)
    b = angles_rad.shape[0]
    one, zero = torch.ones(b, dtype=angles_rad.dtype), torch.zeros(b, dtype=angles_rad.dtype)

    def rot(c, s, i, j):  # rotation in the (i, j) plane turning +i towards +j
        m = torch.stack([one, zero, zero, zero, one, zero, zero, zero, one], 1).view(b, 3, 3)
        m[:, i, i], m[:, i, j], m[:, j, i], m[:, j, j] = c, -s, s, c
        return m

    rx = rot(cos[:, 0], sin[:, 0], 1, 2)  # y -> z
    ry = rot(cos[:, 1], sin[:, 1], 2, 0)  # z -> x
    rz = rot(cos[:, 2], sin[:, 2], 0, 1)  # x -> y
    return rz @ ry @ rx


def spatial_theta(
    angles_deg: torch.Tensor,
    scale: torch.Tensor,
    shape_xyz: tuple[int, int, int],
    spacing_mm=None,
) -> torch.Tensor:
    """(B, 3, 4) ``affine_grid`` matrices that rotate content by ``angles_deg`` (B, 3) (about x,
    y, z; see ``rotation_xyz``) and scale it by ``scale`` (B,) (s > 1: larger) around the patch
    centre, for a (B, C, X, Y, Z) patch of ``shape_xyz`` voxels of ``spacing_mm`` (x, y, z; or
    (B, 3), each sample's own; None: cubes).

    An output voxel at physical offset q from the centre reads the input at R^T q / s. Normalised
    grid coordinates run over each axis' extent, so the matrix is conjugated by the half extents
    (mm), and its rows and columns are reversed: ``affine_grid``'s last dim is ordered (Z, Y, X).
    """
    spacing = torch.as_tensor((1.0, 1.0, 1.0) if spacing_mm is None else spacing_mm).double()
    half = (torch.tensor(shape_xyz, dtype=torch.float64) * spacing / 2).reshape(-1, 3)  # mm
    rotation = rotation_xyz(angles_deg.double() * (math.pi / 180))
    inverse = rotation.transpose(1, 2) / scale.double().view(-1, 1, 1)
    normalised = inverse * half.unsqueeze(1) / half.unsqueeze(2)
    flipped = normalised.flip(1).flip(2)  # (x, y, z) -> affine_grid's (z, y, x)
    return F.pad(flipped, (0, 1)).float()  # no translation


def warp_3d(
    image: torch.Tensor, labels: torch.Tensor, theta: torch.Tensor, fill: float = -1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample image (B, C, X, Y, Z) trilinearly and labels (B, X, Y, Z) nearest through
    ``theta`` (B, 3, 4) on their device; outside the patch the image reads ``fill``, the
    labels 0."""
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    # grid_sample pads with 0: shift the fill to 0 for the sampling
    image = F.grid_sample(image - fill, grid, mode="bilinear", align_corners=False) + fill
    warped = F.grid_sample(labels.unsqueeze(1).float(), grid, mode="nearest", align_corners=False)
    return image, warped.squeeze(1).round().to(labels.dtype)


def _draw(b: int, shape_xyz, cfg: DataConfig, g: torch.Generator,
          spacing_mm=None) -> dict[str, torch.Tensor]:  # fmt: skip
    """Per-sample parameters on the CPU: mirror (B,), theta (B, 3, 4), gamma, gain, offset,
    sigma (B,) (identities where off); flags moved, gamma_on (B,) bool."""
    mirror = (torch.rand(b, generator=g) < 0.5) if cfg.mirror else torch.zeros(b, dtype=torch.bool)
    spatial = torch.rand(b, generator=g) < cfg.spatial_prob
    deg = cfg.rotation_deg
    angles = (torch.rand(b, 3, generator=g) * 2 - 1) * deg * spatial.view(b, 1)
    scale = torch.where(spatial, _uniform(b, *cfg.scale_range, g), torch.ones(b))
    moved = (angles != 0).any(dim=1) | (scale != 1)  # an identity is not resampled
    spacing = cfg.spacing_mm if spacing_mm is None else spacing_mm
    theta = spatial_theta(angles, scale, shape_xyz, spacing)
    low, high = cfg.gamma_range
    gamma_on = torch.rand(b, generator=g) < cfg.gamma_prob
    # nnU-Net's draw: below 1 (brightens) or above 1 (darkens) with equal odds, whatever the
    # range's asymmetry around 1 (0.7..1.5 would otherwise darken 3 times in 4)
    pick_below = (torch.rand(b, generator=g) < 0.5) & (low < 1)
    unit = torch.rand(b, generator=g)
    below = low + (min(high, 1.0) - low) * unit
    above = max(low, 1.0) + (high - max(low, 1.0)) * unit
    gamma = torch.where(gamma_on, torch.where(pick_below, below, above), torch.ones(b))
    intensity = torch.rand(b, generator=g) < cfg.intensity_prob
    gain = torch.where(intensity, _uniform(b, 0.9, 1.1, g), torch.ones(b))
    offset = torch.where(intensity, _uniform(b, -0.1, 0.1, g), torch.zeros(b))
    noisy = (torch.rand(b, generator=g) < cfg.intensity_prob) & (cfg.noise_std > 0)
    sigma = _uniform(b, 0.0, max(cfg.noise_std, 0.0), g) * noisy
    return {"mirror": mirror, "theta": theta, "gamma": gamma, "gain": gain, "offset": offset,
            "sigma": sigma, "moved": moved, "gamma_on": gamma_on}  # fmt: skip


def _curves(b: int, cfg: DataConfig, g: torch.Generator) -> torch.Tensor:
    """(B, 9) monotone curve knots keeping the window's ends, the identity where not drawn."""
    knots = torch.linspace(-1.0, 1.0, _KNOTS).expand(b, _KNOTS)
    curved = torch.rand(b, 1, generator=g) < cfg.curve_prob
    jitter = (torch.rand(b, _KNOTS, generator=g) * 2 - 1) * (0.9 * 2 / (_KNOTS - 1))
    jitter[:, [0, -1]] = 0.0
    return torch.where(curved, (knots + jitter).sort(dim=1).values, knots)


def apply_gamma(image: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """image (B, C, ...) in [-1, 1] -> 2 * ((image + 1) / 2) ** gamma - 1 per sample; gamma (B,)
    > 0. Values outside [-1, 1] are clipped first; -1 and 1 stay fixed."""
    view = (-1,) + (1,) * (image.dim() - 1)
    unit = ((image + 1.0) * 0.5).clamp(0.0, 1.0)
    return unit.pow(gamma.view(view)) * 2.0 - 1.0


def augment_batch_3d(
    image: torch.Tensor,
    labels: torch.Tensor,
    cfg: DataConfig,
    generator: torch.Generator,
    mirror_allowed: torch.Tensor | None = None,
    spacing_mm: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly mirror, rotate/scale and change the intensities of 3D patches (module doc).

    ``spacing_mm``: (B, 3) each sample's voxel size (x, y, z mm) where the patches keep their
    CTs' own grids (``cfg.spacing_mm`` None), so a rotation turns millimetres, not voxels;
    None: ``cfg.spacing_mm``.

    image (B, C, X, Y, Z) float32 in [-1, 1]; labels (B, X, Y, Z) uint8 label values;
    ``mirror_allowed``: (B,) bool on the CPU, False for samples never to mirror (their subject
    annotates one side of a left/right pair only); None: all. Returns new tensors of the same
    shapes and dtypes (the inputs themselves when ``cfg.augment`` is False); the inputs are not
    modified.
    """
    if not cfg.augment:
        return image, labels
    if image.dim() != 5 or labels.shape != image.shape[:1] + image.shape[2:]:
        raise DataError(
            f"augment_batch_3d takes image (B, C, X, Y, Z) and labels (B, X, Y, Z), got "
            f"{tuple(image.shape)} and {tuple(labels.shape)}"
        )
    g = generator
    b, device = image.shape[0], image.device
    drawn = _draw(b, tuple(image.shape[2:]), cfg, g, spacing_mm)
    if mirror_allowed is not None:  # after the draw: the random stream stays the same
        drawn["mirror"] = drawn["mirror"] & mirror_allowed.cpu().bool()
    flat = torch.cat([drawn[k].reshape(b, -1).float() for k in _PACKED], dim=1)
    parts = dict(zip(_PACKED, to_device(flat, device).split(_PACKED_WIDTHS, dim=1), strict=True))
    if cfg.mirror:
        image, labels = mirror_lr(image, labels, parts["mirror"].squeeze(1) > 0.5)
    moved = drawn["moved"]
    fill = -1.0 if cfg.padding == "air" else pad_value(cfg)  # air: as before the setting
    if bool(moved.all()):
        image, labels = warp_3d(image, labels, parts["theta"].view(b, 3, 4), fill)
    elif bool(moved.any()):  # only the moved samples are resampled (CPU flags: no sync)
        rows = to_device(torch.nonzero(moved).flatten(), device)
        theta = parts["theta"].view(b, 3, 4).index_select(0, rows)
        rows_image, rows_labels = image.index_select(0, rows), labels.index_select(0, rows)
        warped = warp_3d(rows_image, rows_labels, theta, fill)
        image, labels = image.index_copy(0, rows, warped[0]), labels.index_copy(0, rows, warped[1])
    if cfg.vessel_contrast_prob > 0:  # drawn only when on, as in 2D
        chosen = torch.rand(b, 1, generator=g) < cfg.vessel_contrast_prob
        hu = _uniform(b * len(VESSELS), *VESSEL_HU, g).view(b, len(VESSELS))
        hu = torch.where(chosen, hu, torch.full_like(hu, float("nan")))
        image = vessel_contrast(image, labels, to_device(hu, device), cfg.hu_window)
    if cfg.curve_prob > 0:
        image = apply_curve(image, to_device(_curves(b, cfg, g), device))
    if bool(drawn["gamma_on"].any()):
        on = to_device(drawn["gamma_on"], device).view(b, 1, 1, 1, 1)
        image = torch.where(on, apply_gamma(image, parts["gamma"].squeeze(1)), image)
    image = image * parts["gain"].view(b, 1, 1, 1, 1) + parts["offset"].view(b, 1, 1, 1, 1)
    if bool(drawn["sigma"].any()):
        image = image + gaussian_noise(image, g) * parts["sigma"].view(b, 1, 1, 1, 1)
    return image, labels
