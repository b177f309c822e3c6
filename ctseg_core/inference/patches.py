"""Sliding-window inference for volumetric models: the "patches" strategy.

``label`` first narrows the CT to the box around the body (``body_box``, unless
``predictor.body_crop`` is off; the rest is background). Then the canonical CT (X, Y, Z) int16 HU
is resampled (trilinear) to the model's ``data.spacing_mm`` (None: kept), padded (centred) to at
least one patch, and cut into ``data.patch_size`` windows overlapping by ``overlap`` (nnU-Net's
placement: as few windows as that overlap allows, spread evenly from edge to edge). Each window's
logits are weighted by a Gaussian (sigma = patch / 8, as nnU-Net) and summed, per label value the
model predicts only, at the model's spacing, each weight divided by the voxel's sum of weights
(known beforehand). Test-time augmentation adds passes (a mirrored window; or the window moved by
a few voxels, as far as the volume allows), each weighted alike; an ensemble is the mean of its
members' averages, whatever their patches and passes (each member divides by its own sum of
weights). Logits are averaged as
nnU-Net averages windows, mirrors and folds, and it costs one pass over a window's output (for a
512 x 512 x 300 CT on 2 cores, ~1.4 s beside the forwards, against ~8.4 s with a softmax first:
benchmarks/inference_3d.py); class probabilities are averaged instead where logits do not compare:
a sigmoid model, or a pass without a channel for some active value, which then counts as
probability 0 (``Predictor`` refuses ensembles of different structures or outputs, and
``augmentations`` mirrors only models whose lateral structures have their partners, so a softmax
model's passes always have one). Each member pads a CT thinner than its patch on its own grid
(centred), as it would alone, placed in the largest member's; the padding holds its
``data.patches.pad_value`` after its normalisation (``data.padding``: air, or nnU-Net's
normalised 0), as the member was trained. The scores go back to the CT's own grid a slab of
slices at a time (``to_grid.labels_on_grid``), where their argmax gives the labels.

Logits are added from the network's bf16 output a slab of slices at a time (mixed-precision
``addcmul_``: on a CPU PyTorch converts each 16 MB slab to float32 first, on CUDA it casts on
the fly); probabilities and mirrored passes go a few z slices at a time, so no buffer
holds more than the network's own output in float32; patches run in batches of ``batch`` under
bf16 autocast where the device has it (``device.resolve_amp``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data.patches import pad_value
from ..data.resample import CT_SLAB, grid_shape, resample_ct
from ..data.slices import normalize_hu
from ..device import autocast_context, resolve_amp, resolve_channels_last
from ..errors import ConfigError, CtsegError
from ..labels import lr_swap_lut, mirror_partners_present
from ..models.cpu_convs import split_single_sample_convs
from ..models.head import channel_label_values
from ..models.nnunet import architecture, keep_channels_last
from ..settings import max_voxels
from .body_box import body_box
from .to_grid import SLAB_VALUES, labels_on_grid
from .windows import TTA_SHIFTS, gaussian_importance, pass_weights, window, window_starts

#: values of a window's output copied at once (z slices, all channels): probabilities, mirrors
_CHUNK_VALUES = 16 * 2**20
#: values of a plain pass's logits added at once: a window's whole output in one addcmul_ took
#: 0.3-0.6 s, in slabs of this size 0.19 s (112 x 112 x 128 x 118, 2 cores; 11 slices 0.33 s)
_PLAIN_VALUES = 4 * 2**20


class PatchStrategy:
    """Sliding-window patches through a volumetric model (see the module doc)."""

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        members = predictor.members
        spacings = {_spacing(m.config) for m in members}
        if len(spacings) > 1:
            raise ConfigError(
                f"an ensemble of 3D models needs one spacing; these use {sorted(map(str, spacings))} mm"
            )
        self.spacing = spacings.pop()
        for m in members:
            if m.config.data.patch_size is None:
                raise ConfigError(f"{m.path} has no data.patch_size; a 3D model needs one")
        self.patch = tuple(max(int(m.config.data.patch_size[i]) for m in members) for i in range(3))
        self.overlap = float(getattr(predictor, "overlap", 0.5))
        #: the score sums in host memory, not the device's (``Predictor.check_memory``)
        self.host_sums = False
        self.amp = resolve_amp("auto", predictor.device)
        # channels last, its instance norms kept so (``keep_channels_last``: PyTorch's copy
        # the layout): a 112 x 112 x 128 patch of a 6-stage U-Net in 1.15 s on 2 AMX cores
        # under bf16, against 2.1 s with PyTorch's norms and 3.5 s in the default layout
        # (float32 there: 7.5 s channels last, 6.5 s not; but float32 is what a CPU without
        # native bf16 runs, and on an AVX2 EPYC channels last took 5.1 s against 6.4 s); cuDNN
        # prefers it too. The trainer's rule for a 3D model, so both run in the same layout.
        self.channels_last = resolve_channels_last(
            "auto", predictor.device, self.amp, volumetric=True
        )
        if self.channels_last:
            for m in members:
                keep_channels_last(m.model.to(memory_format=torch.channels_last_3d))
        if predictor.device.type == "cpu":  # a batch of one patch would miss oneDNN (cpu_convs)
            for m in members:
                split_single_sample_convs(m.model)
        active = predictor.active
        # per member, direct and mirrored: the output channel each active label value reads
        # (-1: none: sigmoid background, or the mirror partner of a structure the model lacks)
        position = {v: i for i, v in enumerate(active)}
        swap = lr_swap_lut(predictor.structures)
        self._sources = {}
        for m in members:
            values = channel_label_values(m.config).tolist()
            sources = []
            for lut in (None, swap):
                read = torch.full((len(active),), -1, dtype=torch.int64)
                for channel, value in enumerate(values):
                    target = value if lut is None else int(lut[value])
                    if target in position:
                        read[position[target]] = channel
                sources.append(read)
            self._sources[id(m)] = sources

    def augmentations(self, member) -> list[str]:
        """The test-time augmentations of ``member`` ("identity" alone without TTA): the
        left/right mirror for models trained with it whose lateral structures all have their
        partners (``labels.mirror_partners_present``: else a mirrored pass gives a structure
        whose partner it lacks probability 0, and it hardly ever wins), else two shifted
        copies."""
        if not self.predictor.tta:
            return ["identity"]
        data = member.config.data
        if getattr(data, "mirror", False) and mirror_partners_present(data.structures):
            return ["identity", "mirror"]
        return ["identity", *(f"shift{i}" for i in range(len(TTA_SHIFTS)))]

    def model_grid(self, shape_xyz: Sequence[int], spacing_mm: Sequence[float] | None) -> tuple:
        """The shape of a CT of ``shape_xyz`` at ``spacing_mm`` on the model's grid."""
        if self.spacing is not None and spacing_mm is None:
            raise ConfigError(
                "a 3D model resamples the CT to its spacing: give the CT's spacing_mm "
                "(predict a Volume from data.volume.load_ct)"
            )
        if spacing_mm is not None and not all(
            math.isfinite(float(s)) and float(s) > 0 for s in spacing_mm
        ):
            raise CtsegError(
                f"the CT's voxel spacing {tuple(spacing_mm)} mm must be > 0 and finite"
            )
        grid = grid_shape(shape_xyz, spacing_mm, self.spacing)
        if math.prod(grid) > max_voxels():
            raise CtsegError(
                f"the CT resampled to {self.spacing} mm would be {' x '.join(map(str, grid))} "
                f"voxels, over the {max_voxels():,} voxel limit (CTSEG_MAX_VOXELS); crop the CT"
            )
        return grid

    def estimate_bytes(self, shape_xyz: Sequence[int], batch: int,
                       spacing_mm: Sequence[float] | None = None) -> int:  # fmt: skip
        """Peak memory (bytes) of labelling a CT of ``shape_xyz``, an estimate.

        Held throughout: the int16 CT and uint8 labels (and a copy of each for reorientation),
        the HU volume, the score sums (one float per active label value) and weights on the
        padded model grid, and where padded the mask of the CT's voxels. Then the larger of a batch (input, logits, the network's skips and
        working maps, the buffers of a few z slices of a window) and the way back
        (``to_grid``: about ``SLAB_VALUES`` values a slab, each model voxel's winner, the
        labels' z-first copy). ``spacing_mm`` None: the CT's grid is the model's.
        """
        x, y, z = (int(s) for s in shape_xyz)
        grid, sums, network, back = self._device_terms(shape_xyz, batch, spacing_mm)
        voxels = math.prod(max(g, p) for g, p in zip(grid, self.patch, strict=True))
        held = x * y * z * 6 + sums + voxels * 4  # and the HU volume
        if voxels != math.prod(grid):  # the mask of the CT's voxels in the padded volume (bool)
            held += voxels
        resample = x * y * CT_SLAB * 4 * 3
        return held + max(resample, network, back)

    def device_bytes(self, shape_xyz: Sequence[int], batch: int,
                     spacing_mm: Sequence[float] | None = None) -> int:  # fmt: skip
        """The part of ``estimate_bytes`` on the predictor's device (a GPU's): the batch's, and
        unless ``host_sums`` the score sums and the way back."""
        _grid, sums, network, back = self._device_terms(shape_xyz, batch, spacing_mm)
        return network if self.host_sums else sums + max(network, back)

    def _device_terms(self, shape_xyz: Sequence[int], batch: int,
                      spacing_mm: Sequence[float] | None) -> tuple:  # fmt: skip
        """(model grid, score sums' and weights' bytes, a batch's, the way back's)."""
        x, y, z = (int(s) for s in shape_xyz)
        grid = grid_shape(shape_xyz, spacing_mm, self.spacing)
        voxels = math.prod(max(g, p) for g, p in zip(grid, self.patch, strict=True))
        a = len(self.predictor.active)
        sums = voxels * 4 * (a + 1)  # and a member's sums of weights
        value_bytes = 2 if self.amp is not None else 4
        batch_terms = 0
        for m in self.predictor.members:
            p = math.prod(int(s) for s in m.config.data.patch_size)
            k = int(m.config.model.out_channels)
            activations = _activation_values(m.config, m.config.data.patch_size)
            # per window: its input and its weights (float32), logits and feature maps
            network = batch * (p * 8 + p * k * value_bytes + activations * value_bytes)
            batch_terms = max(batch_terms, network + p * 4 + _CHUNK_VALUES * 4 * 3)
        # to_grid: a slab's buffers are about SLAB_VALUES values (float32 or int64), at least
        # one output slice's and three model slices' worth; every model voxel's winner (int64)
        # and the labels' z-first copy
        back = 2 * SLAB_VALUES * 6 + x * y * 40 + 3 * a * grid[0] * grid[1] * 4
        back += math.prod(grid) * 8 + x * y * z
        return grid, sums, batch_terms, back

    @torch.inference_mode()
    def scores(self, ct_xyz: np.ndarray, batch: int, spacing_mm: Sequence[float] | None = None,
               progress: Callable[[int, int, str], None] | None = None) -> torch.Tensor:  # fmt: skip
        """(Z', X', Y', A) float32 scores of the active label values on the model's grid, z
        first and channels last (``predictor.active`` order): logits (or class probabilities,
        ``averages_logits``) averaged over windows, TTA and members."""
        grid = self.model_grid(ct_xyz.shape, spacing_mm)
        device = self.predictor.device
        volume = resample_ct(ct_xyz, grid)
        before = [max(0, p - g) // 2 for g, p in zip(grid, self.patch, strict=True)]
        padded = [max(g, p) for g, p in zip(grid, self.patch, strict=True)]
        inside = None  # (X', Y', Z') bool: the CT's voxels in the padded volume
        if padded != list(grid):
            box = tuple(slice(b, b + g) for b, g in zip(before, grid, strict=True))
            full = torch.zeros(padded, dtype=torch.float32)
            full[box] = volume
            volume, inside = full, torch.zeros(padded, dtype=torch.bool)
            inside[box] = True
        # channels last and z first, as the windows' logits are laid out and the way back reads
        # them (a slab of slices at a time): (Z, X, Y, A) sums, a member's (Z, X, Y) weights
        zxy = (padded[2], padded[0], padded[1])
        sums_on = torch.device("cpu") if self.host_sums else device
        acc = torch.zeros((*zxy, len(self.predictor.active)), device=sums_on)
        jobs = []
        for m in self.predictor.members:
            # each member on the grid it pads alone (to its own patch, centred), placed in the
            # largest one: a smaller patch's windows never run over padding it would not see
            patch = tuple(int(s) for s in m.config.data.patch_size)
            own = [max(g, p) for g, p in zip(grid, patch, strict=True)]
            offset = [b - max(0, p - g) // 2 for b, g, p in zip(before, grid, patch, strict=True)]
            starts = itertools.product(*(window_starts(n, p, self.overlap)
                                         for n, p in zip(own, patch, strict=True)))  # fmt: skip
            jobs.append((m, patch, own, offset, list(starts)))
        total, done = sum(len(job[-1]) for job in jobs), 0
        logits = self.averages_logits()
        for member, patch, own, offset, starts in jobs:
            g = gaussian_importance(patch).permute(2, 0, 1).to(sums_on)  # (pz, px, py)
            augs = self.augmentations(member)
            # each member's passes are normalised by its own sum of weights, so members with
            # other patches or passes count alike (the mean of the members' averages)
            norm = pass_weights(starts, patch, augs, own, g).mul_(len(jobs)).reciprocal_()
            for first in range(0, len(starts), batch):
                chunk, plain = starts[first : first + batch], None
                for aug in augs:
                    local = [window(start, patch, aug, own) for start in chunk]
                    windows = [
                        tuple(
                            slice(w.start + o, w.stop + o) for w, o in zip(ws, offset, strict=True)
                        )
                        for ws in local
                    ]  # in the largest padded grid
                    if aug.startswith("shift"):  # a shifted pass reads its own windows
                        x = self._inputs(volume, inside, windows, member)
                    else:  # the plain and the mirrored pass read the same
                        if plain is None:
                            plain = self._inputs(volume, inside, windows, member)
                        x = plain
                    weights = torch.stack([g * norm[wz, wx, wy] for wx, wy, wz in local])
                    self._accumulate(member, x, aug, weights, acc, windows, logits)
                done += len(chunk)
                if progress:
                    progress(done, total, "patches")
        ix, iy, iz = (slice(b, b + n) for b, n in zip(before, grid, strict=True))
        return acc[iz, ix, iy]

    def _inputs(self, volume: torch.Tensor, inside: torch.Tensor | None,
                windows: list[tuple[slice, ...]], member) -> torch.Tensor:  # fmt: skip
        """(B, 1, px, py, pz) normalised input of ``windows`` of the padded ``volume`` for
        ``member``, its padding value where ``inside`` (the CT's voxels) is False."""
        x = torch.stack([volume[w] for w in windows])[:, None]
        x = normalize_hu(x, member.config.data.hu_window)
        if inside is not None:  # padded after normalising, with the member's value
            real = torch.stack([inside[w] for w in windows])[:, None]
            x = x.masked_fill_(~real, pad_value(member.config.data))
        x = x.to(self.predictor.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def averages_logits(self) -> bool:
        """Whether windows, passes and members average logits (else class probabilities):
        every member a softmax model, and every pass it makes reading each active label value
        from one of its channels (see the module doc)."""
        for m in self.predictor.members:
            if m.config.output_mode != "softmax":
                return False
            passes = [0, 1] if "mirror" in self.augmentations(m) else [0]
            if any(bool((self._sources[id(m)][i] < 0).any()) for i in passes):
                return False
        return True

    def _accumulate(self, member, x: torch.Tensor, aug: str, weights: torch.Tensor,
                    acc: torch.Tensor, windows: list[tuple[slice, ...]],
                    logits: bool) -> None:  # fmt: skip
        """Add ``weights`` (B, pz, px, py) x the logits (``logits``; else the class
        probabilities) of one augmentation of a batch of ``windows`` to ``acc``, a slab of z
        slices of a window at a time (channels last: rows contiguous); a plain pass's logits
        straight from the network's output. A shifted pass's windows are already moved
        (``windows.window``): its output lands where its input came from."""
        flip = aug == "mirror"
        if flip:
            x = torch.flip(x, dims=[2])  # x: patient left/right
        with autocast_context(self.predictor.device, self.amp):
            out = member.model(x)  # (B, K, px, py, pz)
        out = out.to(acc.device)  # the sums in host memory: the batch's output goes there
        read = self._sources[id(member)][1 if flip else 0].to(acc.device)
        missing = torch.nonzero(read < 0).flatten()
        softmax = member.config.output_mode == "softmax"
        identity = len(read) == out.shape[1] and bool(
            (read == torch.arange(len(read), device=read.device)).all()
        )
        _, k, px, py, pz = out.shape
        if logits and identity and not flip:
            rows = max(1, _PLAIN_VALUES // (px * py * k))
            for b, (wx, wy, wz) in enumerate(windows):
                view = out[b].permute(3, 1, 2, 0)  # (pz, px, py, K), no copy
                for z0 in range(0, pz, rows):
                    z1 = min(z0 + rows, pz)
                    acc[wz.start + z0 : wz.start + z1, wx, wy].addcmul_(
                        view[z0:z1], weights[b, z0:z1, :, :, None]
                    )
            return
        rows = max(1, _CHUNK_VALUES // (px * py * k))
        for b, (wx, wy, wz) in enumerate(windows):
            for z0 in range(0, pz, rows):
                z1 = min(z0 + rows, pz)
                # (zc, px, py, K) float32
                part = out[b, :, :, :, z0:z1].permute(3, 1, 2, 0).float().contiguous()
                if not logits and softmax:
                    part.sub_(part.amax(dim=3, keepdim=True)).exp_()
                    part.div_(part.sum(dim=3, keepdim=True))
                elif not logits:
                    part.sigmoid_()
                if flip:
                    part = part.flip(1)
                if not identity:
                    part = part.index_select(3, read.clamp(min=0))
                    part[..., missing] = 0.0  # probabilities only (averages_logits)
                    if not softmax:
                        part[..., 0] = 0.5  # sigmoid outputs: the background is 0.5
                acc[wz.start + z0 : wz.start + z1, wx, wy].addcmul_(
                    part, weights[b, z0:z1, :, :, None]
                )

    def label(self, ct_xyz: np.ndarray, batch: int,
              progress: Callable[[int, int, str], None] | None,
              spacing_mm: Sequence[float] | None = None) -> np.ndarray:  # fmt: skip
        """(X, Y, Z) int16 HU at ``spacing_mm`` -> (X, Y, Z) uint8 labels; ``batch`` patches
        per forward pass; ``progress(done_patches, total_patches, "patches")`` after each batch.
        With ``predictor.body_crop`` only the box around the body is labelled (``body_box``),
        the rest is background."""
        self.model_grid(ct_xyz.shape, spacing_mm)  # the spacing's one-line errors first
        box = self.body_box(ct_xyz, spacing_mm) if self.predictor.body_crop else None
        self.predictor.last_box = box
        part = ct_xyz if box is None else ct_xyz[box]
        scores = self.scores(part, batch, spacing_mm, progress)
        active = torch.tensor(self.predictor.active, dtype=torch.int64)
        labels = labels_on_grid(scores, part.shape, active)
        if box is None:
            return labels
        whole = np.zeros(ct_xyz.shape, dtype=np.uint8)
        whole[box] = labels
        return whole

    def body_box(self, ct_xyz: np.ndarray,
                 spacing_mm: Sequence[float] | None) -> tuple[slice, ...] | None:  # fmt: skip
        """The CT's box around the body, at least a patch wide (``body_box.body_box``); None:
        the whole CT."""
        ct_spacing = tuple(spacing_mm) if spacing_mm is not None else (1.0, 1.0, 1.0)
        model_spacing = self.spacing if self.spacing is not None else ct_spacing
        extent_mm = [p * float(s) for p, s in zip(self.patch, model_spacing, strict=True)]
        return body_box(ct_xyz, ct_spacing, extent_mm)


def _spacing(config) -> tuple[float, float, float] | None:
    spacing = config.data.spacing_mm
    return None if spacing is None else tuple(float(s) for s in spacing)


def _activation_values(config, patch: Sequence[int]) -> int:
    """Feature-map values one patch holds at the peak of an inference forward pass: every
    encoder stage's output (kept for its skip) and five maps of the first stage's width
    (the last decoder stage's upsampled, concatenated and convolved maps)."""
    residual = config.model.name.startswith("resenc")
    arch = architecture(config.model, residual)
    voxels, total = math.prod(int(p) for p in patch), 0
    for width, stride in zip(arch.widths, arch.strides, strict=True):
        voxels //= math.prod(stride)
        total += width * voxels
    return total + 5 * arch.widths[0] * math.prod(int(p) for p in patch)
