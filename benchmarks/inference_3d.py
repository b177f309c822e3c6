"""Whole-CT inference with a 3D model: seconds and peak memory, against MONAI's sliding window.

ctseg: the "patches" strategy of ``Predictor``: the CT resampled to the model's 3 mm a few
slices at a time, nnU-Net's sliding window (Gaussian weights, overlap 0.5) with the scores of
the active label values summed at 3 mm, back to the CT's grid and argmax a slab at a time
(``inference.to_grid``; an untrained network's scores are its worst case: nearly every cell is
mixed, so every channel is interpolated over whole slices).

Peer, in the same run: the straightforward way with MONAI's ``sliding_window_inference`` (same
network, patch size, overlap, Gaussian sigma 0.125 and bf16 autocast where the CPU has it): the
CT resampled whole with ``F.interpolate``, the window's softmax summed over 118 channels at 3 mm,
then all 118 channels interpolated trilinearly to the CT's size and argmax. That last step needs
118 x 512 x 512 x 300 floats (37 GB): it is run on ``--crop`` CT slices and its time and memory
are extrapolated linearly to the whole CT, marked as such.

Realistic case, also printed: the way back alone on scores shaped like a real subject's labels
(``subject_scores``: tests/data's s0000 stretched to the model grid), against the same
straightforward way back on ``--crop`` slices, extrapolated.

Model: plain_unet3d (nnU-Net's PlainConvUNet) with the widths of an nnU-Net 3d_fullres plan like
TotalSegmentator's ``--fast`` model (32, 64, 128, 256, 320, 320; strides 1, 2, 2, 2, 2, (1, 1, 2);
patch 112 x 112 x 128 at 3 mm; the real plan's patch and strides are not checked here), 118
softmax outputs, untrained (the network's speed and memory do not depend on its weights; the
way back does, see above). CT: synthetic int16
HU, 512 x 512 x 300 at 0.8 x 0.8 x 1.5 mm. Each measurement runs in a fresh process, so
``ru_maxrss`` (peak resident memory) is its own.

    python benchmarks/inference_3d.py [--threads 2] [--slices 300] [--crop 24]

Goal (issue 17): under 20 s and under 3 GB peak on 2 CPU cores. Measured with the body box
(ctseg's default) and over the whole CT (``--no-body-crop``, like MONAI's here), each printed.

Measured (2 threads; lscpu: Intel Xeon, 2 vCPUs under KVM, AVX-512 BF16 and AMX; other
sessions shared the machine, so only numbers of one run compare). One window alone, the same
process, quiet: 1.15 s with the instance norms kept channels last (``keep_channels_last``),
2.1 s with PyTorch's (they copied the layout each layer), 3.5 s in the default layout; its
convolutions are 744 GFLOP, so 650 GFLOP/s, 31-46 % of a 4096^3 bf16 GEMM in the same run
(1.4-2.1 TFLOP/s). This script, quietest run: ctseg 47.9 s = windows 21.9 s (8 forwards ~9 s;
resample-in 1.2 s; the rest is ours: each window's 118-channel softmax, weighting and sums, and
layout copies) + way back 26.0 s (the untrained worst case: every channel over every slice;
a per-cell bound, channels whose largest corner reaches the best smallest corner, still keeps
72 of 118 on average there, so it cannot help); 2.59 GB peak (estimate_bytes 2.93 GB). MONAI:
windows 40.1 s (1.83x ours), ~90.6 s and ~40 GB whole (way back extrapolated). Realistic case:
way back 6.7 s against ~62.6 s for the straightforward way (9.4x, extrapolated), labels equal;
windows + that way back ~28.5 s. Under 20 s is NOT met, in either case: the network's own
8 forwards take ~9 s here, so the remaining gap is the per-window softmax and sums (~11 s) and
the way back; under 3 GB is met.

Since then the windows average logits, as nnU-Net does, added straight from the network's bf16
output (``inference.patches``): in one profiled run the windows' own work beside the forwards
went from ~8.4 s (softmax, weighting, sums, layout copies) to ~1.4 s. This script, 2026-12-06
(the same kind of Xeon, 2 vCPUs, slower that day: MONAI's windows 46.6 s against 40.1 s above,
the 8 forwards 11-15 s): ctseg windows 20.3 s (MONAI 2.29x), way back 33.4 s in the untrained
worst case (53.7 s in all, MONAI ~105.9 s extrapolated) and 8.2 s in the realistic case (the
straightforward way ~38.1 s, 4.7x), so ~28.5 s realistic; 2.59 GB peak. Under 20 s is still NOT
met: the forwards alone take 11-15 s on these 2 cores (a third of them the instance norms and
leaky ReLUs, memory-bound passes PyTorch does not fuse), and the way back's realistic 8 s is
z-interpolation and argmax over whole planes (``to_grid``: its profile, 150 output slabs).
Then ``to_grid`` took every model voxel's winner once and gathered the candidate channels
before interpolating: the same day, windows 23.1 s (MONAI 2.02x), way back 27.0 s untrained and
5.4 s realistic (straightforward ~51.7 s, 9.6x; labels equal), ~28.4 s realistic in all, 2.61
GB peak: the forwards' 11-15 s on these cores decide the rest.

Then the Predictor labels only the box around the body (``inference.body_box``: voxels above -500
HU without a couch apart from the body, 15 mm of air beyond, at least a patch wide;
``--no-body-crop`` the whole CT, which this script also measures). This CT's body is 26 cm deep and
lies on a couch (left out of the box), so the box is 469 x 420 x 300 voxels (75 % of the CT) and
one window covers it along y: 4 windows instead of 8. 2026-12-06, a Xeon with AMX, 2 quiet vCPUs:
with the box 32.1 s untrained (box + windows 11.8 s, way back 20.3 s), 2.29 GB peak; the whole CT
43.9 s (18.9 + 24.9 s); MONAI's windows 40.1 s (3.40x the box's, 2.12x the whole CT's), ~88.5 s and
~40 GB with its way back (extrapolated). Realistic: way back 2.7 s on the box, 4.5 s on the whole
CT (the straightforward way ~76 s, 17.1x), so ~14.5 s with the box, ~23.4 s without. Goal under 20
s: met in the realistic case with the body box (the default); not met untrained (its way back is
the worst case) or without the box, or for a body over ~30 cm deep (two windows along y again: ~23
s). Arms beside the body widen the box along x, a couch touching the body along y, and a CT's body
spans every slice, so z rarely narrows. The real s0001 (../shared/data, 512 x 512 x 20 at 0.98 mm,
on a couch, arms beside the body) keeps 512 x 345 voxels of its plane: 2 windows at 3 mm instead of
4, the same saving along y as here.

On an AMD EPYC with AVX2 only (no native bf16, so float32; 2026-12-07, 2 quiet cores, after the
ensembles came to weight each member by its own windows and the shifted passes to move their
windows): with the box 44.8 s untrained (box + windows 22.1 s, way back 22.7 s), 2946 MB peak
(the goal's 3 GB is 3072 MB here); the whole CT 81.4 s (46.1 + 35.4 s), 3238 MB; MONAI's
windows 63.7 s (2.89x the box's, 1.38x the whole CT's), ~153.6 s and ~40 GB with its way back
(extrapolated). Realistic: way back 3.7 s on the box, 6.5 s on the whole CT (the straightforward
way ~20.5 s), so ~25.8 s with the box, ~52.6 s without. Goal under 20 s: NOT met on this CPU in
any case (the 4 forwards in float32 take most of the 22 s); under 3 GB: met with the box only.

The floor (``run_floor``, printed since 2026-12-07): one window's forward is 744 GFLOP
(``FlopCounterMode``), so the box's 4 windows are 2977 GFLOP. The same EPYC, 2 quiet cores,
same run: a 2048^3 float32 matmul ran at 153 GFLOP/s, so the forwards alone take at least 19.5
s; ctseg's box + windows took 21.6 s, 138 GFLOP/s, 90 % of that rate (the whole CT: 45.4 s, 86
%). In all 43.9 s untrained, ~25.2 s realistic, 2.83 GB peak; MONAI's windows 2.89x ours. So on
this CPU the goal of 20 s cannot be met by this network at 3 mm in float32, whatever the
sliding window does: its forwards alone reach it. It needs bf16 (a CPU with AMX or AVX-512
BF16; the Xeon above: ~14.5 s realistic) or a smaller network.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fresh_process import measure

SPACING_CT = (0.8, 0.8, 1.5)
SPACING_MODEL = (3.0, 3.0, 3.0)
PATCH = (112, 112, 128)
WIDTHS = [32, 64, 128, 256, 320, 320]
STRIDES = [1, 2, 2, 2, 2, [1, 1, 2]]
SUBJECT_LABELS = (
    Path(__file__).resolve().parents[1]
    / "tests/data/extra/s0000_totalsegmentator_multilabel.nii.gz"
)


def synthetic_ct(shape):
    """An elliptic body of soft tissue with a brighter spine-like column and noise (int16 HU),
    lying on a couch: a curved top 6 mm thick 14 mm below the body's back (foam, below -500 HU,
    between them) and a base below it, along every slice, as a real CT's couch."""
    import numpy as np

    x, y = np.ogrid[: shape[0], : shape[1]]
    rx, ry = shape[0] * 0.42, shape[1] * 0.32
    body = ((x - shape[0] / 2) / rx) ** 2 + ((y - shape[1] / 2) / ry) ** 2 < 1
    bone = ((x - shape[0] / 2) / (rx / 8)) ** 2 + ((y - shape[1] * 0.62) / (ry / 6)) ** 2 < 1
    back = int(shape[1] / 2 - ry)  # the body's lowest y (posterior)
    left, right = int(shape[0] * 0.12), int(shape[0] * 0.88)
    couch = np.zeros(shape[:2], dtype=bool)
    couch[left:right, back - 26 : back - 18] = True  # the top
    couch[left : left + 8, back - 26 : back + 20] = True  # its sides, curved up
    couch[right - 8 : right, back - 26 : back + 20] = True
    couch[int(shape[0] * 0.3) : int(shape[0] * 0.7), back - 70 : back - 45] = True  # the base
    foam = np.zeros(shape[:2], dtype=bool)
    foam[left:right, back - 18 : back] = True
    rng = np.random.default_rng(0)
    ct = np.full(shape, -1000, dtype=np.int16)
    for z in range(shape[2]):
        ct[:, :, z][foam & ~body] = -850
        ct[:, :, z][couch] = 300
        ct[:, :, z][body] = 40 + rng.integers(-30, 30, size=int(body.sum()), dtype=np.int16)
        ct[:, :, z][bone] = 700
    return ct


