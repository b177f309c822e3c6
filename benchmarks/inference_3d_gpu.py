"""Whole-CT inference with ``gpu_3d``'s network on a GPU: seconds and peak memory, against MONAI.

ctseg: ``Predictor.predict`` (the "patches" strategy: the CT resampled to the model's 1.5 mm,
nnU-Net's sliding window with Gaussian weights and overlap 0.5 under bf16, labels back on the
CT's grid), with the body's box (the default; ``--whole``: also over the whole CT).
Peer, in the same run: MONAI's ``sliding_window_inference`` with the same network, patch,
overlap, Gaussian (sigma 0.125), autocast and windows per batch (``Predictor``'s 8), on the CT
resampled whole on the device, the window's softmax summed over 118 channels; then the
straightforward way back (every channel to the CT's size, argmax), on ``--crop`` CT slices and
extrapolated to the whole CT (marked so), as ``inference_3d.py`` does on the CPU. The network
runs as ``load_model`` gives it to both (MONAI's input in the default layout, ctseg's channels
last), so the ratio includes what ctseg's layout buys. Each line is printed when measured.

Model: the ``gpu_3d`` preset's PlainConvUNet (nnU-Net 3d_fullres widths [32, 64, 128, 256, 320,
320], patch 128^3 at 1.5 mm, 118 softmax outputs), untrained: its speed does not depend on its
weights, its way back does (an untrained network's scores are the worst case). CT: the
synthetic 512 x 512 x 300 int16 CT at 0.8 x 0.8 x 1.5 mm of ``inference_3d.py`` (a body on a
couch). Each timed run follows an untimed one of the same shapes (cuDNN picks its algorithms
there). Peak memory: the device's (``torch.cuda.max_memory_allocated``) on a GPU.

    python benchmarks/inference_3d_gpu.py [--device cuda] [--size 512] [--slices 300] [--whole]

Issue 17 asks for the seconds of whole-CT inference at 1.5 mm on the lent GPU
(``benchmarks/device_check.sh`` runs this). Not measured on a GPU yet: no session has had one.
On the CPU (2026-12-07, a Xeon with AMX, 2 cores) ``--device cpu --size 160 --slices 64`` only
checks that it runs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from inference_3d import synthetic_ct

SPACING_CT = (0.8, 0.8, 1.5)
BATCH = 8  # windows per forward pass, both ways (Predictor's default)


def make_checkpoint(folder: Path) -> Path:
    """An untrained checkpoint of the ``gpu_3d`` preset's network."""
    from ctseg_core.models import build_model
    from ctseg_core.models.checkpoint import save_checkpoint
    from ctseg_core.training.checks import check_run_config
    from ctseg_core.training.presets import preset

    config = preset("gpu_3d")
    check_run_config(config)
    torch.manual_seed(0)
    return save_checkpoint(folder / "gpu_3d.pth", build_model(config.model), config=config)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")


def run_ctseg(ckpt: Path, ct: np.ndarray, device: torch.device, body_crop: bool) -> dict:
    """Seconds and peak memory of ``Predictor.predict`` (after an untimed run)."""
    from ctseg_core.inference.predictor import Predictor

    predictor = Predictor([ckpt], device=device, body_crop=body_crop, batch_slices=BATCH)
    predictor.predict(ct, spacing_mm=SPACING_CT)  # untimed: cuDNN's choices, allocations
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    labels = predictor.predict(ct, spacing_mm=SPACING_CT)
    _sync(device)
    seconds = time.perf_counter() - start
    box = predictor.last_box
    part = ct.shape if box is None else tuple(s.stop - s.start for s in box)
    return {"seconds": seconds, "peak_mb": _peak_mb(device), "labels": labels, "part": part}


