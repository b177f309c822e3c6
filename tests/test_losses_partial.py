"""Losses on partially annotated subjects: a missing mask file is never read as background."""

from __future__ import annotations

import math

import pytest
import torch

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.data.slices import SliceDataset
from ctseg_core.labels import STRUCTURES
from ctseg_core.runs.run_folder import read_history
from ctseg_core.training.losses import (
    LOSSES,
    dice_ce_loss,
    dice_ce_partial,
    dice_ce_reference,
)
from ctseg_core.training.trainer import Trainer


def _batch(seed: int = 0, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    logits = torch.randn(2, k, 6, 7) * 2
    classes = torch.randint(0, k, (2, 6, 7))
    return logits, classes


def test_partial_dice_ce_with_every_class_annotated_is_the_plain_loss():
    logits, classes = _batch()
    everything = torch.ones(2, 5, dtype=torch.bool)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    partial, plain = dice_ce_partial(a, classes, everything), dice_ce_reference(b, classes)
    partial.backward()
    plain.backward()
    assert partial.item() == pytest.approx(plain.item(), rel=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-7)


def test_moving_background_probability_to_an_unannotated_class_costs_nothing():
    logits, classes = _batch(1)
    classes[0][classes[0] == 2] = 0  # sample 0 has no mask file for class 2: no voxel says 2
    annotated = torch.ones(2, 5, dtype=torch.bool)
    annotated[0, 2] = False
    # same p0 + p2 on every pixel of sample 0, split differently: all other classes unchanged
    both = torch.logaddexp(logits[0, 0], logits[0, 2])
    split_a, split_b = logits.clone(), logits.clone()
    split_a[0, 0], split_a[0, 2] = both + math.log(0.9), both + math.log(0.1)
    split_b[0, 0], split_b[0, 2] = both + math.log(0.1), both + math.log(0.9)
    loss_a = dice_ce_loss(split_a, classes, annotated)
    loss_b = dice_ce_loss(split_b, classes, annotated)
    assert loss_a.item() == pytest.approx(loss_b.item(), rel=1e-6)
    # read as background (the old behaviour), predicting class 2 there is a large error
    assert dice_ce_loss(split_b, classes).item() > dice_ce_loss(split_a, classes).item() + 0.3
    # and class 2 is still learned where it is annotated (sample 1)
    grad = split_b.clone().requires_grad_()
    dice_ce_loss(grad, classes, annotated).backward()
    assert float(grad.grad[1, 2].abs().sum()) > 0


@pytest.mark.parametrize("name", ["bce", "dice", "focal"])
def test_sigmoid_losses_give_unannotated_channels_no_gradient(name):
    logits, classes = _batch(2, k=4)  # 4 structure channels, classes 0..4
    classes = torch.randint(0, 5, (2, 6, 7))
    classes[0][classes[0] == 3] = 0
    annotated = torch.ones(2, 5, dtype=torch.bool)
    annotated[0, 3] = False  # channel 2 (class 3) of sample 0
    x = logits.clone().requires_grad_()
    loss = LOSSES[name].fn(x, classes, annotated)
    loss.backward()
    assert math.isfinite(loss.item())
    assert float(x.grad[0, 2].abs().max()) == 0.0
    assert float(x.grad[1, 2].abs().max()) > 0.0 and float(x.grad[0, 1].abs().max()) > 0.0
    assert LOSSES[name].fn(logits, classes, torch.ones_like(annotated)).item() == (
        pytest.approx(LOSSES[name].fn(logits, classes).item(), rel=1e-6)
    )


def test_training_on_a_partially_annotated_real_subject(derived_sample, tmp_path):
    # s0003 (split "test", a crop of s0000) has 7 of the 117 mask files; s0002 (val) has 2
    config = RunConfig(
        DataConfig(data_root=str(derived_sample), target_size=(64, 64), batch_size=4,
                   train_split="test", val_slices_per_subject=6),
        ModelConfig(features=[8, 16, 32, 64], bottleneck=64),
        TrainConfig(epochs=1, steps_per_epoch=2, amp="off", sample_figure=False),
        run_name="partial",
    )  # fmt: skip
    table = SliceDataset(config, "test").annotated_classes()
    annotated = {STRUCTURES[c - 1] for c in range(1, 118) if table[0, c]}
    assert annotated == {
        "aorta", "iliac_artery_left", "iliac_artery_right", "kidney_left", "liver", "spleen",
        "vertebrae_T12",
    }  # fmt: skip
    assert bool(table[:, 0].all())
    assert Trainer(config, checkpoints_root=tmp_path).run() == "finished"
    (record,) = read_history(tmp_path / "partial")
    assert math.isfinite(record["train_loss"]) and math.isfinite(record["val_loss"])


@pytest.mark.parametrize("loss", ["dice_ce", "dice"])
def test_a_partly_annotated_merge_is_left_out_of_its_samples_dice(loss):
    """One lobe's mask missing: "lungs" is not annotated in that subject, yet its other lobes'
    voxels are labelled lungs. They counted in the Dice's reference and intersection but not
    its predicted sum: Dice 2, a perfect prediction's loss -0.5 (reviewer). The class is left
    out of that sample's Dice now: a perfect prediction scores 0, and the sample adds nothing
    to the lungs Dice of a batch."""
    import numpy as np

    from ctseg_core.data.slices import annotated_classes
    from ctseg_core.labels import LABEL_OF, NUM_LABELS
    from ctseg_core.training.losses import LOSSES

    fn = LOSSES[loss].fn
    sigmoid = LOSSES[loss].output_mode == "sigmoid"
    annotated = np.ones((2, NUM_LABELS), bool)
    annotated[0, LABEL_OF["lung_upper_lobe_left"]] = False
    table = annotated_classes(annotated, ["liver", "lungs"])
    assert table.tolist() == [[True, True, False], [True, True, True]]
    classes = torch.zeros(2, 16, 16, 8, dtype=torch.long)
    classes[:, 2:8, 2:8, 2:6] = 2  # lungs (sample 0: the lobes it has)
    classes[:, 10:14, 10:14, 2:6] = 1  # liver
    one_hot = torch.nn.functional.one_hot(classes, 3).permute(0, 4, 1, 2, 3).float()
    perfect = (one_hot[:, 1:] if sigmoid else one_hot) * 40 - 20
    assert float(fn(perfect, classes, table)) == pytest.approx(0.0, abs=1e-6)
    # sample 0 predicts no lungs at all: its lungs Dice does not count (sample 1's is 1); the
    # cross-entropy still counts its lobes' voxels, which are lungs whatever else is missing
    wrong = perfect.clone()
    wrong[0, (1 if sigmoid else 2)] = -20.0
    if not sigmoid:
        wrong[0, 0][classes[0] == 2] = 20.0
    ce = 0.0 if sigmoid else float(torch.nn.functional.cross_entropy(wrong, classes))
    assert ce == 0.0 or ce > 1.0
    assert float(fn(wrong, classes, table)) == pytest.approx(ce, abs=1e-5)
