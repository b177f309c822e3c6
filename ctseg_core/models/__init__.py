"""Networks: the registry, the seed 2D U-Net, the head and checkpoints.

``registry`` names every network (``build_model``); ``unet`` is the seed 2D U-Net; ``head`` maps
output channels to label values; ``checkpoint`` saves and loads a model with its config.
"""

from .registry import MODELS, ModelSpec, build_model, model_spec, register
from .unet import AttentionGate, DoubleConv, UNet2D

__all__ = [
    "MODELS",
    "AttentionGate",
    "DoubleConv",
    "ModelSpec",
    "UNet2D",
    "build_model",
    "model_spec",
    "register",
]