def run_monai(ckpt: Path, ct: np.ndarray, device: torch.device, crop: int) -> dict:
    """MONAI's sliding window on the CT resampled whole (after an untimed run), then the
    straightforward way back on the first ``crop`` CT slices."""
    from monai.inferers import sliding_window_inference

    from ctseg_core.data.resample import grid_shape, linear_weights
    from ctseg_core.data.slices import normalize_hu
    from ctseg_core.device import autocast_context, resolve_amp
    from ctseg_core.models.checkpoint import load_model

    model, config = load_model(ckpt, device=device)
    amp = resolve_amp("auto", device)
    grid = grid_shape(ct.shape, SPACING_CT, config.data.spacing_mm)
    cval = 0.0 if config.data.padding == "normalised_zero" else -1.0  # the padding it trained on

    def probabilities(window):
        with autocast_context(device, amp):
            logits = model(window)
        return torch.softmax(logits.float(), dim=1)

    def windows():
        x = torch.from_numpy(ct).to(device).float()[None, None]
        x = F.interpolate(x, size=grid, mode="trilinear", align_corners=False)
        x = normalize_hu(x, config.data.hu_window)
        return sliding_window_inference(
            x, roi_size=tuple(config.data.patch_size), sw_batch_size=BATCH, predictor=probabilities,
            overlap=0.5, mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=cval,
        )  # fmt: skip

    with torch.inference_mode():
        del_untimed = windows()
        del del_untimed
        _sync(device)
        _reset_peak(device)
        start = time.perf_counter()
        scores = windows()
        _sync(device)
        windows_s = time.perf_counter() - start
        windows_mb = _peak_mb(device)
        start = time.perf_counter()
        lower, upper, weight = linear_weights(grid[2], ct.shape[2])
        lower, upper = torch.as_tensor(lower[:crop]), torch.as_tensor(upper[:crop])
        weight = torch.as_tensor(weight[:crop], device=device, dtype=scores.dtype)
        part = scores[0][..., lower.to(device)].lerp(scores[0][..., upper.to(device)], weight)
        part = F.interpolate(
            part.permute(3, 0, 1, 2), size=ct.shape[:2], mode="bilinear", align_corners=False
        )  # (crop, 118, X, Y)
        labels_crop = part.argmax(dim=1).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
        _sync(device)
        back_crop_s = time.perf_counter() - start
    return {"windows_s": windows_s, "windows_mb": windows_mb, "back_crop_s": back_crop_s,
            "labels_crop": labels_crop}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=512, help="in-plane CT size")
    parser.add_argument("--slices", type=int, default=300, help="axial slices of the CT")
    parser.add_argument("--crop", type=int, default=24, help="CT slices for MONAI's way back")
    parser.add_argument("--whole", action="store_true", help="also ctseg over the whole CT")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer sets it (device.prepare_device)
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    ct = synthetic_ct((args.size, args.size, args.slices))
    crop = min(args.crop, args.slices)
    print(f"CT {' x '.join(map(str, ct.shape))} at {SPACING_CT} mm; gpu_3d's network (1.5 mm, "
          f"patch 128^3), untrained; {BATCH} windows a batch")  # fmt: skip
    ours = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp))
        for name, body_crop in (("body box", True), ("the whole CT", False))[: 1 + args.whole]:
            run = ours[name] = run_ctseg(ckpt, ct, device, body_crop=body_crop)
            box = " x ".join(map(str, run["part"]))
            print(f"ctseg Predictor, {name} ({box}): {run['seconds']:.2f} s, peak "
                  f"{run['peak_mb']:.0f} MB on the device")  # fmt: skip
        peer = run_monai(ckpt, ct, device, crop)
    peer_s = peer["windows_s"] + peer["back_crop_s"] * ct.shape[2] / crop
    print(f"MONAI sliding_window_inference on the whole CT: windows {peer['windows_s']:.2f} s "
          f"(peak {peer['windows_mb']:.0f} MB on the device); way back on {crop} slices "
          f"{peer['back_crop_s']:.2f} s; in all ~{peer_s:.2f} s (way back EXTRAPOLATED)")  # fmt: skip
    for name, run in ours.items():
        agree = float(np.mean(run["labels"][:, :, :crop] == peer["labels_crop"]))
        print(f"ratio MONAI / ctseg ({name}): ~{peer_s / run['seconds']:.1f}x; labels equal to "
              f"MONAI's on {100 * agree:.2f} % of the first {crop} slices (untrained scores are "
              "nearly flat; outside the body box ctseg's are background)")  # fmt: skip


if __name__ == "__main__":
    main()
