"""The trainer end to end on tiny models: the run folder, resume, NaN losses, bad folders."""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.data.dataset_root import open_dataset
from ctseg_core.errors import CtsegError
from ctseg_core.models.checkpoint import load_checkpoint, load_model
from ctseg_core.runs.listing import list_runs
from ctseg_core.runs.run_folder import (
    new_run_dir,
    read_history,
    read_status,
    write_status,
)
from ctseg_core.training.losses import LOSSES
from ctseg_core.training.trainer import Trainer, TrainingError

TINY = {"features": [8, 16, 32, 64], "bottleneck": 64}
FEW = ["liver", "spleen", "kidney_left", "kidney_right", "aorta", "heart", "urinary_bladder"]


def tiny_config(root, run_name="", **train) -> RunConfig:
    settings = {"epochs": 2, "steps_per_epoch": 3, "amp": "off", "sample_figure": False} | train
    return RunConfig(
        DataConfig(
            data_root=str(root), target_size=(64, 64), batch_size=4, val_slices_per_subject=6
        ),
        ModelConfig(**TINY, output=LOSSES[settings.get("loss", "dice_ce")].output_mode),
        TrainConfig(**settings),
        run_name=run_name,
    )


def test_training_on_the_phantom_writes_the_whole_run_folder(phantom_root, tmp_path):
    config = tiny_config(
        phantom_root, "ph", epochs=3, steps_per_epoch=6, sample_figure=True, checkpoint_every=3
    )
    config.data.structures = FEW
    config.model.deep_supervision = 2  # as the phantom demo trains; eval and checkpoints: one head
    events = []
    trainer = Trainer(config, checkpoints_root=tmp_path, callbacks=[events.append])
    run_dir = trainer.open_run()
    assert run_dir == tmp_path / "ph" and read_status(run_dir)["state"] == "queued"
    assert trainer.run() == "finished"
    for name in ("config.json", "label_map.json", "status.json", "history.jsonl", "best.pth",
                 "last.pth", "checkpoint_epoch3.pth", "training_history.json",
                 "training_history.png", "samples/epoch_3.png"):  # fmt: skip
        assert (run_dir / name).is_file(), name
    assert json.loads((run_dir / "label_map.json").read_text())["1"] == "liver"
    status = read_status(run_dir)
    assert status["state"] == "finished" and status["epoch"] == 3 and status["error"] is None
    assert status["warning"] is None  # every structure annotated in both splits
    record = json.loads((run_dir / "training_data.json").read_text())
    assert record["slice_field_of_view_mm"]["min"][0] > 0  # what a 2D model's pixel depends on
    history = read_history(run_dir)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert set(history[0]["val_dice"]) == set(FEW)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it learns
    steps = [e for e in events if e.kind == "step" and not e.message]
    assert len(steps) == 18
    # the validation pass reports itself (batches of this rank) at the epoch's last step, and
    # the ETA counts it: the last epoch's validation still has time left when it starts
    validating = [e for e in events if e.message.startswith("validating")]
    total = int(validating[-1].message.split("/")[1].split()[0])
    expected = [f"validating: {k}/{total} batches" for k in range(total + 1)] * 3
    assert [e.message for e in validating] == expected
    assert all(e.step == 6 for e in validating)
    assert validating[-total - 1].eta_s > 0 and validating[-1].eta_s == pytest.approx(0, abs=5)
    assert events[0].kind == "start" and any("preparing the train" in e.message for e in events)
    assert [e.kind for e in events if e.kind not in ("start", "step")] == ["epoch"] * 3 + ["end"]
    best = max(range(3), key=lambda i: (history[i]["val_dice_mean"], -i))
    assert load_checkpoint(run_dir / "best.pth")["epoch"] == best + 1
    model, loaded = load_model(run_dir / "last.pth")
    assert loaded.data.structures == FEW and loaded.model.deep_supervision == 2
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 8, 64, 64)
    assert [r.name for r in list_runs(tmp_path)] == ["ph"]


