"""An nnU-Net v2 ``plans.json`` configuration: its network and its preprocessing, as numbers.

Axes: nnU-Net works on arrays in the reader's axis order transposed by ``transpose_forward``
(for SimpleITKIO the reader's order is the file's voxel axes reversed: (k, j, i)); every shape,
spacing (mm) and patch here is in that transposed order. The preprocessing is nnU-Net's:
crop to the bounding box of the filled nonzero mask, CT normalisation (clip to the foreground's
0.5 / 99.5 percentiles, subtract the mean, divide by the std), resampling to the plans' spacing
with the function the plans name: ``resample_data_or_seg_to_shape`` (scikit-image ``resize``
with the plans' spline order, edge mode; an axis more than 3x coarser than the others is
resampled on its own with ``order_z`` nearest-mode interpolation) or ``resample_torch_fornnunet``
(torch's linear ``interpolate``; such an axis on its own with nearest-exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from ..errors import ConfigError

#: what a plans' "_kw_requires_import" may name, and nothing else (no code is located by name)
_IMPORTABLE = {
    f"torch.nn.modules.{module}.{cls.__name__}": cls
    for module, classes in {
        "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
        "instancenorm": (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
        "batchnorm": (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d),
        "dropout": (nn.Dropout, nn.Dropout2d, nn.Dropout3d),
        "activation": (nn.LeakyReLU, nn.ReLU, nn.GELU, nn.PReLU),
    }.items()
    for cls in classes
}
_IMPORTABLE |= {f"torch.nn.{cls.__name__}": cls for cls in list(_IMPORTABLE.values())}
#: ratio of the coarsest to the finest spacing above which that axis is resampled on its own
ANISO_THRESHOLD = 3


@dataclass(frozen=True)
class Configuration:
    """One configuration of the plans (``inherits_from`` resolved) and the plans' globals."""

    name: str
    spacing_mm: tuple[float, ...]  # 2 entries for 2d (the in-plane axes), 3 for 3d
    patch_size: tuple[int, ...]
    normalization: tuple[str, ...]
    intensity: dict  # channel "0" -> {mean, std, percentile_00_5, percentile_99_5, ...}
    transpose_forward: tuple[int, int, int]
    transpose_backward: tuple[int, int, int]
    reader: str
    data_resampler: str  # a key of RESAMPLERS
    data_kwargs: dict
    probabilities_resampler: str
    probabilities_kwargs: dict
    network_class: str
    arch_kwargs: dict
    requires_import: tuple[str, ...]

    @property
    def is_2d(self) -> bool:
        return len(self.patch_size) == 2

    def resample_data(self, data: np.ndarray, shape, current_mm, target_mm) -> np.ndarray:
        """The image (C, *spatial) resampled as the plans' ``resampling_fn_data`` does."""
        resampler = RESAMPLERS[self.data_resampler]
        return resampler(data, shape, current_mm, target_mm, **self.data_kwargs)

    def resample_probabilities(self, data: np.ndarray, shape, current_mm, target_mm) -> np.ndarray:
        """Logits (C, *spatial) resampled as the plans' ``resampling_fn_probabilities`` does."""
        resampler = RESAMPLERS[self.probabilities_resampler]
        return resampler(data, shape, current_mm, target_mm, **self.probabilities_kwargs)


