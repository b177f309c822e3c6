"""Model registry: a model is named in the config and rebuilt from it (and so from a checkpoint).

``build_model(model_config)`` returns an ``nn.Module`` mapping (B, C, H, W) -> (B, K, H, W)
logits. Add a variant with ``@register("name")`` on a ``builder(model_config) -> nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ..errors import ConfigError
from .unet import AttentionGate, DoubleConv, UNet2D

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = builder
        return builder

    return wrap


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


@register("unet")
def build_unet(cfg) -> nn.Module:
    return _unet(cfg, attention=bool(cfg.attention))


@register("attention_unet")
def build_attention_unet(cfg) -> nn.Module:
    return _unet(cfg, attention=True)


def build_model(model_config) -> nn.Module:
    """The network named by ``model_config.name`` (a ctseg_core.config.ModelConfig)."""
    try:
        builder = MODELS[model_config.name]
    except KeyError:
        raise ConfigError(
            f"unknown model {model_config.name!r}; known: {', '.join(sorted(MODELS))}"
        ) from None
    return builder(model_config)


__all__ = ["MODELS", "AttentionGate", "DoubleConv", "UNet2D", "build_model", "register"]
