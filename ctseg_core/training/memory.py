"""Memory of one training step: a run's kind, an estimate of its peak, and the check before a start.

``estimate_training_bytes(config)`` = weights + gradients + optimizer state (all float32) + the
batch + activations. The activations are measured, not guessed: one forward, loss and backward
of the real network on the smallest input it takes (one sample; 2x the network's total stride
on the first axis, 1x on the others), on the CPU under the autocast dtype the device would use,
counting every tensor autograd saves for backward (``saved_tensors_hooks``, each storage once,
parameters left out) plus the outputs held during backward. The network is fully
convolutional, so every layer's output, and so this sum, is linear in the input's voxels: the
per-voxel bytes scale to ``batch x patch``. ``BACKWARD_FACTOR`` then covers what backward holds
on top (gradient buffers of the layer in flight, the loss's float32 gradient of the logits,
oneDNN scratch), calibrated against real peaks, one for bf16 and one for float32.

Accuracy, against the real peak of two training steps on 2 CPU cores (the peak resident memory,
VmHWM, of a fresh process minus its resident memory before the model was built; bf16 autocast on
a CPU with avx512_bf16; 118 output channels; ``benchmarks/step_memory.py``, whose first case
``tests/test_training_memory.py`` repeats; "phantom_3d" there is the preset as it was then,
with nnU-Net's two convolutions per stage):

==========================================  ===========  ===========  =====
configuration                               estimate MB  measured MB  ratio
==========================================  ===========  ===========  =====
phantom_3d widths, 32 x 32 x 32, batch 1            300          298   1.01
phantom_3d widths, 64 x 64 x 32, batch 2            874          895   0.98
phantom_demo (2D), 128 x 128, batch 4               405          421   0.96
phantom_3d, 96 x 96 x 64, batch 2                  3185         2672   1.19
==========================================  ===========  ===========  =====

In float32 (an AVX2-only EPYC without native bf16, where "auto" trains in float32, 2026-12-06)
the bf16 factors gave 0.81, 1.27, 1.11, 1.42 and, for phantom_3d itself (64 x 64 x 48, batch
1), 1.22 (estimates 324 / 1218 / 512 / 4797 / 963 MB against 397 / 959 / 461 / 3373 / 788 MB
measured): the float32 factors, fitted on those five, give 0.92 to 1.05.

Not counted: the process itself (torch and the data, ~0.5 GB on a CPU), the loader's workers,
validation (no gradients: less than a training step), and on a GPU the CUDA context and
cuDNN's workspaces (``check_fits`` compares with the memory still free after the context).
"""

from __future__ import annotations

import functools
import json
import math

import torch

from ..config import RunConfig
from ..device import autocast_context, free_bytes, resolve_amp, resolve_device
from ..errors import ConfigError
from ..models.registry import build_model, model_spec
from ..runs.listing import config_kind

#: the step's peak holds this many times the saved activations: backward keeps the gradients of
#: the layers in flight beside them (fitted on the CPU over the module doc's configurations:
#: under bf16 autocast, and in float32, where the loss's float32 gradient weighs less beside
#: float32 activations)
BACKWARD_FACTOR = {"bf16": 2.0, "fp32": 1.35}

#: what the first step allocates besides tensors (oneDNN's primitives and scratch, the thread
#: pools' buffers): the measured peaks' intercept on the CPU, bf16 and float32
WORKSPACE_BYTES = {"bf16": 100 * 2**20, "fp32": 190 * 2**20}

#: optimizer state per parameter, in parameter copies (Adam: two moments; SGD: the momentum)
OPTIMIZER_STATE = {"adam": 2, "adamw": 2, "sgd": 1}


def run_kind(config: RunConfig) -> str:
    """ "3D" for a volumetric model (``ModelSpec.spatial_dims`` 3), "2.5D" for a slice model fed
    neighbouring slices (``data.context_slices`` > 1), else "2D" (``runs.listing.config_kind``,
    the rule the run lists use)."""
    return config_kind(config.to_dict())


def sample_shape(config: RunConfig) -> tuple[int, ...]:
    """The spatial shape of one training sample: ``data.patch_size`` (x, y, z voxels) for a 3D
    model, ``data.target_size`` (H, W pixels) for a slice model. ConfigError when a 3D model
    has no patch size."""
    if model_spec(config.model.name).spatial_dims == 3:
        if config.data.patch_size is None:
            raise ConfigError(
                f"model {config.model.name} is volumetric but data.patch_size is unset; "
                "give three sizes (x, y, z), e.g. 96 96 64"
            )
        return tuple(int(s) for s in config.data.patch_size)
    return tuple(int(s) for s in config.data.target_size)


def describe_step(config: RunConfig) -> str:
    """ "batch 2 of 96 x 96 x 64 patches, stage widths 32/64/128/256/320" / "batch 4 of 128 x
    128 slices (5 context slices)"."""
    shape = " x ".join(str(s) for s in sample_shape(config))
    if run_kind(config) == "3D":
        widths = "/".join(str(w) for w in config.model.features)
        return f"batch {config.data.batch_size} of {shape} patches, stage widths {widths}"
    context = config.data.context_slices
    extra = f" ({context} context slices)" if context > 1 else ""
    return f"batch {config.data.batch_size} of {shape} slices{extra}"


def _tiny_shape(config: RunConfig) -> tuple[int, ...]:
    """The smallest input the network takes with more than one voxel at its bottleneck (instance
    and batch norm need two): its total stride on each axis, twice on the first."""
    if model_spec(config.model.name).spatial_dims == 3:
        from ..models.nnunet import architecture

        stride = architecture(config.model).total_stride  # the same for the residual encoder
    else:
        stride = (2 ** len(config.model.features),) * 2
    return (2 * stride[0], *stride[1:])