def read_configuration(plans: dict, name: str, where: str = "plans.json") -> Configuration:
    """The configuration ``name`` of ``plans`` (a loaded plans.json); ConfigError naming ``where``."""
    configs = plans.get("configurations") or {}
    if name not in configs:
        raise ConfigError(f"{where} has no configuration {name!r} (it has {sorted(configs)})")
    merged, seen = {}, []
    while name is not None:
        if name in seen or name not in configs:
            raise ConfigError(f"{where}: configuration {seen[-1]!r} inherits from unknown {name!r}")
        seen.append(name)
        merged = {**configs[name], **merged}
        name = configs[name].get("inherits_from")
    try:
        arch = merged["architecture"]
        resamplers = {k: str(merged[f"resampling_fn_{k}"]) for k in ("data", "probabilities")}
        for key, fn in resamplers.items():
            if fn not in RESAMPLERS:
                raise ConfigError(
                    f"{where}: resampling_fn_{key} {fn!r} is not supported; ctseg runs "
                    f"{sorted(RESAMPLERS)}"
                )
        conv = str(arch["arch_kwargs"].get("conv_op", ""))
        dims = 2 if conv.endswith("Conv2d") else 3 if conv.endswith("Conv3d") else None
        if dims and (len(merged["patch_size"]) != dims or len(merged["spacing"]) != dims):
            raise ConfigError(
                f"{where}: configuration {seen[0]!r} has patch_size {merged['patch_size']} and "
                f"spacing {merged['spacing']}; a {dims}D configuration has {dims} of each"
            )
        return Configuration(
            name=seen[0],
            spacing_mm=tuple(float(s) for s in merged["spacing"]),
            patch_size=tuple(int(p) for p in merged["patch_size"]),
            normalization=tuple(merged["normalization_schemes"]),
            intensity=plans["foreground_intensity_properties_per_channel"],
            transpose_forward=tuple(int(t) for t in plans["transpose_forward"]),
            transpose_backward=tuple(int(t) for t in plans["transpose_backward"]),
            reader=str(plans.get("image_reader_writer", "SimpleITKIO")),
            data_resampler=resamplers["data"],
            data_kwargs=dict(merged["resampling_fn_data_kwargs"]),
            probabilities_resampler=resamplers["probabilities"],
            probabilities_kwargs=dict(merged["resampling_fn_probabilities_kwargs"]),
            network_class=str(arch["network_class_name"]),
            arch_kwargs=dict(arch["arch_kwargs"]),
            requires_import=tuple(arch.get("_kw_requires_import", ())),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: configuration {seen[0]!r} lacks or mangles {exc}") from None


def build_network(config: Configuration, in_channels: int, out_channels: int) -> nn.Module:
    """The configuration's U-Net, eval mode, no deep supervision, weights uninitialised.

    PlainConvUNet and ResidualEncoderUNet of dynamic-network-architectures, through ctseg's
    subclasses (``models.nnunet.network_classes``: same state dict keys as nnU-Net's)."""
    from ..models.nnunet import network_classes

    plain, residual = network_classes()
    short = config.network_class.rsplit(".", 1)[-1]
    classes = {"PlainConvUNet": plain, "ResidualEncoderUNet": residual}
    if short not in classes:
        raise ConfigError(
            f"plans.json network {config.network_class!r} is not supported; ctseg rebuilds "
            f"{sorted(classes)}"
        )
    kwargs = dict(config.arch_kwargs)
    for key in config.requires_import:
        if kwargs.get(key) is None:
            continue
        if kwargs[key] not in _IMPORTABLE:
            raise ConfigError(
                f"plans.json {key} {kwargs[key]!r} is not a torch.nn layer ctseg knows"
            )
        kwargs[key] = _IMPORTABLE[kwargs[key]]
    kwargs["deep_supervision"] = False
    net = classes[short](input_channels=in_channels, num_classes=out_channels, **kwargs)
    return net.eval()


def crop_box(data: np.ndarray) -> tuple[slice, ...]:
    """(C, *spatial) -> slices of the bounding box of the nonzero voxels of any channel, holes
    filled (nnU-Net crops to it; for a CT nearly always the whole volume); whole axes when none."""
    from scipy.ndimage import binary_fill_holes

    mask = binary_fill_holes((data != 0).any(axis=0))
    box = []
    for axis in range(mask.ndim):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if len(hit) else slice(None))
    return tuple(box)


def normalize(data: np.ndarray, config: Configuration) -> np.ndarray:
    """(C, *spatial) float32, in place: each channel with its scheme (CTNormalization only)."""
    for c, scheme in enumerate(config.normalization):
        if scheme != "CTNormalization":
            raise ConfigError(
                f"plans.json normalisation {scheme!r} of channel {c} is not supported (CT only)"
            )
        props = config.intensity[str(c)]
        channel = data[c]
        np.clip(channel, props["percentile_00_5"], props["percentile_99_5"], out=channel)
        channel -= props["mean"]
        channel /= max(props["std"], 1e-8)
    return data


def new_shape(shape, spacing_mm, target_mm) -> tuple[int, ...]:
    """Voxels per axis of ``shape`` at ``spacing_mm`` resampled to ``target_mm`` (rounded)."""
    pairs = zip(spacing_mm, target_mm, shape, strict=True)
    return tuple(round(float(s) / float(t) * int(n)) for s, t, n in pairs)


def _separate_axis(current_mm, target_mm, force, threshold: float = ANISO_THRESHOLD) -> int | None:
    """The one coarse axis resampled on its own, or None (nnU-Net's anisotropy rule)."""
    if force is False:
        return None
    for spacing in (current_mm, target_mm):
        spacing = np.asarray(spacing, dtype=float)
        if force or spacing.max() / spacing.min() > threshold:
            coarse = np.flatnonzero(spacing.max() / spacing == 1)
            return int(coarse[0]) if len(coarse) == 1 else None
    return None