def test_structures_annotated_in_no_subject_of_a_split_are_said_in_the_log_and_status(
    phantom_root, tmp_path, caplog
):
    """A misnamed mask file ("Liver.nii.gz") leaves its structure unannotated everywhere: its
    output would learn nothing, its validation Dice would be None and the mean without it."""
    root = tmp_path / "data"
    shutil.copytree(phantom_root, root)
    for seg in root.glob("*/segmentations"):
        (seg / "liver.nii.gz").rename(seg / "Liver.nii.gz")
    for sid in open_dataset(root).subjects_in("val"):
        (root / sid / "segmentations" / "spleen.nii.gz").unlink()
    config = tiny_config(root, "named", epochs=1, steps_per_epoch=1)
    config.data.structures = FEW
    trainer = Trainer(config, checkpoints_root=tmp_path / "runs")
    run_dir = trainer.open_run()
    with caplog.at_level(logging.WARNING):
        assert trainer.run() == "finished"
    warning = read_status(run_dir)["warning"]
    assert "1 of the 7 structures this run learns are annotated in no training subject " in warning
    assert "(liver): their outputs learn nothing" in warning
    assert "annotated in no validation subject (liver, spleen): the mean validation" in warning
    assert "check their mask file names and grids (`ctseg info` lists unknown names" in warning
    assert sum("annotated in no" in r.getMessage() for r in caplog.records) == 2
    assert read_history(run_dir)[0]["val_dice"]["spleen"] is None


@pytest.mark.parametrize("splits", [("all", "val"), ("train", "train")])
def test_validation_subjects_that_are_training_ones_are_said_not_refused(
    splits, phantom_root, tmp_path
):
    """A final model trained on every subject ("all") is a choice; its validation Dice is
    measured on training CTs, which the log and the Train page say (a resume of such a run
    had been refused, unfixable)."""
    config = tiny_config(phantom_root, "both", epochs=1, steps_per_epoch=1)
    config.data.structures = FEW
    config.data.train_split, config.data.val_split = splits
    trainer = Trainer(config, checkpoints_root=tmp_path)
    run_dir = trainer.open_run()
    assert trainer.run() == "finished"
    index = open_dataset(phantom_root)
    shared = sorted(set(index.subjects_in(splits[0])) & set(index.subjects_in(splits[1])))
    warning = read_status(run_dir)["warning"]
    assert (
        f"the training split {splits[0]!r} and the validation split {splits[1]!r} share "
        f"{len(shared)} of the {len(index.subjects_in(splits[1]))} validation subjects ("
    ) in warning
    assert "overstates the Dice" in warning
    assert Trainer.resume(run_dir, epochs=2).run() == "finished"  # and it goes on