def _measure_key(config: RunConfig, amp: torch.dtype | None) -> str:
    """What the per-voxel measurement depends on: the network, the loss, the dtype's width."""
    width = 4 if amp is None else 2  # fp16 is measured as bf16 on the CPU: the same bytes
    return json.dumps(
        {"model": config.to_dict()["model"], "loss": config.train.loss, "width": width},
        sort_keys=True,
    )


@functools.lru_cache(maxsize=32)
def _activation_line(key: str) -> tuple[float, float]:
    """(bytes per input voxel, constant bytes) of what one training step holds for backward.

    Measured at the tiny input and at twice its first axis: the constant is what does not grow
    with the input (under autocast, the low-precision copies of the weights).
    """
    spec = json.loads(key)
    config = RunConfig.from_dict({"model": spec["model"], "train": {"loss": spec["loss"]}})
    amp = None if spec["width"] == 4 else torch.bfloat16
    small = _tiny_shape(config)
    large = (2 * small[0], *small[1:])
    # the random draws of a measurement must not move the run's: it is made once per process
    # (cached), so a run that measured and one that did not would otherwise train differently
    with torch.random.fork_rng(devices=[]):
        net = build_model(config.model).train()
        held_small, held_large = (_held_bytes(net, config, s, amp) for s in (small, large))
    per_voxel = (held_large - held_small) / (math.prod(large) - math.prod(small))
    return per_voxel, max(0.0, held_small - per_voxel * math.prod(small))


def _held_bytes(net, config: RunConfig, shape: tuple[int, ...], amp) -> int:
    """Bytes autograd saves for backward (each storage once, parameters left out) plus the
    network's outputs, for one sample of ``shape`` under ``amp`` on the CPU."""
    from .losses import build_loss, deep_supervision_loss

    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    image = torch.randn(1, int(config.model.in_channels), *shape)
    classes = torch.randint(0, int(config.model.out_channels), (1, *shape))
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast_context(torch.device("cpu"), amp):
            logits = net(image)
        loss = deep_supervision_loss(build_loss(config.train.loss), logits, classes)
    for out in logits if isinstance(logits, tuple) else (logits,):
        saved.setdefault(out.untyped_storage().data_ptr(), out.untyped_storage().nbytes())
    loss.backward()  # frees the graph
    net.zero_grad(set_to_none=True)
    return sum(saved.values())


def estimate_training_bytes(config: RunConfig, device: torch.device | str | None = None) -> int:
    """Peak memory (bytes) of one training step of ``config`` on ``device`` (None:
    ``train.device``, "auto" picking as training does) at ``data.batch_size`` samples of
    ``sample_shape``; see the module doc for the model and its measured accuracy."""
    config.sync_channels()
    device = resolve_device(device if device is not None else config.train.device)
    amp = resolve_amp(config.train.amp, device)
    shape = sample_shape(config)
    voxels = config.data.batch_size * math.prod(shape)
    params = sum(p.numel() for p in _parameter_counts(json.dumps(config.to_dict()["model"])))
    states = 2 + OPTIMIZER_STATE.get(config.train.optimizer, 2)  # weights, gradients, state
    if config.train.optimizer == "sgd" and config.train.momentum == 0:
        states = 2
    batch = voxels * (4 * int(config.model.in_channels) + 8)  # float32 image, int64 classes
    per_voxel, constant = _activation_line(_measure_key(config, amp))
    activations = per_voxel * voxels + constant
    precision = "fp32" if amp is None else "bf16"
    backward = BACKWARD_FACTOR[precision] * activations
    return int(4 * states * params + batch + backward + WORKSPACE_BYTES[precision])


@functools.lru_cache(maxsize=32)
def _parameter_counts(model_json: str) -> tuple[torch.Tensor, ...]:
    """The parameters of the network (on the meta device: shapes only, no memory)."""
    config = RunConfig.from_dict({"model": json.loads(model_json)})
    with torch.device("meta"):
        return tuple(build_model(config.model).parameters())


def available_bytes(device: torch.device) -> int:
    """Memory free for a new run on ``device``: on a GPU CUDA's free memory and PyTorch's unused
    cache, on a CPU what the host and its container leave (``device.free_bytes``)."""
    return free_bytes(device)


def format_gb(n_bytes: float) -> str:
    """Bytes as "1.23 GB" (10^9 bytes), or "0.05 GB" for small numbers."""
    return f"{n_bytes / 1e9:.2f} GB"


def check_fits(
    config: RunConfig, device: torch.device | str, available_bytes: int | None = None
) -> int:
    """Refuse a run whose training step would not fit: ConfigError with both numbers and the fix.

    available_bytes: None measures what ``device`` has free now (``available_bytes``).
    Returns the estimate (bytes) when it fits.
    """
    device = resolve_device(device)
    needed = estimate_training_bytes(config, device)
    free = _free(device) if available_bytes is None else int(available_bytes)
    if needed > free:
        where = "CPU memory" if device.type == "cpu" else str(device)
        fix = "data.batch_size or data.patch_size" if run_kind(config) == "3D" else (
            "data.batch_size or data.target_size")  # fmt: skip
        raise ConfigError(
            f"this run needs about {format_gb(needed)} for one training step "
            f"({describe_step(config)}) but the {where} has {format_gb(free)} free; "
            f"lower {fix}"
        )
    return needed


_free = available_bytes  # check_fits' parameter shadows the function's name
