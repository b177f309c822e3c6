"""Batched tensor augmentation of (image, labels) on the training device.

image (B, C, H, W) float32 normalised (see slices.normalize_hu: -1 is the low end of the HU
window, used as the padding value); labels (B, H, W) uint8 label values. H is the canonical x
axis (patient right <-> left), W is y. One ``grid_sample`` per batch applies rotation, scaling
and elastic deformation together (bilinear for the image, nearest for the labels), then new
vessel intensities (``vessel_contrast_prob``), a random monotone intensity curve
(``curve_prob``), intensity scale/shift and Gaussian noise.

Every random number comes from ``generator`` (CPU), so a seeded run is reproducible on a given
device. The per-sample parameters and the coarse elastic field (a few numbers) are drawn on the
CPU and cross to the batch's device in one pinned, non-blocking copy; the full-size grid is built
there and the full-size noise is drawn there by a generator seeded from ``generator``. Nothing
reads a device value back, so the host queues the next step while the GPU works (blocking
copies here made an H100 idle at every step).

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
from ..labels import LABEL_OF, NUM_LABELS, UNPAIRED_LATERAL, VESSELS, lr_swap_lut
from ..nosync import to_device

_SWAP_LUT = torch.from_numpy(lr_swap_lut()).long()
_UNPAIRED = torch.tensor([LABEL_OF[n] for n in UNPAIRED_LATERAL], dtype=torch.long)
_COARSE = 5  # control points per side of the elastic field
_KNOTS = 9  # knots of the intensity curve over the window [-1, 1] (125 HU apart for 1000 HU)
# per-sample parameters packed into one (B, 69) tensor for a single host-to-device copy
_PACKED = ("mirror", "theta", "coarse", "curve", "gain", "offset", "sigma")
_PACKED_WIDTHS = (1, 6, 2 * _COARSE * _COARSE, _KNOTS, 1, 1, 1)
_VESSEL_VALUES = torch.tensor([LABEL_OF[n] for n in VESSELS], dtype=torch.long)
#: mean HU a vessel is given by the vessel contrast augmentation: native blood (~40 HU) to
#: arterial-phase enhancement (~300-400 HU)
VESSEL_HU = (20.0, 400.0)


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


def mirror_lr(
    image: torch.Tensor, labels: torch.Tensor, which: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip the x axis of the selected samples and swap their left/right labels.

    Slices: image (B, C, H, W), labels (B, H, W); volumes: image (B, C, X, Y, Z), labels
    (B, X, Y, Z). x (patient right <-> left) is dim 2 of the image and dim 1 of the labels in
    both. ``which``: (B,) bool on any device, default all. Samples holding an unpaired lateral
    label stay as they are. Returns new tensors; computed on the labels' device without a sync.
    """
    b, device = image.shape[0], labels.device
    which = torch.ones(b, dtype=torch.bool, device=device) if which is None else which
    flat = labels.reshape(b, -1).long()
    unpaired = torch.isin(flat, to_device(_UNPAIRED, device)).any(dim=1)
    which = which.to(device).bool() & ~unpaired
    swapped = to_device(_SWAP_LUT, device)[labels.flip(1).long()].to(labels.dtype)
    labels = torch.where(which.view(b, *[1] * (labels.dim() - 1)), swapped, labels)
    keep = which.view(b, *[1] * (image.dim() - 1)).to(image.device)
    image = torch.where(keep, image.flip(2), image)
    return image, labels