def test_resume_gives_the_same_history_as_an_uninterrupted_run(phantom_root, tmp_path):
    whole = Trainer(tiny_config(phantom_root, "whole", epochs=3), checkpoints_root=tmp_path)
    whole.run()
    part = Trainer(tiny_config(phantom_root, "part", epochs=1), checkpoints_root=tmp_path)
    part.run()
    assert len(read_history(tmp_path / "part")) == 1
    resumed = Trainer.resume(tmp_path / "part", epochs=3)
    assert resumed.run() == "finished"
    a, b = read_history(tmp_path / "whole"), read_history(tmp_path / "part")
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b, strict=True):
        for key in ("train_loss", "val_loss", "val_dice_mean", "lr"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (ra["epoch"], key)
    wa = load_checkpoint(tmp_path / "whole" / "last.pth")["model"]
    wb = load_checkpoint(tmp_path / "part" / "last.pth")["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


def test_a_nan_loss_stops_with_a_message_and_keeps_the_good_checkpoint(phantom_root, tmp_path):
    # SGD at lr 1e30 without clipping: the weights overflow within a few steps
    config = tiny_config(
        phantom_root, "nan", epochs=6, steps_per_epoch=1, optimizer="sgd", momentum=0.0,
        lr=1e30, grad_clip=None, scheduler="none",
    )  # fmt: skip
    trainer = Trainer(config, checkpoints_root=tmp_path)
    with pytest.raises(TrainingError, match=r"loss became (nan|inf) at epoch (\d+)"):
        trainer.run()
    status = read_status(tmp_path / "nan")
    assert status["state"] == "failed" and "lower the learning rate" in status["error"]
    failed_epoch = int(status["error"].split("at epoch ")[1].split(",")[0])
    assert failed_epoch >= 2
    last = load_checkpoint(tmp_path / "nan" / "last.pth")
    assert last["epoch"] == failed_epoch - 1 == len(read_history(tmp_path / "nan"))
    assert all(math.isfinite(r["train_loss"]) for r in last["history"])


def test_ctrl_c_records_a_stop_not_a_failure_and_the_run_resumes(phantom_root, tmp_path):
    config = tiny_config(phantom_root, "int", epochs=3, steps_per_epoch=2)

    def interrupt(p) -> None:  # what SIGINT does: KeyboardInterrupt wherever the run is
        if p.kind == "step" and p.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(config, checkpoints_root=tmp_path, callbacks=[interrupt]).run()
    status = read_status(tmp_path / "int")
    assert status["state"] == "stopped" and status["error"] is None
    assert "interrupted during epoch 2" in status["message"]
    assert load_checkpoint(tmp_path / "int" / "last.pth")["epoch"] == 1
    assert Trainer.resume(tmp_path / "int").run() == "finished"
    assert [r["epoch"] for r in read_history(tmp_path / "int")] == [1, 2, 3]


def test_ctrl_c_while_the_sample_figure_is_drawn_names_the_epoch_last_pth_holds(
    phantom_root, tmp_path, monkeypatch
):
    """Epoch 2 is in last.pth when its sample figure is drawn: an interrupt there said
    "last.pth holds epoch 1" (reviewer)."""
    from ctseg_core.training import samples

    drawn = samples.SampleFigure.save

    def slow_figure(self, model, device, amp, channels_last, run_dir, epoch):
        if epoch == 2:  # SIGINT arriving while the figure is written
            raise KeyboardInterrupt
        return drawn(self, model, device, amp, channels_last, run_dir, epoch)

    monkeypatch.setattr(samples.SampleFigure, "save", slow_figure)
    config = tiny_config(phantom_root, "fig", epochs=3, steps_per_epoch=1, sample_figure=True)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, checkpoints_root=tmp_path).run()
    status = read_status(tmp_path / "fig")
    assert load_checkpoint(tmp_path / "fig" / "last.pth")["epoch"] == 2
    assert status["epoch"] == 2 and "last.pth holds epoch 2" in status["message"]


def test_a_run_stopped_in_its_first_epoch_says_it_kept_no_checkpoint(phantom_root, tmp_path):
    config = tiny_config(phantom_root, "first", epochs=3, steps_per_epoch=4)
    trainer = Trainer(config, checkpoints_root=tmp_path)

    def stop_at_step_2(p) -> None:
        if p.kind == "step" and p.step == 2:
            trainer.stopper.event.set()

    trainer.callbacks.append(stop_at_step_2)
    assert trainer.run() == "stopped"
    status = read_status(tmp_path / "first")
    assert status["state"] == "stopped" and status["epoch"] == 0
    assert "last.pth" not in status["message"] and not list((tmp_path / "first").glob("*.pth"))
    assert "no epoch was completed, so there is no checkpoint to resume" in status["message"]


def test_an_unwritable_checkpoints_folder_fails_the_start(phantom_root, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the checkpoints root should be")
    trainer = Trainer(tiny_config(phantom_root, "x"), checkpoints_root=blocker)
    with pytest.raises(CtsegError, match="cannot write the run folder"):
        trainer.open_run()


def test_an_existing_run_name_is_never_overwritten(phantom_root, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CtsegError, match="already exists"):
        Trainer(tiny_config(phantom_root, "mine"), checkpoints_root=tmp_path).open_run()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "name", [".hidden", "-rf", "a/b", "..", "x" * 101, "a\0b", " lead", "trail ", "tab\there"]
)
def test_run_names_that_are_not_plain_folder_names_are_refused(tmp_path, name):
    with pytest.raises(CtsegError, match="must be a plain folder name of 1 to 100") as exc:
        new_run_dir(tmp_path, name)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 300
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["evaluations", "comparisons", "Comparisons"])
def test_the_checkpoints_folders_own_folders_are_no_run_names(tmp_path, name):
    """A run named evaluations/ took in every later evaluation of a predictions folder, and
    its Delete removed them (reviewer): refused for a new run and for a rename."""
    from ctseg_core.runs.run_folder import rename_run

    with pytest.raises(CtsegError, match=f"run name '{name}' is the checkpoints folder's own"):
        new_run_dir(tmp_path, name)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    with pytest.raises(CtsegError, match="checkpoints folder's own"):
        rename_run(tmp_path / "mine", name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("name", ["a", "run 2", "unet_v1.2-lr1e-3", "x" * 100, "rénal"])
def test_plain_run_names_are_taken(tmp_path, name):
    assert new_run_dir(tmp_path, name) == tmp_path / name


def test_a_run_stopped_before_its_first_epoch_gives_its_name_back(tmp_path):
    stopped = tmp_path / "early"
    stopped.mkdir()
    write_status(stopped, {"state": "stopped", "message": "stopped by request during epoch 1"})
    assert new_run_dir(tmp_path, "early") == stopped
    (stopped / "last.pth").write_bytes(b"a checkpoint")  # one that trained is kept
    with pytest.raises(CtsegError, match="already exists; choose another run name, or continue"):
        new_run_dir(tmp_path, "early")


def test_training_on_the_real_sample_with_sigmoid_outputs(derived_sample, tmp_path):
    config = tiny_config(
        derived_sample, "real", epochs=1, steps_per_epoch=2, loss="bce", amp="auto"
    )
    config.data.context_slices = 3
    config.model.in_channels = 3
    config.model.out_channels = 117
    trainer = Trainer(config, checkpoints_root=tmp_path)
    assert trainer.run() == "finished"
    (record,) = read_history(tmp_path / "real")
    assert math.isfinite(record["train_loss"]) and record["train_slices"] == 8
    # the validation subject s0002 annotates only vertebrae_L1: every other structure is None
    scored = {k: v for k, v in record["val_dice"].items() if v is not None}
    assert set(scored) == {"vertebrae_L1"}
    assert record["val_dice_mean"] == pytest.approx(scored["vertebrae_L1"])


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_are_low_for_the_right_answer_and_high_for_a_wrong_one(name):
    classes = torch.zeros(2, 8, 8, dtype=torch.long)
    classes[:, 2:6, 2:6] = 1
    classes[1, 0, 0] = 2
    k = 3 if name == "dice_ce" else 2
    first = 0 if name == "dice_ce" else 1
    right = torch.full((2, k, 8, 8), -8.0)
    for c in range(first, 3):
        right[:, c - first][classes == c] = 8.0
    wrong = right.roll(1, dims=1)
    loss = LOSSES[name].fn
    assert float(loss(right, classes)) < 0.05
    assert float(loss(wrong, classes)) > 0.1
    logits = right.clone().requires_grad_()
    loss(logits * 0.1, classes).backward()
    assert torch.isfinite(logits.grad).all()


def test_fused_dice_ce_gradient_equals_autograd_of_its_definition():
    from ctseg_core.training.losses import dice_ce_loss, dice_ce_reference

    torch.manual_seed(0)
    logits = torch.randn(3, 6, 5, 7) * 3
    classes = torch.randint(0, 6, (3, 5, 7))
    classes[classes == 4] = 0  # one class absent from the batch
    fused, reference = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss_fused, loss_reference = dice_ce_loss(fused, classes), dice_ce_reference(reference, classes)
    loss_fused.backward()
    loss_reference.backward()
    assert loss_fused.item() == pytest.approx(loss_reference.item(), rel=1e-6)
    assert torch.allclose(fused.grad, reference.grad, atol=1e-7)
    half = logits.bfloat16().requires_grad_()  # autocast hands the loss bf16 logits
    dice_ce_loss(half, classes).backward()
    assert half.grad.dtype == torch.bfloat16
    assert torch.allclose(half.grad.float(), reference.grad, atol=2e-3)
    # a channels_last network hands over channels_last logits: same loss and gradient, and the
    # gradient keeps that layout (the convolution backward wants it)
    nhwc = logits.contiguous(memory_format=torch.channels_last).requires_grad_()
    loss_nhwc = dice_ce_loss(nhwc, classes)
    loss_nhwc.backward()
    assert loss_nhwc.item() == pytest.approx(loss_reference.item(), rel=1e-6)
    assert torch.allclose(nhwc.grad, reference.grad, atol=1e-7)
    assert nhwc.grad.is_contiguous(memory_format=torch.channels_last)
    # a weighted term (deep supervision) hands the backward an upstream gradient other than 1
    for layout in (torch.contiguous_format, torch.channels_last):
        weighted = logits.clone(memory_format=layout).requires_grad_()
        (0.3 * dice_ce_loss(weighted, classes)).backward()
        assert torch.allclose(weighted.grad, 0.3 * reference.grad, atol=1e-7)


def test_fused_dice_ce_on_3d_logits_channels_last_equals_its_definition():
    """A 3D network run channels_last_3d hands over (B, K, X, Y, Z) logits lying channels last:
    the same loss and gradient as the definition, the gradient in that layout (no copy)."""
    from ctseg_core.training.losses import dice_ce_loss, dice_ce_reference

    torch.manual_seed(1)
    logits = torch.randn(2, 5, 6, 4, 3) * 3
    classes = torch.randint(0, 5, (2, 6, 4, 3))
    classes[classes == 2] = 0
    reference = logits.clone().requires_grad_()
    loss_reference = dice_ce_reference(reference, classes)
    loss_reference.backward()
    for layout in (torch.contiguous_format, torch.channels_last_3d):
        x = logits.clone(memory_format=layout).requires_grad_()
        (0.5 * dice_ce_loss(x, classes)).backward()
        assert dice_ce_loss(x, classes).item() == pytest.approx(loss_reference.item(), rel=1e-6)
        assert torch.allclose(x.grad, 0.5 * reference.grad, atol=1e-7)
        assert x.grad.is_contiguous(memory_format=layout)


@pytest.mark.parametrize("keep_bytes", [0, 10**6], ids=["in blocks", "kept"])
def test_channels_last_dice_ce_in_blocks_of_rows_equals_its_definition(monkeypatch, keep_bytes):
    """The channels-last loss goes through the voxels a block of rows at a time (the last block
    shorter), its backward computing each block's probabilities again, or, up to KEEP_BYTES,
    in one block whose probabilities the forward kept: the same loss and gradient as the
    definition, in float32 and from bf16 logits, also for a second backward over the graph."""
    from ctseg_core.training import dice_ce_channels_last
    from ctseg_core.training.losses import dice_ce_loss, dice_ce_reference

    monkeypatch.setattr(dice_ce_channels_last, "CPU_BLOCK_VALUES", 63)  # 7 rows: 21 blocks
    monkeypatch.setattr(dice_ce_channels_last, "KEEP_BYTES", keep_bytes)
    torch.manual_seed(2)
    logits = torch.randn(2, 9, 6, 4, 3) * 4
    classes = torch.randint(0, 9, (2, 6, 4, 3))
    classes[classes == 5] = 0  # a class absent from the batch
    reference = logits.clone().requires_grad_()
    loss_reference = dice_ce_reference(reference, classes)
    loss_reference.backward()
    x = logits.contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    loss = dice_ce_loss(x, classes)
    (0.7 * loss).backward(retain_graph=True)
    assert loss.item() == pytest.approx(loss_reference.item(), rel=1e-6)
    assert torch.allclose(x.grad, 0.7 * reference.grad, atol=1e-7)
    assert x.grad.is_contiguous(memory_format=torch.channels_last_3d)
    loss.backward()
    assert torch.allclose(x.grad, 1.7 * reference.grad, atol=1e-7)
    half = logits.bfloat16().contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    dice_ce_loss(half, classes).backward()
    assert half.grad.dtype == torch.bfloat16
    assert torch.allclose(half.grad.float(), reference.grad, atol=2e-3)
    with pytest.raises(ValueError, match="do not match logits"):  # as the definition refuses
        dice_ce_loss(x, classes.transpose(1, 2))
    # on a GPU a block holds up to DEVICE_BLOCK_VALUES rows x classes
    monkeypatch.setattr(dice_ce_channels_last, "DEVICE_BLOCK_VALUES", 30)
    blocks = list(dice_ce_channels_last._blocks(10, 9, torch.device("cuda")))
    assert blocks == [(0, 3), (3, 6), (6, 9), (9, 10)]


def test_channels_last_auto_follows_the_device_the_precision_and_the_norm():
    from ctseg_core.device import resolve_channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_channels_last("auto", cpu, torch.bfloat16) is True
    assert resolve_channels_last("auto", cpu, None) is False  # fp32 CPU convolutions: no gain
    assert resolve_channels_last("auto", cpu, torch.bfloat16, "instance") is False
    # a 3D model's instance norms keep the layout (ChannelsLastInstanceNorm3d)
    assert resolve_channels_last("auto", cpu, torch.bfloat16, "instance", volumetric=True)
    # a 3D step in float32 (a CPU without native bf16) is faster channels last too
    assert resolve_channels_last("auto", cpu, None, "instance", volumetric=True) is True
    assert resolve_channels_last("auto", cuda, torch.bfloat16, "instance") is True
    assert resolve_channels_last(False, cuda, torch.bfloat16) is False
    with pytest.raises(CtsegError, match="channels_last must be"):
        resolve_channels_last("yes", cpu, None)


def test_loader_workers_auto_is_none_on_a_cpu_and_a_share_of_the_cores_on_a_gpu(monkeypatch):
    from ctseg_core import device as hardware

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert hardware.loader_workers(3, cpu) == 3 and hardware.loader_workers(0, cuda) == 0
    assert hardware.loader_workers(None, cpu) == 0  # the model step uses every core
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert hardware.loader_workers(None, cuda) == 8
    assert hardware.loader_workers(None, cuda, local_ranks=4) == 3  # 4 cores each, one kept
    assert hardware.loader_workers(None, cuda, local_ranks=16) == 1  # never in the GPU's process
    config = tiny_config("/data")
    assert config.data.num_workers is None
    assert RunConfig.from_dict(config.to_dict()).data.num_workers is None
    config.data.num_workers = -1
    with pytest.raises(CtsegError, match="loader workers must be >= 0"):
        config.validate()


def test_deep_supervision_loss_weighs_each_level_against_the_labels_sampled_there():
    from ctseg_core.training.losses import deep_supervision_loss, dice_ce_loss

    torch.manual_seed(0)
    classes = torch.randint(0, 4, (2, 8, 8))
    full, half, quarter = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 2, 2)
    assert deep_supervision_loss(dice_ce_loss, full, classes) == dice_ce_loss(full, classes)
    expected = (
        dice_ce_loss(full, classes)
        + 0.5 * dice_ce_loss(half, classes[:, ::2, ::2])
        + 0.25 * dice_ce_loss(quarter, classes[:, ::4, ::4])
    ) / 1.75
    combined = deep_supervision_loss(dice_ce_loss, (full, half, quarter), classes)
    assert combined.item() == pytest.approx(expected.item(), rel=1e-6)
    # the right answer at every level scores low; the same answer sampled wrongly would not
    right = [F.one_hot(classes[:, ::s, ::s], 4).permute(0, 3, 1, 2) * 16.0 - 8 for s in (1, 2, 4)]
    assert deep_supervision_loss(dice_ce_loss, tuple(right), classes).item() < 0.01
    shifted = (right[0], right[1].roll(1, dims=-1), right[2])
    assert deep_supervision_loss(dice_ce_loss, shifted, classes).item() > 0.1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_cpu_training_keeps_freed_memory_for_reuse():
    from ctseg_core.device import keep_freed_cpu_memory

    # glibc accepts both settings (an mmap threshold above its 32 MiB maximum would be refused);
    # what they are worth is measured by benchmarks/training_throughput.py
    assert keep_freed_cpu_memory() is True


