"""nnU-Net's prediction of one CT with a model folder: preprocessing, sliding window, folds,
and the labels back on the CT's grid.

The arithmetic follows nnU-Net v2's predictor step by step so the labels agree voxel for voxel
(``tests/test_nnunet_predict.py`` pins it against ``nnUNetPredictor``): windows placed as
``inference.patches.window_starts`` places them (step half a patch), the volume padded with
zeros (the normalised value) to at least one patch, centred; each window's logits averaged
over the allowed mirrorings (all combinations of the model's ``inference_allowed_mirroring_axes``),
weighted by a Gaussian (sigma patch / 8, centre at patch // 2, peak 10) and summed with the
weights in float16, as nnU-Net accumulates them, so its roundings and hence its ties are the
same; folds' logits averaged; the logits resampled back to the cropped grid (with the plans'
function, from float16; one channel at a time, keeping a running argmax) and their argmax put
into the uncropped, untransposed volume. A 2d configuration slides over each slice of the first
(transposed) axis. On a GPU the network runs under float16 autocast, as nnU-Net's does there
(``tests/test_gpu.py`` compares both on a GPU; not yet run on one).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..inference.patches import window_starts
from .folder import ModelFolder, load_weights
from .plans import Configuration, build_network, crop_box, new_shape, normalize

#: nnU-Net's step between windows: half a patch
TILE_STEP = 0.5


def gaussian_weights(patch: tuple[int, ...]) -> torch.Tensor:
    """float16 weights of a patch (any dimensions): a Gaussian of sigma patch / 8 per axis
    centred on voxel patch // 2, peak 10; zeros (none at this sigma) raised to the smallest
    nonzero weight. Computed by filtering a unit impulse, as nnU-Net does."""
    from scipy.ndimage import gaussian_filter

    impulse = np.zeros(patch)
    impulse[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(impulse, [p / 8 for p in patch], 0, mode="constant", cval=0)
    g /= g.max() / 10
    g = torch.from_numpy(g).to(torch.float16)
    g[g == 0] = g[g != 0].min()
    return g


@dataclass
class LoadedModel:
    """A model folder's network and each fold's weights."""

    folder: ModelFolder
    network: torch.nn.Module
    fold_weights: list[dict]
    mirror_axes: tuple[int, ...] | None

    @classmethod
    def load(cls, folder: ModelFolder, device: torch.device) -> LoadedModel:
        weights, axes = [], None
        for i, path in enumerate(folder.checkpoints):
            state, allowed = load_weights(path)
            weights.append(state)
            if i == 0:
                axes = allowed
        net = build_network(folder.config, folder.in_channels, len(folder.labels))
        try:
            net.load_state_dict(weights[0])
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"{folder.checkpoints[0]} does not fit plans.json: {first}") from None
        return cls(folder, net.to(device), weights, axes)


def _mirrored_logits(net: torch.nn.Module, x: torch.Tensor, axes: tuple[int, ...] | None,
                     ) -> torch.Tensor:  # fmt: skip
    """(1, C, *patch) -> (1, K, *patch) float32 logits averaged over the input and its flips
    along every non-empty combination of ``axes`` (spatial axes, 0-based)."""
    out = net(x)
    if not axes:
        return out
    dims = [a + 2 for a in axes]
    combos = [c for n in range(1, len(dims) + 1) for c in itertools.combinations(dims, n)]
    for combo in combos:
        out += torch.flip(net(torch.flip(x, combo)), combo)
    out /= len(combos) + 1
    return out


@torch.inference_mode()
def sliding_window_logits(model: LoadedModel, data: torch.Tensor, mirror: bool = True,
                          progress: Callable[[int, int, str], None] | None = None,
                          ) -> torch.Tensor:  # fmt: skip
    """(C, *spatial) float32 preprocessed -> (K, *spatial) float16 logits averaged over folds."""
    config, device = model.folder.config, next(model.network.parameters()).device
    patch = config.patch_size
    spatial = data.shape[1:]
    target = [max(p, s) for p, s in zip((1,) * (len(spatial) - len(patch)) + patch, spatial,
                                         strict=True)]  # fmt: skip
    below = [(t - s) // 2 for t, s in zip(target, spatial, strict=True)]
    pads = []
    for b, t, s in zip(reversed(below), reversed(target), reversed(spatial), strict=True):
        pads += [b, t - s - b]
    padded = F.pad(data, pads, "constant", 0) if any(pads) else data
    spatial_padded = padded.shape[1:]
    starts = [window_starts(n, p, 1.0 - TILE_STEP)
              for n, p in zip(spatial_padded[-len(patch):], patch, strict=True)]  # fmt: skip
    lead = [(d,) for d in range(spatial_padded[0])] if config.is_2d else [()]
    windows = [(*d, *s) for d in lead for s in itertools.product(*starts)]
    g = gaussian_weights(patch)
    axes = model.mirror_axes if mirror else None
    # nnU-Net runs its network under float16 autocast on a GPU (and in float32 on a CPU)
    amp = torch.autocast("cuda") if device.type == "cuda" else contextlib.nullcontext()
    total = None
    for f, state in enumerate(model.fold_weights):
        model.network.load_state_dict(state)
        model.network.eval()
        logits = torch.zeros((len(model.folder.labels), *spatial_padded), dtype=torch.half)
        weight = torch.zeros(spatial_padded, dtype=torch.half)
        for i, start in enumerate(windows):
            lead_idx = start[: len(start) - len(patch)]
            box = (*lead_idx, *(slice(s, s + p) for s, p in zip(start[len(lead_idx):], patch,
                                                                   strict=True)))  # fmt: skip
            x = padded[(slice(None), *box)][None].to(device)
            with amp:
                out = _mirrored_logits(model.network, x, axes)[0].cpu()
            out *= g
            logits[(slice(None), *box)] += out
            weight[box] += g
            if progress:
                progress(
                    f * len(windows) + i + 1, len(windows) * len(model.fold_weights), "patches"
                )
        torch.div(logits, weight, out=logits)
        total = logits if total is None else total.add_(logits)
    if len(model.fold_weights) > 1:
        total /= len(model.fold_weights)
    unpad = tuple(slice(b, b + s) for b, s in zip(below, spatial, strict=True))
    return total[(slice(None), *unpad)]


def resampled_argmax(logits: np.ndarray, shape, current_mm, target_mm, config: Configuration,
                     ) -> np.ndarray:  # fmt: skip
    """(K, *grid) float16 logits -> (*shape) uint8/uint16 argmax of them resampled to ``shape``
    (``config.resample_probabilities``, from float16 as nnU-Net stores them; ties to the lower
    channel, as argmax). One channel at a time with a running maximum: the same labels as
    resampling the K channels at once (both resamplers treat channels independently), without
    K volumes at ``shape`` (118 channels x the CT's voxels) and their float64 copy."""
    dtype = np.uint8 if len(logits) <= 256 else np.uint16
    if tuple(logits.shape[1:]) == tuple(shape):
        return torch.from_numpy(logits).argmax(0).numpy().astype(dtype)

    def channel(c: int) -> torch.Tensor:
        out = config.resample_probabilities(logits[c : c + 1], shape, current_mm, target_mm)
        return torch.from_numpy(out[0]).float()  # float16 values held exactly; compared fast

    best = channel(0)
    labels = torch.zeros(best.shape, dtype=torch.uint8 if dtype == np.uint8 else torch.int32)
    for c in range(1, len(logits)):
        value = channel(c)
        above = value > best  # strictly: a tie keeps the lower channel
        torch.maximum(best, value, out=best)
        labels.masked_fill_(above, c)
    return labels.numpy().astype(dtype, copy=False)


#: PyTorch's CPU convolution goes through an im2col buffer ("Slow3d") when batch x input
#: channels x the first two spatial sizes is at most this (its ``use_mkldnn`` rule), else oneDNN
_IM2COL_LIMIT = 20480


def _conv_workspace(c_in: int, c_out: int, kernel, grid) -> int:
    """Bytes one float32 convolution on a CPU holds besides its input: its output, and the
    im2col buffer (c_in x kernel voxels x output voxels) when it takes that path."""
    voxels = math.prod(grid)
    if len(grid) == 3 and c_in * grid[0] * grid[1] <= _IM2COL_LIMIT:
        return 4 * (c_in * math.prod(kernel) + c_out) * voxels
    return 4 * (c_in + 2 * c_out) * voxels


def _activation_bytes(config: Configuration, patch, in_channels: int = 1) -> int:
    """Peak bytes of the network's float32 activations on one window on a CPU: the encoder's
    outputs kept for the skips, the decoder's, and the largest convolution's workspace (an
    encoder convolution, or a decoder one on the skip and the upsampled features)."""
    kw = config.arch_kwargs
    features, grid, kept, workspace = list(kw["features_per_stage"]), list(patch), 0, 0
    c_in = in_channels
    for s, (width, stride) in enumerate(zip(features, kw["strides"], strict=True)):
        strides = stride if isinstance(stride, list | tuple) else [stride] * len(patch)
        grid = [g // int(st) for g, st in zip(grid, strides[-len(patch) :], strict=True)]
        kernel = kw["kernel_sizes"][s]
        kernel = kernel if isinstance(kernel, list | tuple) else [kernel] * len(patch)
        kept += 2 * int(width) * math.prod(grid)  # its encoder output and the decoder's
        workspace = max(workspace, _conv_workspace(c_in, int(width), kernel, grid),
                        _conv_workspace(2 * int(width), int(width), kernel, grid))  # fmt: skip
        c_in = int(width)
    return 4 * kept + workspace


def peak_bytes(model: LoadedModel, shape, spacing_mm, on_cpu: bool = True) -> int:
    """Estimated peak bytes :func:`predict_array` allocates for an image of ``shape`` voxels
    (the reader's axis order, ``spacing_mm`` per axis), besides the image itself.

    N voxels on the CT's grid, M on the model's (resampled to its spacing, padded to at least
    one patch), K classes: the float32 copy it transposes (4N); resampling to the model's grid
    (the float64 input and one float64 output channel besides the float32 result: 8N + 12M);
    the sliding window: the resampled image (4M), the float16 logits of every class and the
    weights (2KM + 2M; twice the logits with several folds, one fold's beside the sum) and,
    with ``on_cpu``, the network's activations on one window (on a GPU they are the device's);
    back to the CT's grid, one channel at a time: the
    logits, a float64 and two float32 channels, the labels and a mask (22N). An estimate from
    the arrays' sizes (measured against a prediction's peak in tests/test_nnunet_memory.py).
    """
    config = model.folder.config
    fwd = list(config.transpose_forward)
    shape = [int(shape[a]) for a in fwd]
    spacing = [float(spacing_mm[a]) for a in fwd]
    target = list(config.spacing_mm)
    if len(target) < len(shape):
        target = [spacing[0], *target]
    grid = new_shape(shape, spacing, target)
    patch = (1,) * (len(grid) - len(config.patch_size)) + tuple(config.patch_size)
    n = math.prod(shape)
    m = math.prod(max(p, g) for p, g in zip(patch, grid, strict=True))
    k = len(model.folder.labels)
    logits = 2 * k * m * (2 if len(model.fold_weights) > 1 else 1) + 2 * m
    resampling = 8 * n + 12 * m
    network = _activation_bytes(config, config.patch_size) if on_cpu else 0
    window = 4 * m + logits + network
    back = 4 * m + 2 * k * m + 22 * n
    return 4 * n + max(resampling, window, back)


def predict_array(model: LoadedModel, image: np.ndarray, spacing_mm, mirror: bool = True,
                  progress: Callable[[int, int, str], None] | None = None) -> np.ndarray:  # fmt: skip
    """(C, *spatial) image in the reader's axis order (``spacing_mm`` per axis) -> labels
    (*spatial) uint8/uint16 of the model's own values, in the same order and grid."""
    config = model.folder.config
    fwd, back = list(config.transpose_forward), list(config.transpose_backward)
    data = image.astype(np.float32).transpose([0, *[a + 1 for a in fwd]])
    spacing = [float(spacing_mm[a]) for a in fwd]
    uncropped = data.shape[1:]
    box = crop_box(data)
    data = data[(slice(None), *box)]
    cropped = data.shape[1:]
    target = list(config.spacing_mm)
    if len(target) < len(cropped):
        target = [spacing[0], *target]
    shape = new_shape(cropped, spacing, target)
    data = normalize(data, config)
    data = config.resample_data(data, shape, spacing, target)
    logits = sliding_window_logits(model, torch.from_numpy(np.ascontiguousarray(data)), mirror,
                                   progress)  # fmt: skip
    dtype = np.uint8 if max(model.folder.labels) < 255 else np.uint16
    full = np.zeros(uncropped, dtype=dtype)
    full[box] = resampled_argmax(logits.numpy(), cropped, target, spacing, config)
    return full.transpose(back)
