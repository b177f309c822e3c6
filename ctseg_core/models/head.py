"""The model's head: output channels <-> label values, label scores, and the output-bias prior.

A model maps (B, C, *spatial) inputs to (B, K, *spatial) logits: (H, W) for a slice model,
(D, H, W) for a volumetric one; nothing here assumes two spatial axes. Channel meaning follows
``RunConfig.output_mode``: "softmax" (channel 0 background, channel i = ``structures[i-1]``) or
"sigmoid" (channel i = ``structures[i]``).
"""

from __future__ import annotations

import torch

from .. import labels
from ..config import RunConfig
from ..errors import DataError
from ..labels import NUM_LABELS
from ..nosync import to_device


def class_lut(config: RunConfig) -> torch.Tensor:
    """(118,) int64: label value -> class index (0 background, i for ``structures[i-1]``).

    Label values of structures not in the config map to 0 (background).
    """
    return torch.from_numpy(labels.class_lut(config.data.structures))


def channel_label_values(config: RunConfig) -> torch.Tensor:
    """(K,) int64: the label value each output channel stands for (0 = background channel; a
    merge: its first member's, ``labels.value_of``)."""
    values = [labels.value_of(name) for name in config.data.structures]
    if config.output_mode == "softmax":
        values = [0, *values]
    return torch.tensor(values, dtype=torch.int64)


def _output_label_values(logits: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """``channel_label_values`` on the logits' device, checked against their channel count."""
    values = to_device(channel_label_values(config), logits.device)
    if logits.shape[1] != len(values):
        raise DataError(
            f"model output has {logits.shape[1]} channels but the config expects {len(values)}; "
            "use the config stored with the checkpoint"
        )
    return values


def label_scores(logits: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """(B, K, *spatial) logits -> (B, 118, *spatial) float32 scores indexed by label value.

    softmax: the class probabilities placed at their label values (channel 0 background);
    sigmoid: each structure's sigmoid at its label value and a constant 0.5 in channel 0, so
    argmax gives background where no structure passes 0.5. Label values not in the config
    score 0. Average these over TTA or an ensemble, then argmax -> label values 0..117.
    """
    logits = logits.float()
    values = _output_label_values(logits, config)
    scores = logits.new_zeros((logits.shape[0], NUM_LABELS, *logits.shape[2:]))
    if config.output_mode == "softmax":
        scores[:, values] = torch.softmax(logits, dim=1)
    else:
        scores[:, values] = torch.sigmoid(logits)
        scores[:, 0] = 0.5
    return scores


def predicted_labels(logits: torch.Tensor, config: RunConfig) -> torch.Tensor:
    """(B, K, *spatial) logits of one model -> (B, *spatial) int64 label values, no scores.

    The same labels as ``label_scores(logits, config).argmax(dim=1)`` (softmax: the channel with
    the largest logit; sigmoid: the structure with the largest logit where it is above 0, else
    background), but without the (B, 118, *spatial) float32 scores and the softmax: validation had
    spent more time on those than on the network's forward pass.
    """
    values = _output_label_values(logits, config)
    best, channel = logits.max(dim=1)
    labels = values[channel]
    if config.output_mode == "softmax":
        return labels
    return torch.where(best > 0, labels, torch.zeros_like(labels))


def init_output_bias(model: torch.nn.Module, voxel_counts, class_lut, output_mode: str) -> None:
    """Start the output layer at the training set's class frequencies (a prior).

    voxel_counts: (118,) voxels per label value over the training subjects; class_lut: (118,)
    label value -> class index. With zero biases every class starts at 1/K, and Adam needs
    hundreds of steps just to learn that most voxels are background; with the prior the first
    steps already learn shapes. Absent classes get a frequency of 1e-6.
    """
    heads = [getattr(model, "head", None), *getattr(model, "aux_heads", [])]
    # any 1x1 output convolution, 2D or 3D: a module with a (K,) bias
    heads = [h for h in heads if isinstance(getattr(h, "bias", None), torch.Tensor)]
    if not heads:
        return
    lut = torch.as_tensor(class_lut, dtype=torch.int64)
    counts = torch.zeros(int(lut.max()) + 1, dtype=torch.float64)
    counts.index_add_(0, lut, torch.as_tensor(voxel_counts, dtype=torch.float64))
    freq = (counts / counts.sum().clamp(min=1)).clamp(min=1e-6, max=1 - 1e-6)
    if output_mode == "softmax":
        bias = freq.log()
    else:
        freq = freq[1:]
        bias = (freq / (1 - freq)).log()
    with torch.no_grad():
        for head in heads:  # the deep-supervision heads predict the same classes
            if bias.numel() == head.bias.numel():
                head.bias.copy_(bias.to(head.bias.dtype))