def make_checkpoint(folder: Path) -> Path:
    import torch

    from ctseg_core.config import DataConfig, ModelConfig, RunConfig
    from ctseg_core.models import build_model
    from ctseg_core.models.checkpoint import save_checkpoint
    from ctseg_core.training.checks import check_run_config

    cfg = RunConfig(
        data=DataConfig(patch_size=PATCH, spacing_mm=SPACING_MODEL),
        model=ModelConfig(name="plain_unet3d", features=WIDTHS, strides=STRIDES, norm="instance"),
    )
    check_run_config(cfg)
    assert cfg.model.out_channels == 118
    torch.manual_seed(0)
    return save_checkpoint(folder / "unet3d.pth", build_model(cfg.model), config=cfg)


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _current_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_ctseg(ckpt, shape, threads, batch, overlap, crop, body_crop, queue) -> None:
    """``Predictor.predict``'s steps, timed apart: the body's box (``body_crop``), the windows
    on it, the way back to its voxels; the labels pasted into the whole CT."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from ctseg_core.inference.predictor import Predictor
    from ctseg_core.inference.to_grid import labels_on_grid

    ct = synthetic_ct(shape)
    predictor = Predictor([ckpt], device="cpu", batch_slices=batch, overlap=overlap,
                          body_crop=body_crop)  # fmt: skip
    strategy = predictor.strategy
    estimate = predictor.estimate_bytes(shape, batch, SPACING_CT) / 2**20
    before = _current_mb()
    start = time.perf_counter()
    box = strategy.body_box(ct, SPACING_CT) if body_crop else None
    part = ct if box is None else ct[box]
    counted = []
    scores = strategy.scores(part, batch, SPACING_CT, lambda d, n, u: counted.append(n))
    windows = time.perf_counter() - start
    active = torch.tensor(predictor.active)
    labels = labels_on_grid(scores, part.shape, active)
    if box is not None:
        whole = np.zeros(shape, dtype=np.uint8)
        whole[box] = labels
        labels = whole
    seconds = time.perf_counter() - start
    grid_labels = active[scores.argmax(dim=3)].to(torch.uint8).permute(1, 2, 0).numpy()
    queue.put({"seconds": seconds, "windows_s": windows, "back_s": seconds - windows,
               "peak_mb": _peak_mb(), "before_mb": before, "estimate_mb": estimate,
               "grid_labels": grid_labels, "labels_crop": labels[:, :, :crop],
               "amp": str(strategy.amp), "windows": counted[-1], "part": part.shape})  # fmt: skip


def run_monai(ckpt, shape, threads, batch, overlap, crop, queue) -> None:
    import torch
    import torch.nn.functional as F
    from monai.inferers import sliding_window_inference

    torch.set_num_threads(threads)
    from ctseg_core.data.resample import grid_shape, linear_weights
    from ctseg_core.data.slices import normalize_hu
    from ctseg_core.device import autocast_context, resolve_amp
    from ctseg_core.models.checkpoint import load_model

    ct = synthetic_ct(shape)
    model, cfg = load_model(ckpt)
    amp = resolve_amp("auto", torch.device("cpu"))
    grid = grid_shape(shape, SPACING_CT, SPACING_MODEL)
    before = _current_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        x = F.interpolate(torch.from_numpy(ct).float()[None, None], size=grid, mode="trilinear",
                          align_corners=False)  # fmt: skip
        x = normalize_hu(x, cfg.data.hu_window)

        def probabilities(patch):
            with autocast_context(torch.device("cpu"), amp):
                logits = model(patch)
            return torch.softmax(logits.float(), dim=1)

        scores = sliding_window_inference(
            x, roi_size=PATCH, sw_batch_size=batch, predictor=probabilities, overlap=overlap,
            mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=-1.0,
        )  # fmt: skip
        windows = time.perf_counter() - start
        grid_labels = scores[0].argmax(dim=0).to(torch.uint8).numpy()
        # the straightforward way back: all 118 channels to the CT's size, then argmax; on the
        # first `crop` CT slices (z interpolated as for the whole CT), extrapolated below
        back_start = time.perf_counter()
        before_back = _current_mb()
        lower, upper, weight = linear_weights(grid[2], shape[2])
        part = scores[0, :, :, :, lower[:crop]].lerp(
            scores[0, :, :, :, upper[:crop]], weight[:crop]
        )
        part = F.interpolate(
            part.permute(3, 0, 1, 2), size=shape[:2], mode="bilinear", align_corners=False
        )  # fmt: skip  (crop, 118, X, Y)
        labels_crop = part.argmax(dim=1).permute(1, 2, 0).to(torch.uint8).numpy()
        back = time.perf_counter() - back_start
        back_mb = _peak_mb() - before_back
    queue.put({"windows_s": windows, "back_crop_s": back, "back_crop_mb": back_mb,
               "peak_mb": _peak_mb(), "before_mb": before, "grid_labels": grid_labels,
               "labels_crop": labels_crop})  # fmt: skip


def subject_scores(grid, channels: int = 118):
    """(Z, X, Y, A) logits on the model grid shaped like a real subject's labels (the realistic
    case; the sliding window averages logits): s0000's TotalSegmentator labels (tests/data)
    stretched to ``grid``, each structure's logit 12 x its Gaussian-smoothed mask, plus smooth
    noise in every channel."""
    import nibabel as nib
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scipy.ndimage import gaussian_filter

    path = SUBJECT_LABELS
    labels = torch.from_numpy(np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj))
    labels = F.interpolate(labels[None, None].float(), size=grid, mode="nearest")[0, 0]
    labels = labels.to(torch.int64).numpy()
    rng = np.random.default_rng(0)
    out = torch.empty((grid[2], grid[0], grid[1], channels))
    coarse = tuple(max(2, g // 4) for g in grid)
    for k in range(channels):
        noise = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
        logit = F.interpolate(noise, size=grid, mode="trilinear")[0, 0].numpy()
        if (labels == k).any():
            logit = logit + 12 * gaussian_filter((labels == k).astype(np.float32), 1.0)
        out[..., k] = torch.from_numpy(logit).permute(2, 0, 1)
    return out


def run_back_realistic(shape, threads, crop, queue) -> None:
    """The way back alone on subject-shaped scores: ctseg's, and the straightforward one (all
    channels interpolated, then argmax) on ``crop`` CT slices."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    from ctseg_core.data.resample import grid_shape, linear_weights
    from ctseg_core.inference.to_grid import labels_on_grid

    grid = grid_shape(shape, SPACING_CT, SPACING_MODEL)
    scores = subject_scores(grid)
    active = torch.arange(scores.shape[3])
    start = time.perf_counter()
    labels = labels_on_grid(scores, shape, active)
    ours = time.perf_counter() - start
    # the straightforward way on the first `crop` CT slices: every channel to the CT's size
    start = time.perf_counter()
    lower, upper, weight = linear_weights(grid[2], shape[2])
    part = scores[lower[:crop]].lerp(scores[upper[:crop]], weight[:crop, None, None, None])
    part = F.interpolate(
        part.permute(0, 3, 1, 2), size=shape[:2], mode="bilinear", align_corners=False
    )  # fmt: skip  (crop, A, X, Y)
    peer = part.argmax(dim=1).permute(1, 2, 0).to(torch.uint8).numpy()
    peer_crop = time.perf_counter() - start
    queue.put({"back_s": ours, "peer_crop_s": peer_crop,
               "agree": float((peer == labels[:, :, :crop]).mean())})  # fmt: skip


