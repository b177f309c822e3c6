"""Model registry: a model is named in the config and rebuilt from it (and so from a checkpoint).

``build_model(model_config, data_config)`` returns an ``nn.Module`` mapping (B, C, *spatial)
inputs to (B, K, *spatial) logits; inputs are HU scaled from ``hu_window`` to [-1, 1], and a
data config with ``hu_mean_std`` adds the input map to (HU - mean) / std (``HuStandardize``). A new network is one ``register`` call: its builder, a title for the
pages and the CLI, its number of spatial axes, and a check of the settings it cannot take.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..errors import ConfigError
from .nnunet import build_nnunet, check_nnunet
from .unet import UNet2D


@dataclass(frozen=True)
class ModelSpec:
    """A registered network.

    ``build(model_config) -> nn.Module``; ``check(run_config) -> list[str]`` returns the problems
    of settings the network cannot take (empty: fine); ``spatial_dims`` is 2 for a slice model
    (H, W) and 3 for a volumetric one (X, Y, Z, the canonical axes); ``inference`` names the
    strategy that cuts a CT into its inputs ("slices": batches of axial slices; "patches":
    a sliding window of ``data.patch_size`` patches at ``data.spacing_mm``).
    """

    name: str
    build: Callable[..., nn.Module]
    title: str
    spatial_dims: int = 2
    check: Callable[..., list[str]] = lambda run_config: []
    inference: str = "slices"


Builder = Callable[..., nn.Module]


#: the model registry: the CLI's --model choices, the config checks and the pages read it
MODELS: dict[str, ModelSpec] = {}


def register(
    name: str,
    title: str = "",
    spatial_dims: int = 2,
    check: Callable[..., list[str]] | None = None,
    inference: str = "slices",
) -> Callable[[Builder], Builder]:
    """Decorator: add ``builder(model_config) -> nn.Module`` as model ``name`` (a later one of
    the same name replaces it). ``check(run_config) -> list[str]``: settings it cannot take."""

    def wrap(builder: Builder) -> Builder:
        MODELS[name] = ModelSpec(
            name, builder, title or name, spatial_dims, check or (lambda run_config: []), inference
        )
        return builder

    return wrap


def model_spec(name: str) -> ModelSpec:
    """The registered model ``name``; ConfigError naming the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None


def _unet(cfg, attention: bool) -> nn.Module:
    if cfg.in_channels is None or cfg.out_channels is None:
        raise ConfigError(
            "model in_channels/out_channels are unset; build the model from a RunConfig "
            "(it derives them from the data settings and the loss)"
        )
    return UNet2D(
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        features=cfg.features,
        bottleneck=cfg.bottleneck,
        attention=attention,
        norm=cfg.norm,
        dropout=cfg.dropout,
        deep_supervision=cfg.deep_supervision,
    )


def _check_unet(run_config) -> list[str]:
    """The slice size must survive the U-Net's halvings."""
    size, levels = tuple(run_config.data.target_size), len(run_config.model.features)
    depth = 2**levels
    if len(size) != 2 or any(s < depth or s % depth for s in size):
        return [
            f"target size {size} must be two multiples of {depth} "
            f"(the U-Net halves it {levels} times), e.g. (128, 128)"
        ]
    return []


@register("unet", "2D U-Net (the seed notebooks')", check=_check_unet)
def build_unet(cfg) -> nn.Module:
    return _unet(cfg, attention=bool(cfg.attention))


@register("attention_unet", "2D attention U-Net", check=_check_unet)
def build_attention_unet(cfg) -> nn.Module:
    return _unet(cfg, attention=True)


@register(
    "plain_unet3d",
    "3D U-Net (nnU-Net's PlainConvUNet)",
    spatial_dims=3,
    check=check_nnunet,
    inference="patches",
)
def build_plain_unet3d(cfg) -> nn.Module:
    return build_nnunet(cfg, residual=False)


@register(
    "resenc_unet3d",
    "3D residual-encoder U-Net (nnU-Net's ResidualEncoderUNet)",
    spatial_dims=3,
    check=lambda run_config: check_nnunet(run_config, residual=True),
    inference="patches",
)
def build_resenc_unet3d(cfg) -> nn.Module:
    return build_nnunet(cfg, residual=True)


class HuStandardize:
    """Forward pre-hook: input scaled from ``hu_window`` to [-1, 1] -> (HU - mean) / std.

    nnU-Net's CTNormalization of the clipped HU, as an affine map of ctseg's [-1, 1] input, so
    the data, augmentation and inference code keep working on [-1, 1] and every caller that
    runs the model (training, validation, inference) gives it the normalisation its weights
    were trained with. A hook adds nothing to the state dict.
    """

    def __init__(self, hu_window, hu_mean_std) -> None:
        low, high = (float(v) for v in hu_window)
        mean, std = (float(v) for v in hu_mean_std)
        self.scale = (high - low) / 2.0 / std
        self.shift = ((low + high) / 2.0 - mean) / std

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0] * self.scale + self.shift, *args[1:])


def build_model(model_config, data_config=None) -> nn.Module:
    """The network named by ``model_config.name`` (a ctseg_core.config.ModelConfig); with a
    ``data_config`` whose ``hu_mean_std`` is set, its input map (``HuStandardize``)."""
    model = model_spec(model_config.name).build(model_config)
    if data_config is not None and data_config.hu_mean_std is not None:
        model.register_forward_pre_hook(HuStandardize(data_config.hu_window,
                                                      data_config.hu_mean_std))  # fmt: skip
    return model