def resample(data: np.ndarray, shape, current_mm, target_mm, order: int = 3, order_z: int = 0,
             force_separate_z: bool | None = False,
             separate_z_anisotropy_threshold: float = ANISO_THRESHOLD, out_dtype=None,
             **_) -> np.ndarray:  # fmt: skip
    """(C, *spatial) -> (C, *shape) in ``out_dtype`` (default: the input's), interpolated in
    float64 with scikit-image's ``resize`` (spline ``order``, edge mode, no antialiasing); the
    coarse axis of an anisotropic grid slice by slice, then ``order_z`` along it. Defaults as
    nnU-Net's ``resample_data_or_seg_to_shape`` (``force_separate_z`` False: plans that leave
    it out resample every axis together)."""
    from scipy.ndimage import map_coordinates
    from skimage.transform import resize

    shape = tuple(int(s) for s in shape)
    if tuple(data.shape[1:]) == shape:
        return data
    out = np.zeros((data.shape[0], *shape), dtype=out_dtype or data.dtype)
    data = data.astype(float, copy=False)
    axis = _separate_axis(current_mm, target_mm, force_separate_z, separate_z_anisotropy_threshold)
    for c in range(data.shape[0]):
        if axis is None:
            out[c] = resize(data[c], shape, order, mode="edge", anti_aliasing=False)
            continue
        plane = tuple(s for a, s in enumerate(shape) if a != axis)
        moved = np.moveaxis(data[c], axis, 0)
        stack = np.stack([resize(s, plane, order, mode="edge", anti_aliasing=False) for s in moved])
        stack = np.moveaxis(stack, 0, axis)
        if stack.shape[axis] == shape[axis]:
            out[c] = stack
            continue
        scale = [n_in / n_out for n_in, n_out in zip(stack.shape, shape, strict=True)]
        coords = np.mgrid[tuple(slice(0, n) for n in shape)].astype(float)
        for a in range(len(shape)):
            coords[a] = scale[a] * (coords[a] + 0.5) - 0.5
        out[c] = map_coordinates(stack, coords, order=order_z, mode="nearest")
    return out


def resample_torch(data: np.ndarray, shape, current_mm, target_mm,
                   force_separate_z: bool | None = None,
                   separate_z_anisotropy_threshold: float = ANISO_THRESHOLD,
                   mode: str = "linear", aniso_axis_mode: str = "nearest-exact",
                   **_) -> np.ndarray:  # fmt: skip
    """(C, X, Y, Z) -> (C, *shape) float32 as nnU-Net's ``resample_torch_fornnunet``: torch's
    ``interpolate`` (trilinear, align_corners False, no antialiasing); an anisotropic grid's
    slices with ``mode`` ("linear": bilinear), then its coarse axis with ``aniso_axis_mode``.
    Each channel on its own, so resampling channels one at a time gives the same values."""
    import torch
    import torch.nn.functional as F

    shape = tuple(int(s) for s in shape)
    if tuple(data.shape[1:]) == shape:
        return data
    if data.ndim != 4:
        raise ConfigError("resample_torch_fornnunet needs (C, X, Y, Z) data")
    axis = _separate_axis(current_mm, target_mm, force_separate_z, separate_z_anisotropy_threshold)
    x = torch.from_numpy(np.ascontiguousarray(data)).float()
    if axis is None:  # nnU-Net passes no mode here: trilinear, whatever the plans say
        return F.interpolate(x[None], shape, mode="trilinear", antialias=False)[0].numpy()
    moved = x.movedim(axis + 1, 1)  # (C, coarse, a, b): the coarse slices as a batch
    n_channels, n_coarse = moved.shape[:2]
    plane = tuple(s for a, s in enumerate(shape) if a != axis)
    slices = moved.reshape(n_channels * n_coarse, *moved.shape[2:])[:, None]
    in_plane = F.interpolate(
        slices, plane, mode="bilinear" if mode == "linear" else mode, antialias=False
    )
    moved = in_plane.reshape(n_channels, n_coarse, *plane).movedim(1, axis + 1)
    return F.interpolate(moved[None], shape, mode=aniso_axis_mode)[0].numpy()


#: the plans' resampling function names ctseg runs
RESAMPLERS = {"resample_data_or_seg_to_shape": resample, "resample_torch_fornnunet": resample_torch}
