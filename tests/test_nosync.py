"""The training step never makes the host wait for an accelerator (see ctseg_core.nosync).

On the meta device tensors have shapes but no data: an op that reads a value back to the host
(``.item()``, ``torch.bincount``, boolean-mask indexing) fails there, as it would stall a GPU.
Copies from the host are recorded and must be non-blocking.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ctseg_core import nosync
from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.models import build_model
from ctseg_core.models.head import class_lut
from ctseg_core.training.losses import LOSSES, build_loss
from ctseg_core.training.optim import build_optimizer
from ctseg_core.training.step import StepRunner

META = torch.device("meta")


class BlockingCopies(TorchDispatchMode):
    """Records host -> device copies that are not non-blocking."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default and not kwargs.get("non_blocking"):
            source, target = args[0].device, kwargs.get("device")
            if source.type == "cpu" and target is not None and target.type != "cpu":
                self.seen.append(f"{func} {tuple(args[0].shape)} -> {target}")
        return func(*args, **kwargs)


def test_count_values_matches_bincount_on_both_paths():
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.integers(0, 7, size=(3, 50, 40)))
    expected = np.bincount(values.numpy().ravel(), minlength=9)
    assert nosync.count_values(values, 9).tolist() == expected.tolist()
    assert nosync._count_by_index_add(values.reshape(-1), 9).tolist() == expected.tolist()
    assert expected[7:].tolist() == [0, 0]  # the length is kept past the largest value
    on_meta = nosync.count_values(values.to(META), 9)
    assert on_meta.shape == (9,) and on_meta.dtype == torch.int64


def test_to_device_keeps_cpu_tensors_and_copies_without_blocking():
    t = torch.arange(5)
    assert nosync.to_device(t, torch.device("cpu")) is t
    with BlockingCopies() as copies:
        moved = nosync.to_device(t, META)
    assert moved.device == META and moved.shape == (5,)
    assert copies.seen == []


@pytest.mark.parametrize(
    ("loss", "partial"),
    [("dice_ce", False), ("dice_ce", True), ("bce", True), ("dice", False), ("focal", False)],
)
def test_training_step_reads_nothing_back_from_the_device(loss, partial, monkeypatch):
    """Augmentation (every kind but the noise, whose generator lives on the device), targets,
    deep supervision, loss, backward, clipping and the optimizer, all on the meta device."""
    made_on_device: list[str] = []
    real_tensor = torch.tensor

    def tensor(*args, **kwargs):  # torch.tensor(data, device=gpu) is a blocking copy
        if kwargs.get("device") is not None and torch.device(kwargs["device"]).type != "cpu":
            made_on_device.append(repr(args)[:80])
        return real_tensor(*args, **kwargs)

    monkeypatch.setattr(torch, "tensor", tensor)
    config = RunConfig(
        DataConfig(target_size=(32, 32), batch_size=2, mirror=True, spatial_prob=1.0,
                   elastic_prob=1.0, curve_prob=1.0, vessel_contrast_prob=1.0,
                   intensity_prob=1.0, noise_std=0.0),
        ModelConfig(features=[4, 8, 16, 32], bottleneck=32, deep_supervision=2,
                    output=LOSSES[loss].output_mode),
        TrainConfig(loss=loss, grad_clip=1.0),
    )  # fmt: skip
    model = build_model(config.model).to(META)
    optimizer = build_optimizer(model, config.train)
    annotated = torch.ones(3, 1 + len(config.data.structures), dtype=torch.bool)
    annotated[1, 5] = not partial  # subject 1 lacks one mask: the partial-annotation losses
    run_step = StepRunner(
        model, optimizer, torch.amp.GradScaler("cpu", enabled=False), build_loss(loss),
        class_lut(config).to(META), config.data, META, None, True, 1.0, annotated,
    )  # fmt: skip
    image = torch.zeros(2, 1, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.uint8)
    with BlockingCopies() as copies:
        value = run_step(image, labels, torch.Generator().manual_seed(0), torch.tensor([0, 1]))
    assert value.device == META and value.shape == ()
    assert copies.seen == [] and made_on_device == []