def test_checkpoint_size_estimate_matches_a_written_checkpoint(tmp_path):
    from ctseg_core.models import build_model
    from ctseg_core.models.checkpoint import estimated_checkpoint_bytes, save_checkpoint
    from ctseg_core.training.optim import build_optimizer

    config = RunConfig(
        DataConfig(structures=FEW), ModelConfig(features=[16, 32, 64, 128], bottleneck=256)
    )
    for name in ("adam", "sgd"):
        config.train.optimizer = name
        model = build_model(config.model)
        optimizer = build_optimizer(model, config.train)
        model(torch.randn(2, 1, 32, 32)).square().mean().backward()
        optimizer.step()  # creates the moments / momentum buffers that checkpoints hold
        path = save_checkpoint(tmp_path / f"{name}.pth", model, optimizer, None, 1, config)
        estimate = estimated_checkpoint_bytes(model, name)
        assert estimate == pytest.approx(path.stat().st_size, rel=0.02), name


def test_a_disk_too_small_for_the_checkpoints_refuses_or_warns(phantom_root, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from ctseg_core.models import build_model
    from ctseg_core.models.checkpoint import estimated_checkpoint_bytes

    config = tiny_config(phantom_root, "tight", epochs=4, checkpoint_every=1)
    size = estimated_checkpoint_bytes(build_model(config.model), "adam")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, int(2.5 * size)))
    with pytest.raises(CtsegError, match="room for 3 at once"):
        Trainer(config, checkpoints_root=tmp_path).open_run()
    # room for best.pth, last.pth and 2 of the 4 epoch files: trains, with a lasting warning
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, 5 * size))
    config = tiny_config(phantom_root, "tight2", epochs=4, checkpoint_every=1, steps_per_epoch=1)
    trainer = Trainer(config, checkpoints_root=tmp_path)
    run_dir = trainer.open_run()
    assert "4 checkpoint_epoch<N>.pth files" in read_status(run_dir)["warning"]
    assert trainer.run() == "finished"
    assert "4 checkpoint_epoch<N>.pth files" in read_status(run_dir)["warning"]
    # resumed to 6 epochs: 2 epoch files to come, which fit
    Trainer.resume(run_dir, epochs=6, checkpoints_root=tmp_path).open_run()
    assert read_status(run_dir)["warning"] is None


