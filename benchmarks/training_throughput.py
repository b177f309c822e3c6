"""Training throughput: full steps through the real data pipeline vs the bare model step.

Peer: the bare step (forward, loss, backward, optimizer: ``training.step.StepRunner`` without
augmentation) on a batch already in memory, measured in the same run, interleaved in rounds with
the pipeline step so that a busy machine slows both alike. The pipeline step is the trainer's own
StepRunner on the trainer's loader: it adds reading slices from the preprocessing cache
(memmap), HU normalisation, resizing, foreground-oversampled sampling and the batched
augmentation. Both read each step's loss one step late, as the trainer does.
Two steps in between split the overhead: "+copy" takes a fixed batch from (pinned) host memory,
so it adds the host-to-device copy (nothing on a CPU); "+augment" also augments it. pipeline
minus +augment is then what the loader costs the training loop.
All run in fp32 and with bf16 autocast + channels_last (what amp "auto" picks on a CPU with
native bf16). Model: the seed U-Net (features 32-256, bottleneck 512, 118 outputs).
On CUDA one pipeline step also runs under ``torch.cuda.set_sync_debug_mode("warn")``, and the
synchronizing operations it caught are printed (there should be none: see ctseg_core.nosync).

    python benchmarks/training_throughput.py [--data ROOT] [--size 128] [--batch 8] [--rounds 4]
    python benchmarks/training_throughput.py --device cuda --size 256 --batch 16 --workers 8
    python benchmarks/training_throughput.py --device cuda --kind 3d --preset gpu_3d \
        --patch 128 128 128 --batch 2 --only "bf16 + channels_last"

Without --data a 4-subject phantom (160 x 160 x 48) is generated in a temporary folder.
Goals (issue 3): pipeline overhead < 10 %; >= 20 slices/s through the pipeline on 2 CPU cores.
Measured on this project's 2-core CPU (AVX-512 with AMX), defaults, 4 rounds: bf16 +
channels_last bare 30.5, pipeline 30.3 slices/s (0.99). On an H100 (256 x 256, batch 16, 8
workers, before the device syncs were removed): bf16 bare 800, pipeline 704 (0.88); fp32 401 /
379 (0.95).
``--kind 3d`` times phantom_3d's PlainConvUNet on patches (voxels/s; PatchDataset, PatchSampler,
augment_batch_3d). Not yet measured on a quiet machine: the one run (2026-12-05, 2 rounds of 3
steps, load average ~9 from other work) gave pipeline/bare 1.12 in bf16 and 1.46 in fp32, i.e.
noise larger than the overhead it is meant to show. Quiet (2026-12-06, Xeon with AMX, 2
threads, default rounds, patch 64 x 64 x 48, batch 2), millions of voxels/s, bare / pipeline:
fp32 0.25 / 0.25 (1.03), bf16 0.36 / 0.36 (0.99), bf16 + channels_last 0.54 / 0.53 (0.97):
the pipeline's overhead is 3 % (goal < 10 %), and channels last is 1.5x the default layout.
On an AMD EPYC with AVX2 only (no AVX-512, no native bf16: float32 is what "auto" runs),
2026-12-06, quiet, batch 1: fp32 0.19 / 0.19 (1.00), fp32 + channels_last 0.22 / 0.21 (0.98):
channels last pays in float32 there too (1.16x), so 3D trains channels last on any CPU.
Then one-sample convolutions were split for oneDNN (``ctseg_core.models.cpu_convs``); the
3D defaults became phantom_3d's batch of one, and a fifth kind, "unsplit", the bare step with
PyTorch's own convolutions. Same kind of EPYC, 2026-12-07, quiet, patch 48 x 48 x 32: fp32
bare 0.28 / pipeline 0.28 / unsplit 0.26 (1.08x); fp32 + channels_last (the trainer's choice)
0.34 / 0.33 / 0.28: the split step 1.21x its unsplit peer, the pipeline's overhead 2 %.
On a Xeon with AMX (2026-12-07, quiet, 2 threads), phantom_3d as that CPU gets it (widths
[32, 64, 128, 256, 320], 118 outputs), bare / pipeline / unsplit: fp32 0.22 / 0.21 / 0.21,
fp32 + channels_last 0.23 / 0.23 / 0.21, bf16 0.34 / 0.33 / 0.34, bf16 + channels_last (the
trainer's choice there) 0.45 / 0.43 / 0.45: the pipeline's overhead 5 % (goal < 10 %); the
split convolutions neither help nor hurt in bf16 (1.01x).
The Dice + CE of channels-last logits then went through the voxels in blocks that stay in the
cache (``training.dice_ce_channels_last``; it had taken ~40 ms of the 0.17 s step, a profile
showed). The same kind of Xeon, 2026-12-07, quiet, 3 rounds, the code before and after one
after the other, bf16 + channels_last, bare / pipeline: 0.46 / 0.44 before, 0.50 / 0.48 after
(1.09x); again later 0.42 / 0.41 before, 0.45 / 0.44 after (1.07x). In float32 nothing changed:
PyTorch's float32 1 x 1 x 1 output convolutions return the default layout, so that loss is the
default layout's (``losses._DiceCE``).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import tempfile
import time
import warnings
from pathlib import Path

import torch

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.data.patches import PatchDataset, PatchSampler
from ctseg_core.data.slices import ForegroundSampler, SliceDataset
from ctseg_core.device import (
    cpu_has_bf16,
    loader_workers,
    prepare_device,
    resolve_device,
)
from ctseg_core.models import build_model
from ctseg_core.models.cpu_convs import split_single_sample_convs
from ctseg_core.models.nnunet import keep_channels_last
from ctseg_core.training.losses import build_loss
from ctseg_core.training.optim import build_optimizer
from ctseg_core.training.presets import preset
from ctseg_core.training.step import StepRunner


def make_data(args, tmp: Path) -> str:
    if args.data:
        return str(args.data)
    from ctseg_core.data.phantom.dataset import make_phantom_dataset

    root = tmp / "phantom"
    make_phantom_dataset(root, n_subjects=4, seed=0, shape=(160, 160, 48))
    return str(root)


def slice_parts(args, data_root: str, cache: str):
    """The seed U-Net's config, the slice dataset and its sampler."""
    config = RunConfig(
        DataConfig(data_root=data_root, cache_dir=cache, target_size=(args.size, args.size),
                   batch_size=args.batch, train_split="all"),
        ModelConfig(),
        TrainConfig(),
    )  # fmt: skip
    dataset = SliceDataset(config, "all")
    sampler = ForegroundSampler(dataset, 10**6, config.data.foreground_fraction, seed=0)
    return config, dataset, sampler