def run_floor(ckpt, threads, queue) -> None:
    """The floor the network sets on these cores: one window's forward FLOPs (convolutions and
    transposed convolutions, ``FlopCounterMode``) and a 2048^3 matmul's rate in the dtype the
    Predictor computes in (bf16 where the CPU has it, else float32), best of 5."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(threads)
    from ctseg_core.inference.predictor import Predictor

    predictor = Predictor([ckpt], device="cpu")
    model, amp = predictor.members[0].model, predictor.strategy.amp
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 1, *PATCH))
    dtype = amp or torch.float32
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    queue.put({"window_gflop": counter.get_total_flops() / 1e9,
               "gemm_gflops": 2 * 2048**3 / best / 1e9, "dtype": str(dtype)})  # fmt: skip


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="in-plane CT size")
    parser.add_argument("--slices", type=int, default=300, help="axial slices of the CT")
    parser.add_argument("--crop", type=int, default=24, help="CT slices for MONAI's way back")
    parser.add_argument("--batch", type=int, default=1, help="patches per forward pass (both)")
    parser.add_argument("--overlap", type=float, default=0.5, help="window overlap (both)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    shape = (args.size, args.size, args.slices)
    crop = min(args.crop, args.slices)

    from ctseg_core.data.resample import grid_shape

    grid = grid_shape(shape, SPACING_CT, SPACING_MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp))
        common = (ckpt, shape, args.threads, args.batch, args.overlap, crop)
        ours = measure(run_ctseg, *common, True)
        whole = measure(run_ctseg, *common, False)
        peer = measure(run_monai, *common)
        floor = measure(run_floor, ckpt, args.threads)
    part = tuple(int(n) for n in ours["part"])
    real = measure(run_back_realistic, part, args.threads, crop)
    real_whole = measure(run_back_realistic, shape, args.threads, crop)

    dims = " x ".join(map(str, shape))
    print(f"CT {dims} at {SPACING_CT} mm -> model grid {' x '.join(map(str, grid))} at "
          f"{SPACING_MODEL} mm; plain_unet3d {WIDTHS}, patch {PATCH}, overlap {args.overlap}, "
          f"batch {args.batch}, {args.threads} thread(s), autocast {ours['amp']}")  # fmt: skip
    share = np.prod(part) / np.prod(shape)
    for name, run in ((f"body box {' x '.join(map(str, part))} ({100 * share:.0f} % of the CT)",
                       ours), ("the whole CT (--no-body-crop)", whole)):  # fmt: skip
        print(f"ctseg Predictor, {name}, {run['windows']} windows: {run['seconds']:6.1f} s "
              f"(box + windows {run['windows_s']:.1f} s, back to the CT grid {run['back_s']:.1f} s)"
              f"  peak {run['peak_mb']:5.0f} MB ({run['peak_mb'] - run['before_mb']:.0f} MB above "
              f"the loaded CT + model; estimate_bytes said {run['estimate_mb']:.0f} MB in all)")  # fmt: skip
    back_full = peer["back_crop_s"] * args.slices / crop
    back_mb = peer["back_crop_mb"] * args.slices / crop
    peer_s = peer["windows_s"] + back_full
    peer_mb = peer["peak_mb"] - peer["back_crop_mb"] + back_mb
    print(f"MONAI sliding_window_inference {peer['windows_s']:5.1f} s windows (the whole CT), peak "
          f"{peer['peak_mb'] - peer['back_crop_mb']:.0f} MB before the way back; measured way back "
          f"on {crop} slices: {peer['back_crop_s']:.1f} s, {peer['back_crop_mb']:.0f} MB")  # fmt: skip
    print(f"MONAI, whole CT (way back EXTRAPOLATED from {crop} slices): ~{peer_s:.1f} s, "
          f"~{peer_mb:.0f} MB peak")  # fmt: skip
    agree = float(np.mean(whole["grid_labels"] == peer["grid_labels"]))
    agree_crop = float(np.mean(whole["labels_crop"] == peer["labels_crop"]))
    print(
        f"without the body box, labels equal to MONAI's on {100 * agree:.2f} % of the 3 mm voxels "
        f"and {100 * agree_crop:.2f} % of the {crop} CT slices (an untrained network's scores are "
        "nearly flat: bf16 rounding and MONAI's Gaussian, centred half a voxel off, flip them; "
        "tests/test_inference_patches.py checks the window sums exactly)"
    )
    for name, run in (("with the body box", ours), ("whole CT", whole)):
        print(f"ratio MONAI / ctseg ({name}): windows {peer['windows_s'] / run['windows_s']:.2f}x,"
              f" whole CT time ~{peer_s / run['seconds']:.1f}x (extrapolated), "
              f"peak memory ~{peer_mb / run['peak_mb']:.1f}x (extrapolated)")  # fmt: skip
    real_peer = real_whole["peer_crop_s"] * args.slices / crop
    realistic = ours["windows_s"] + real["back_s"]
    realistic_whole = whole["windows_s"] + real_whole["back_s"]
    print(f"realistic case (scores shaped like s0000's labels, not the untrained network's): "
          f"way back {real['back_s']:.1f} s on the body box, {real_whole['back_s']:.1f} s on the "
          f"whole CT; the straightforward way ~{real_peer:.1f} s (whole CT, EXTRAPOLATED from "
          f"{crop} slices; labels equal on {100 * real_whole['agree']:.3f} % of them): "
          f"{real_peer / real_whole['back_s']:.1f}x; ctseg windows + this way back "
          f"~{realistic:.1f} s (body box), ~{realistic_whole:.1f} s (whole CT)")  # fmt: skip
    for name, run in (("body box", ours), ("whole CT", whole)):
        total = run["windows"] * floor["window_gflop"]
        print(f"floor ({name}): {run['windows']} windows x {floor['window_gflop']:.0f} GFLOP = "
              f"{total:.0f} GFLOP; at this CPU's {floor['dtype']} 2048^3 matmul rate, measured "
              f"now ({floor['gemm_gflops']:.0f} GFLOP/s), the forwards alone take at least "
              f"{total / floor['gemm_gflops']:.1f} s; box + windows ran at "
              f"{total / run['windows_s']:.0f} GFLOP/s, "
              f"{100 * total / run['windows_s'] / floor['gemm_gflops']:.0f} % of it")  # fmt: skip
    for what, ok, value in (
        ("under 20 s (untrained, worst case)", ours["seconds"] < 20, f"{ours['seconds']:.1f} s"),
        ("under 20 s (realistic way back)", realistic < 20, f"~{realistic:.1f} s"),
        ("under 20 s (realistic, without the body box)", realistic_whole < 20,
         f"~{realistic_whole:.1f} s"),
        ("under 3 GB peak", ours["peak_mb"] < 3 * 1024, f"{ours['peak_mb'] / 1024:.2f} GB"),
    ):  # fmt: skip
        print(f"goal {what}: {'met' if ok else 'NOT met'} ({value})")


if __name__ == "__main__":
    main()