def test_a_run_still_training_elsewhere_is_not_resumed_over(phantom_root, tmp_path):
    import datetime as dt
    import subprocess

    trainer = Trainer(tiny_config(phantom_root, "busy", epochs=1), checkpoints_root=tmp_path)
    run_dir = trainer.open_run()
    assert trainer.run() == "finished"
    trainer.mark_stopping()  # a Stop that comes just too late leaves the final state alone
    assert read_status(run_dir)["state"] == "finished"
    finished = read_status(run_dir)
    history = (run_dir / "history.jsonl").read_bytes()
    # another live process on this host says it is training the run: a second writer is refused
    other_process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_status(run_dir, {**finished, "state": "running", "pid": other_process.pid})
        with pytest.raises(CtsegError, match="is still running"):
            Trainer.resume(run_dir, epochs=2)
    finally:
        other_process.kill()
        other_process.wait()
    assert (run_dir / "history.jsonl").read_bytes() == history
    # another host, updated a minute ago: refused; silent for two hours (a dead node): resumed
    other = {**finished, "state": "running", "host": "node-17", "pid": 1}
    write_status(run_dir, other)
    with pytest.raises(CtsegError, match="pid 1 on node-17"):
        Trainer.resume(run_dir, epochs=2)
    stale = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=2)
    text = (run_dir / "status.json").read_text()
    updated = json.loads(text)["updated_at"]
    (run_dir / "status.json").write_text(text.replace(updated, stale.isoformat(timespec="seconds")))
    assert Trainer.resume(run_dir, epochs=2).run() == "finished"
    assert [r["epoch"] for r in read_history(run_dir)] == [1, 2]


