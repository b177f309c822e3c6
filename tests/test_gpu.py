"""The CUDA paths: mixed precision (bf16, fp16 with a GradScaler), channels_last, a training step
that never waits for the GPU, NCCL under torchrun, GPU inference equal to CPU inference.

Skipped without a CUDA GPU; on a GPU machine: ``pytest tests/test_gpu.py`` (about a minute).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.data.slices import ForegroundSampler, SliceDataset
from ctseg_core.device import prepare_device
from ctseg_core.models import build_model
from ctseg_core.models.checkpoint import load_model
from ctseg_core.runs.run_folder import read_history, read_status
from ctseg_core.training.losses import build_loss
from ctseg_core.training.optim import build_optimizer
from ctseg_core.training.step import StepRunner
from ctseg_core.training.trainer import Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

REPO = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")
TINY = {"features": [8, 16, 32, 64], "bottleneck": 64}
FEW = ["liver", "spleen", "kidney_left", "kidney_right", "aorta", "heart", "urinary_bladder"]


def cuda_config(root, run_name: str, **train) -> RunConfig:
    settings = {"epochs": 2, "steps_per_epoch": 6, "sample_figure": True, "device": "cuda"}
    return RunConfig(
        DataConfig(data_root=str(root), target_size=(64, 64), batch_size=8, structures=FEW,
                   val_slices_per_subject=6),
        ModelConfig(**TINY, deep_supervision=2),
        TrainConfig(**(settings | train)),
        run_name=run_name,
    )  # fmt: skip


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_training_on_cuda_learns_and_its_checkpoint_predicts_alike_on_the_cpu(
    amp, phantom_root, tmp_path
):
    config = cuda_config(phantom_root, f"cuda-{amp}", amp=amp, channels_last=True, epochs=3)
    assert Trainer(config, checkpoints_root=tmp_path).run() == "finished"
    run_dir = tmp_path / f"cuda-{amp}"
    assert read_status(run_dir)["state"] == "finished"
    history = read_history(run_dir)
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert (run_dir / "samples" / "epoch_3.png").is_file()
    model, _ = load_model(run_dir / "best.pth")  # weights_only, onto the CPU
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        on_cpu = model.eval()(x)
        on_gpu = model.to(CUDA)(x.to(CUDA)).cpu()
    # cuDNN may convolve in TF32 (10-bit mantissa): close, not equal
    assert (on_gpu - on_cpu).abs().max() < 1e-2 * on_cpu.abs().max()


@pytest.mark.parametrize("amp", [torch.bfloat16, None])
def test_a_pipeline_step_never_synchronizes_with_the_gpu(amp, phantom_root):
    """What tests/test_nosync.py checks on the meta device, on the real one: a stalled host
    leaves the GPU idle between steps (the pipeline overhead of issue 3)."""
    config = cuda_config(phantom_root, "sync")
    config.data.vessel_contrast_prob = 0.5
    config.data.curve_prob = 0.5
    config.train.grad_clip = 1.0
    prepare_device(CUDA)
    dataset = SliceDataset(config, "train")
    sampler = ForegroundSampler(dataset, 64, config.data.foreground_fraction, seed=0)
    loader = iter(torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler,
                                              pin_memory=True))  # fmt: skip
    model = build_model(config.model).to(CUDA).to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config.train)
    lut = torch.from_numpy(dataset.lut).long().to(CUDA)
    run_step = StepRunner(model, optimizer, torch.amp.GradScaler("cuda", enabled=False),
                          build_loss(config.train.loss), lut, config.data, CUDA, amp, True,
                          config.train.grad_clip)  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):  # warm-up: cuDNN picks its algorithms, Adam makes its state
        image, labels, subjects = next(loader)
        run_step(image, labels, gen, subjects)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            image, labels, subjects = next(loader)
            loss = run_step(image, labels, gen, subjects)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert math.isfinite(float(loss))


@pytest.mark.slow
def test_torchrun_with_nccl_trains_on_the_gpu(phantom_root, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "CTSEG_CACHE": str(tmp_path / "cache")}
    runs = tmp_path / "runs"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
        "-m", "ctseg_core", "train", "--data", str(phantom_root), "--checkpoints", str(runs),
        "--features", "8", "16", "32", "64", "--bottleneck", "64", "--size", "64", "64",
        "--epochs", "2", "--steps-per-epoch", "3", "--val-slices", "3", "--device", "cuda",
        "--run-name", "nccl",
    ]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert read_status(runs / "nccl")["state"] == "finished"
    assert [r["epoch"] for r in read_history(runs / "nccl")] == [1, 2]


def test_prediction_on_the_gpu_labels_as_on_the_cpu(phantom_root, tmp_path):
    from ctseg_core.data.volume import load_ct
    from ctseg_core.inference.predictor import predict_volume

    config = cuda_config(phantom_root, "infer", amp="bf16", epochs=2)
    assert Trainer(config, checkpoints_root=tmp_path).run() == "finished"
    ct = load_ct(phantom_root / "s0000" / "ct.nii.gz")
    best = tmp_path / "infer" / "best.pth"
    on_gpu = predict_volume(ct, [best], device="auto")  # a GPU when there is one: this one
    on_cpu = predict_volume(ct, [best], device="cpu")
    assert on_gpu.shape == on_cpu.shape == ct.array.shape
    assert (on_gpu == on_cpu).mean() > 0.99  # TF32 convolutions may flip a few border voxels


def test_nnunet_model_on_cuda_equals_nnunet_predictor_on_cuda(tmp_path, small_ct):
    """On a GPU both run the network under float16 autocast (nnU-Net's choice): the labels of
    ctseg's NnunetPredictor equal nnUNetPredictor's on the same GPU, up to argmax ties of
    float16 logits (at most 1e-3 of the voxels; not yet measured on a GPU)."""
    import nibabel as nib
    import numpy as np

    pytest.importorskip("nnunetv2")
    from nnunet_kit import nnunet_reference, write_model_folder

    from ctseg_core.data.volume import load_ct
    from ctseg_core.nnunet.model import NnunetPredictor

    folder = write_model_folder(tmp_path, "3d_fullres", [4.5, 5.0, 4.0], [16, 32, 32],
                                [0, 2, 1], folds=2)  # fmt: skip
    reference = nnunet_reference(folder, small_ct, 2, device="cuda").transpose(2, 1, 0)
    ours = NnunetPredictor(folder, device="cuda").predict(load_ct(small_ct), own_values=True)
    assert ours.shape == reference.shape == nib.load(small_ct).shape
    assert (np.bincount(reference.ravel()) > 0).sum() >= 3
    assert float((ours != reference).mean()) <= 1e-3


def test_score_sums_the_gpu_cannot_hold_go_to_host_memory_with_the_same_labels(tmp_path, caplog):
    """A 3D model's score sums of a CT larger than the GPU lets this process use (capped with
    ``set_per_process_memory_fraction``, which CUDA's free-memory figure does not show, so the
    estimate passes and the allocation fails): the prediction runs again with them in host
    memory and labels as with them on the GPU."""
    import logging

    import numpy as np

    from ctseg_core.inference.predictor import Predictor
    from ctseg_core.models.checkpoint import save_checkpoint

    config = RunConfig(
        data=DataConfig(patch_size=(64, 64, 32), spacing_mm=(1.5, 1.5, 1.5)),
        model=ModelConfig(name="plain_unet3d", features=[8, 16], strides=[1, [2, 2, 2]],
                          norm="instance"),
    )  # fmt: skip
    config.validate()  # 117 structures: 118 score channels
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pth", build_model(config.model), config=config)
    ct = np.random.default_rng(0).integers(-1000, 1000, size=(192, 192, 80)).astype(np.int16)
    spacing = (1.5, 1.5, 1.5)  # sums: 192 x 192 x 80 x 118 float32, 1.4 GB
    predictor = Predictor([ckpt], device="cuda", body_crop=False)
    on_gpu = predictor.predict(ct, spacing_mm=spacing)
    assert not predictor.strategy.host_sums
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(CUDA).total_memory
    torch.cuda.set_per_process_memory_fraction(1.0e9 / total)
    try:
        with caplog.at_level(logging.WARNING):
            on_host = predictor.predict(ct, spacing_mm=spacing)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert predictor.strategy.host_sums
    assert "ran out of memory" in caplog.text
    assert (on_host == on_gpu).mean() > 0.999  # cuDNN may pick other algorithms


@pytest.mark.parametrize("kind", ["mirror", "shift", "sigmoid", "ensemble", "subset"])
def test_score_sums_in_host_memory_equal_those_on_the_gpu(tmp_path, kind):
    """Every kind of pass with the sums in host memory (``host_sums``) against the same on the
    GPU: mirrored and shifted test-time passes, a sigmoid model (probabilities, its background
    0.5), an ensemble of other patches, and members of other structures' order (channels read
    through a map); float32, so the sums agree to rounding."""
    from test_inference_patches import STRUCTURES, checkpoint_3d

    from ctseg_core.inference.predictor import Predictor

    spacing = (6.0, 6.0, 6.0)
    first = checkpoint_3d(tmp_path / "a.pth", patch=(16, 16, 8), spacing=spacing, seed=1,
                          mirror=kind == "mirror", output="sigmoid" if kind == "sigmoid"
                          else "softmax")  # fmt: skip
    members = [first]
    if kind == "ensemble":
        members.append(checkpoint_3d(tmp_path / "b.pth", patch=(32, 32, 16), spacing=spacing))
    if kind == "subset":
        members.append(checkpoint_3d(tmp_path / "b.pth", patch=(16, 16, 8), spacing=spacing,
                                     structures=list(reversed(STRUCTURES)), seed=2))  # fmt: skip
    ct = torch.randint(-1000, 1000, (45, 38, 23), generator=torch.Generator().manual_seed(7))
    ct = ct.to(torch.int16).numpy()
    predictor = Predictor(members, device="cuda", batch_slices=4, tta=kind in ("mirror", "shift"))
    predictor.strategy.amp = None
    sums = {}
    for host_sums in (False, True):
        predictor.strategy.host_sums = host_sums
        sums[host_sums] = predictor.strategy.scores(ct, 4, spacing_mm=spacing)
    assert sums[False].device.type == "cuda" and sums[True].device.type == "cpu"
    torch.testing.assert_close(sums[True], sums[False].cpu(), rtol=1e-5, atol=1e-5)