def _draw(b: int, cfg: DataConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-sample parameters on the CPU: mirror (B,), theta (B, 2, 3), coarse (B, 2, 5, 5)
    elastic control points (0 where off), curve (B, 9) knot values (the identity where off),
    gain, offset, sigma (B,); flags spatial, elastic, curved (B,) bool."""
    mirror = (torch.rand(b, generator=g) < 0.5) if cfg.mirror else torch.zeros(b, dtype=torch.bool)
    spatial = torch.rand(b, generator=g) < cfg.spatial_prob
    angle = _uniform(b, -cfg.rotation_deg, cfg.rotation_deg, g) * (math.pi / 180) * spatial
    scale = torch.where(spatial, _uniform(b, *cfg.scale_range, g), torch.ones(b))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    elastic = (torch.rand(b, generator=g) < cfg.elastic_prob) & (cfg.elastic_alpha_px > 0)
    coarse = torch.randn(b, 2, _COARSE, _COARSE, generator=g) * elastic.view(b, 1, 1, 1)
    knots = torch.linspace(-1.0, 1.0, _KNOTS).expand(b, _KNOTS)
    curved = torch.rand(b, generator=g) < cfg.curve_prob
    # interior knots move up to 0.9 of their spacing, then sort: a monotone curve that keeps
    # the window's ends (padding stays -1) but reorders nothing
    jitter = (torch.rand(b, _KNOTS, generator=g) * 2 - 1) * (0.9 * 2 / (_KNOTS - 1))
    jitter[:, [0, -1]] = 0.0
    curve = torch.where(curved.view(b, 1), (knots + jitter).sort(dim=1).values, knots)
    intensity = torch.rand(b, generator=g) < cfg.intensity_prob
    gain = torch.where(intensity, _uniform(b, 0.9, 1.1, g), torch.ones(b))
    offset = torch.where(intensity, _uniform(b, -0.1, 0.1, g), torch.zeros(b))
    noisy = (torch.rand(b, generator=g) < cfg.intensity_prob) & (cfg.noise_std > 0)
    sigma = _uniform(b, 0.0, max(cfg.noise_std, 0.0), g) * noisy
    return {"mirror": mirror, "theta": theta, "coarse": coarse, "curve": curve, "gain": gain,
            "offset": offset, "sigma": sigma, "spatial": spatial, "elastic": elastic,
            "curved": curved}  # fmt: skip


def _grid(theta: torch.Tensor, coarse: torch.Tensor, h: int, w: int, alpha_px: float, elastic):
    """(B, H, W, 2) sampling grid: the affine part plus the elastic field where drawn."""
    b = theta.shape[0]
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    if elastic:
        field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        field = field / field.abs().amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
        # pixels -> normalised grid units (2 / size), x displacement on W, y on H (Python
        # scalars: a tensor made with device= would be a blocking copy)
        shift = torch.stack((field[:, 0] * (2.0 / w), field[:, 1] * (2.0 / h)), dim=-1)
        grid = grid + shift * alpha_px
    return grid


def apply_curve(image: torch.Tensor, curve: torch.Tensor) -> torch.Tensor:
    """Map image values through per-sample piecewise-linear curves.

    image (B, C, ...) (slices or volumes) in the window's [-1, 1] (values outside are clipped
    first); curve (B, K) values at K evenly spaced knots over [-1, 1].
    """
    b, k = curve.shape
    flat = image.reshape(b, -1).clamp(-1.0, 1.0)
    pos = (flat + 1.0) * (0.5 * (k - 1))
    left = pos.floor().clamp(max=k - 2)
    frac = pos - left
    low = curve.gather(1, left.long())
    high = curve.gather(1, left.long() + 1)
    return (low + frac * (high - low)).reshape(image.shape)


def vessel_contrast(
    image: torch.Tensor, labels: torch.Tensor, target_hu: torch.Tensor, hu_window
) -> torch.Tensor:
    """Give every vessel (``labels.VESSELS``) of each sample a new mean intensity.

    image (B, C, H, W) normalised with ``hu_window``, labels (B, H, W) uint8; or volumes,
    image (B, C, X, Y, Z) and labels (B, X, Y, Z). target_hu (B, V) the mean HU for each vessel
    in ``VESSELS`` order, NaN where a vessel keeps its intensity (an all-NaN row leaves its
    sample untouched). The shift is the target minus the vessel's mean in the centre channel,
    applied to all channels (2.5D neighbours hold the same vessel), so noise and texture stay;
    outside the vessels a 3 x 3 (x 3 on volumes) mean of the shift map gives the voxels next to
    them a share of it, as partial volume would. A vessel absent from a sample changes nothing.
    """
    b, c = image.shape[:2]
    lo, hi = hu_window
    device = image.device
    target = (target_hu.to(image.dtype) - lo) * (2.0 / (hi - lo)) - 1.0
    flat_labels = labels.reshape(b, -1).long()
    centre = image[:, c // 2].reshape(b, -1)
    bins = NUM_LABELS
    sums = torch.zeros(b, bins, dtype=image.dtype, device=device).scatter_add_(
        1, flat_labels, centre
    )
    counts = torch.zeros_like(sums).scatter_add_(1, flat_labels, torch.ones_like(centre))
    values = to_device(_VESSEL_VALUES, device)
    delta = torch.zeros_like(sums)
    delta[:, values] = torch.nan_to_num(target - sums[:, values] / counts[:, values].clamp(min=1))
    shift = delta.gather(1, flat_labels).view(b, 1, *labels.shape[1:])
    pool = F.avg_pool3d if labels.dim() == 4 else F.avg_pool2d
    fringe = pool(shift, 3, stride=1, padding=1, count_include_pad=False)
    return image + torch.where(shift != 0, shift, fringe)


def augment_batch(
    image: torch.Tensor,
    labels: torch.Tensor,
    cfg: DataConfig,
    generator: torch.Generator,
    mirror_allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Randomly mirror (if ``cfg.mirror``), rotate/scale/deform, and change intensities.

    ``mirror_allowed``: (B,) bool on the CPU, False for samples never to mirror (their subject
    annotates one side of a left/right pair only: ``SliceDataset.mirror_safe``); None: all.
    Returns new tensors of the same shapes and dtypes; the inputs are not modified.
    """
    g = generator
    b, _, h, w = image.shape
    device = image.device
    drawn = _draw(b, cfg, g)
    if mirror_allowed is not None:  # after the draw: the random stream stays the same
        drawn["mirror"] = drawn["mirror"] & mirror_allowed.cpu().bool()
    flat = torch.cat([drawn[k].reshape(b, -1).float() for k in _PACKED], dim=1)
    parts = dict(zip(_PACKED, to_device(flat, device).split(_PACKED_WIDTHS, dim=1), strict=True))
    if cfg.mirror:
        image, labels = mirror_lr(image, labels, parts["mirror"].squeeze(1) > 0.5)
    if bool((drawn["spatial"] | drawn["elastic"]).any()):  # CPU flags: no sync
        theta = parts["theta"].view(b, 2, 3)
        coarse = parts["coarse"].view(b, 2, _COARSE, _COARSE)
        grid = _grid(theta, coarse, h, w, cfg.elastic_alpha_px, bool(drawn["elastic"].any()))
        # pad with the window's low end (-1): shift so that it becomes the zero padding
        image = F.grid_sample(image + 1.0, grid, mode="bilinear", align_corners=False) - 1.0
        warped = F.grid_sample(
            labels.unsqueeze(1).float(), grid, mode="nearest", align_corners=False
        )
        labels = warped.squeeze(1).round().to(labels.dtype)
    if cfg.vessel_contrast_prob > 0:  # drawn only when on: other runs keep their random stream
        chosen = torch.rand(b, 1, generator=g) < cfg.vessel_contrast_prob
        hu = _uniform(b * len(VESSELS), *VESSEL_HU, g).view(b, len(VESSELS))
        hu = torch.where(chosen, hu, torch.full_like(hu, float("nan")))
        image = vessel_contrast(image, labels, to_device(hu, device), cfg.hu_window)
    if bool(drawn["curved"].any()):
        image = apply_curve(image, parts["curve"])
    image = image * parts["gain"].view(b, 1, 1, 1) + parts["offset"].view(b, 1, 1, 1)
    if bool(drawn["sigma"].any()):
        image = image + gaussian_noise(image, g) * parts["sigma"].view(b, 1, 1, 1)
    return image, labels


def gaussian_noise(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise shaped and placed like ``like``, seeded from ``generator`` (CPU).

    On an accelerator the full-size noise is drawn there, by a generator seeded from
    ``generator``: drawing it on the CPU and copying it over would cost a blocking copy.
    """
    noise_gen = generator
    if like.device.type != "cpu":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        noise_gen = torch.Generator(device=like.device).manual_seed(seed)
    return torch.randn(like.shape, generator=noise_gen, device=like.device)