def test_sample_slices_together_show_the_most_structures():
    from ctseg_core.training.samples import choose_sample_slices

    presence = np.zeros((8, 8), dtype=bool)
    presence[[1, 2], 1:4] = True  # subject 0: two neighbours showing 1-3
    presence[3, 1:5] = True  # and the richest slice, 1-4
    presence[6, 5:7] = True  # subject 1: 5-6
    presence[7, 1] = True
    offsets = np.array([0, 5, 8])
    # 1-4, then 5-6 (new), then nothing new is left: the richer of the rest, the first of equals
    assert choose_sample_slices(presence, offsets, 3) == [3, 6, 1]
    assert choose_sample_slices(presence, offsets, 20)[:3] == [3, 6, 1]
    assert sorted(choose_sample_slices(presence, offsets, 20)) == list(range(8))
    # among slices adding as much, one of a subject not shown yet wins over a richer one
    presence[4, [1, 5, 6]] = True
    assert choose_sample_slices(presence, offsets, 2) == [3, 6]
    presence[6] = False
    assert choose_sample_slices(presence, offsets, 2) == [3, 4]


def test_sample_figures_show_slices_in_their_shape_in_mm(derived_sample, tmp_path):
    """The model sees square slices; the figure gives them back their extent in mm (the
    validation subject s0002 is 122 x 101 voxels of 2.0 x 3.0 mm: 1.24 as tall as wide, where
    its voxels alone would make it 0.83)."""
    from PIL import Image

    from ctseg_core.data.slices import SliceDataset
    from ctseg_core.models import build_model
    from ctseg_core.training.samples import SampleFigure

    config = tiny_config(derived_sample, "fig", loss="dice_ce")
    config.data.structures = ["vertebrae_L1", "liver"]
    config.validate()
    dataset = SliceDataset(config, "val")
    assert dataset.subject_ids == ["s0002"]
    figure = SampleFigure(dataset, config, n=1)
    assert figure.aspects == [pytest.approx((101 * 3.0) / (122 * 2.0))]
    figure.save(build_model(config.model), torch.device("cpu"), None, False, tmp_path, 1)
    assert Image.open(tmp_path / "samples" / "epoch_1.png").size[0] > 0


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_a_resume_in_another_memory_layout_continues_the_optimizer_exactly(optimizer):
    """Saved in the default layout, resumed channels last (or back): the next steps equal those
    of the run that carried on. PyTorch's fused Adam pairs weights and moments by storage.
    Each load gets its own copy of the state (``load_state_dict`` does not copy tensors)."""
    import copy

    from ctseg_core.training.optim import build_optimizer, load_optimizer_state

    torch.manual_seed(0)
    t = TrainConfig(optimizer=optimizer, lr=1e-2)
    model = torch.nn.Sequential(torch.nn.Conv3d(3, 8, 3), torch.nn.Conv3d(8, 4, 1))
    x = torch.randn(2, 3, 6, 7, 5)

    def step(net, opt, layout=torch.contiguous_format):
        opt.zero_grad()
        net(x.contiguous(memory_format=layout)).square().mean().backward()
        opt.step()

    opt = build_optimizer(model, t)
    step(model, opt)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    default, last = torch.contiguous_format, torch.channels_last_3d
    for before, after in [(default, last), (last, default)]:
        carried = copy.deepcopy(model).to(memory_format=before)
        carried_opt = build_optimizer(carried, t)
        load_optimizer_state(carried_opt, copy.deepcopy(saved_opt))
        resumed = copy.deepcopy(model).to(memory_format=after)
        resumed.load_state_dict(saved_model)
        resumed_opt = build_optimizer(resumed, t)
        load_optimizer_state(resumed_opt, copy.deepcopy(saved_opt))
        for _ in range(2):
            step(carried, carried_opt, before)
            step(resumed, resumed_opt, after)
        for a, b in zip(carried.parameters(), resumed.parameters(), strict=True):
            assert (a - b).abs().max().item() < 1e-5  # without the fix: ~0.03