def patch_parts(args, data_root: str, cache: str):
    """The 3D preset's config (every structure learned) with --patch and --batch, the patch
    dataset and its sampler."""
    config = preset(args.preset, data_root)
    config.data.cache_dir, config.data.train_split = cache, "all"
    config.data.batch_size = args.batch
    if args.patch:
        config.data.patch_size = tuple(args.patch)
    config.validate()
    dataset = PatchDataset(config, "all")
    sampler = PatchSampler(dataset, 10**6, config.data.foreground_fraction, seed=0)
    return config, dataset, sampler


def measure(args, data_root: str, cache: str, amp: torch.dtype | None, channels_last: bool):
    """Samples (slices or patches) per second of each kind of step, over all rounds."""
    parts = patch_parts if args.kind == "3d" else slice_parts
    config, dataset, sampler = parts(args, data_root, cache)
    device = resolve_device(args.device)
    # Loader processes read and resize slices while the accelerator computes (a GPU outruns one
    # process); pinned memory makes the host-to-device copy asynchronous.
    loader = iter(
        torch.utils.data.DataLoader(
            dataset, batch_size=args.batch, sampler=sampler, num_workers=args.workers,
            pin_memory=device.type == "cuda", persistent_workers=args.workers > 0,
            prefetch_factor=4 if args.workers else None,
        )
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(config.model).to(device)
    layout = torch.channels_last_3d if args.kind == "3d" else torch.channels_last
    optimizer = build_optimizer(model, config.train)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    loss_fn = build_loss(config.train.loss)
    lut = torch.from_numpy(dataset.lut).long().to(device)
    if channels_last:
        model = model.to(memory_format=layout)
        keep_channels_last(model)  # as the trainer does (training.parts)
    peer_step = None
    if args.kind == "3d" and device.type == "cpu":  # as the trainer does; the peer: unsplit
        peer = copy.deepcopy(model)
        split_single_sample_convs(model)
        peer_step = StepRunner(peer, build_optimizer(peer, config.train), scaler, loss_fn, lut,
                               config.data, device, amp, channels_last, config.train.grad_clip,
                               dataset.annotated_classes(), dataset.mirror_safe())  # fmt: skip
    run_step = StepRunner(model, optimizer, scaler, loss_fn, lut, config.data, device, amp,
                          channels_last, config.train.grad_clip, dataset.annotated_classes(),
                          dataset.mirror_safe())  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    host_image, host_labels, host_subjects = next(loader)  # pinned on CUDA, as the loader gives
    fixed_image, fixed_labels = host_image.to(device), host_labels.to(device)
    losses: list[torch.Tensor] = []

    def read_late(loss: torch.Tensor) -> None:
        """Read the previous step's loss, as the trainer does (one step behind the device)."""
        losses.append(loss)
        if len(losses) > 1:
            float(losses.pop(0))

    def bare():
        read_late(run_step(fixed_image, fixed_labels, None))

    def with_copy():
        read_late(run_step(host_image, host_labels, None))

    def augment():
        read_late(run_step(host_image, host_labels, gen, host_subjects))

    def pipeline():
        image, labels, subjects = next(loader)
        read_late(run_step(image, labels, gen, subjects))

    def unsplit():
        read_late(peer_step(fixed_image, fixed_labels, None))

    kinds = {"bare": bare, "+copy": with_copy, "+augment": augment, "pipeline": pipeline}
    if peer_step is not None:
        kinds["unsplit"] = unsplit
    for fn in (bare, *kinds.values()):  # warm-up
        fn()
    syncs = device_syncs(lambda: run_step(*next(loader)[:2], gen)) if device.type == "cuda" else []
    seconds = dict.fromkeys(kinds, 0.0)
    for _, (name, fn) in itertools.product(range(args.rounds), kinds.items()):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds[name] += time.perf_counter() - t0
    samples = args.rounds * args.steps * args.batch
    return {k: samples / v for k, v in seconds.items()}, syncs


def device_syncs(step) -> list[str]:
    """The messages of the synchronizing CUDA operations that ``step()`` makes."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--kind", choices=("2d", "3d"), default="2d", help="slices or patches")
    parser.add_argument("--size", type=int, default=128, help="2D slice size")
    parser.add_argument("--patch", type=int, nargs=3, default=None, help="3D patch X Y Z")
    parser.add_argument(
        "--preset", choices=("phantom_3d", "gpu_3d"), default="phantom_3d", help="3D network"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="default: 8 slices; phantom_3d's 1 patch"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="steps per round and kind (default 5; CUDA 25)"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--only", default=None, help='one mode, e.g. "bf16 + channels_last" (default: all)'
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--workers", type=int, default=None, help="loader processes (default: as the trainer picks)"
    )
    args = parser.parse_args()
    args.workers = loader_workers(args.workers, resolve_device(args.device))
    if args.batch is None:
        args.batch = preset(args.preset).data.batch_size if args.kind == "3d" else 8
    if args.steps is None:  # a GPU step takes milliseconds: more of them for a stable figure
        args.steps = 25 if resolve_device(args.device).type == "cuda" else 5
    with tempfile.TemporaryDirectory() as tmp:
        data_root = make_data(args, Path(tmp))
        cache = str(Path(tmp) / "cache")
        device = resolve_device(args.device)
        prepare_device(device)  # as the trainer does
        modes = [("fp32", None, False)]
        if args.kind == "3d":  # does the layout pay without bf16 (an AVX2 laptop)?
            modes.append(("fp32 + channels_last", None, True))
        if device.type == "cuda" or cpu_has_bf16():
            if args.kind == "3d":  # what channels last buys the 3D model (the trainer's choice)
                modes.append(("bf16", torch.bfloat16, False))
            modes.append(("bf16 + channels_last", torch.bfloat16, True))
        if args.only is not None:
            modes = [m for m in modes if m[0] == args.only]
            if not modes:
                parser.error(f"--only {args.only!r} is not a mode this device runs")
        if args.kind == "3d":
            patch = args.patch or preset(args.preset).data.patch_size
            voxels = math.prod(patch)
            print(f"{args.preset}'s PlainConvUNet, patch {'x'.join(map(str, patch))}, batch "
                  f"{args.batch}, 118 outputs, device {device}, {torch.get_num_threads()} "
                  "threads")  # fmt: skip
            print("voxels/s (millions):")
        else:
            voxels = 1
            print(f"seed U-Net, {args.size}x{args.size}, batch {args.batch}, 118 outputs, "
                  f"device {device}, {torch.get_num_threads()} threads")  # fmt: skip
            print("slices/s:")
        kinds = ("bare", "+copy", "+augment", "pipeline")
        split = args.kind == "3d" and device.type == "cpu"
        if split:  # the bare step with PyTorch's own convolutions (models.cpu_convs)
            kinds += ("unsplit",)
        print(f"{'mode':<22}" + "".join(f"{k:>10}" for k in kinds) + f"{'pipeline/bare':>15}"
              + (f"{'bare/unsplit':>14}" if split else ""))  # fmt: skip
        for name, amp, cl in modes:
            r, syncs = measure(args, data_root, cache, amp, cl)
            scale = voxels / 1e6 if args.kind == "3d" else 1
            row = "".join(f"{r[k] * scale:>10.2f}" for k in kinds)
            gain = f"{r['bare'] / r['unsplit']:>14.2f}" if split else ""
            print(f"{name:<22}{row}{r['pipeline'] / r['bare']:>15.2f}{gain}")
            if args.kind == "3d":  # steps of one batch each, as nnU-Net reports them
                print(f"  iterations/s (batch {args.batch}): bare {r['bare'] / args.batch:.2f}, "
                      f"pipeline {r['pipeline'] / args.batch:.2f}")  # fmt: skip
            if device.type == "cuda":
                print(f"  device syncs in one pipeline step: {len(syncs)}", *syncs[:3], sep="\n  ")


if __name__ == "__main__":
    main()
