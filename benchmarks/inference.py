"""Whole-CT inference: seconds per 100 slices and peak memory, against the naive way, in one run.

ctseg: ``Predictor.predict`` (batches of axial slices, scores only for one batch at a time,
uint8 labels for the volume). Peer, measured in the same run: the naive approach of the seed
notebooks' style, which keeps the whole volume's 118-channel float scores at the CT's size and
takes the argmax at the end; it is run on a thin slab (it needs ~124 MB per 512 x 512 slice) and
its memory is also extrapolated linearly to the full CT, clearly marked as such.

Speed against the model itself: the seconds spent inside the network's forward calls are timed
in the same run (forward hooks), and the whole prediction is reported as a multiple of them
(goal: at most 2x). Against the previous way of bringing scores to the CT's size (all active
channels upsampled, 16 at a time, with a running maximum: ``old_to_labels`` below), both run
in one process on the same ``--old-slices`` slab, alternately, with their labels compared.
The number of channels upsampled depends on the model: this random-init model has few
winners (5 candidates per slice); a trained model is expected to need about as many as there
are structures in a slice (16-30 on s0000), each costing ~1.5 ms of one core per 512 x 512 slice.
Measured on 2 shared cores of an AMX Xeon (load 7-9): 1.51x the forward time (old way 2.29x in
the same run, labels equal on 100 % of the voxels).

Model: the seed U-Net (features [32, 64, 128, 256], bottleneck 512, 118 softmax outputs), random
init. CT: synthetic int16 HU (an elliptic body with noise), 512 x 512 x 300 by default. Each
measurement runs in a fresh process, so ``ru_maxrss`` (peak resident memory) is its own.

    python benchmarks/inference.py [--target 128] [--slices 300] [--slab 8] [--threads 1]

Goals: peak memory < 3 GB on CPU for the 512 x 512 x 300 CT; time at most 2x the forward time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path


def synthetic_ct(shape) -> np.ndarray:  # noqa: F821 (numpy imported in the child)
    import numpy as np

    x, y = np.ogrid[: shape[0], : shape[1]]
    body = ((x - shape[0] / 2) / (shape[0] * 0.42)) ** 2 + (
        (y - shape[1] / 2) / (shape[1] * 0.32)
    ) ** 2 < 1
    rng = np.random.default_rng(0)
    ct = np.full(shape, -1000, dtype=np.int16)
    for z in range(shape[2]):
        ct[:, :, z][body] = 40 + rng.integers(-30, 30, size=int(body.sum()), dtype=np.int16)
    return ct


def make_checkpoint(folder: Path, target: int) -> Path:
    import torch

    from ctseg_core.config import DataConfig, ModelConfig, RunConfig
    from ctseg_core.models import build_model
    from ctseg_core.models.checkpoint import save_checkpoint

    cfg = RunConfig(
        data=DataConfig(target_size=(target, target)),
        model=ModelConfig(features=[32, 64, 128, 256], bottleneck=512),
    )
    assert cfg.model.out_channels == 118
    torch.manual_seed(0)
    return save_checkpoint(folder / "seed_model.pth", build_model(cfg.model), config=cfg)


def _rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def _current_mb() -> float:
    """Resident memory now (MB), from /proc (Linux)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def time_forward(predictor) -> list[float]:
    """Forward hooks on every member: the returned list's first item accumulates the seconds
    spent inside the networks' forward calls (on a GPU, asynchronous: not comparable)."""
    total, started = [0.0], [0.0]

    def before(module, args):
        started[0] = time.perf_counter()

    def after(module, args, output):
        total[0] += time.perf_counter() - started[0]

    for member in predictor.members:
        member.model.register_forward_pre_hook(before)
        member.model.register_forward_hook(after)
    return total


def old_to_labels(self, scores, size):
    """The previous ``SliceStrategy._to_labels``: every active channel upsampled, 16 at a time."""
    import torch
    import torch.nn.functional as F

    active = torch.tensor(self.predictor.active, dtype=torch.int64, device=scores.device)
    if tuple(scores.shape[-2:]) == size:
        return active[scores.argmax(dim=1)].to(torch.uint8).cpu().numpy()
    best_value = best_index = None
    for start in range(0, scores.shape[1], 16):
        chunk = F.interpolate(scores[:, start : start + 16], size=size, mode="bilinear",
                              align_corners=False)  # fmt: skip
        value, index = chunk.max(dim=1)
        index += start
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index, best_index)
    return active[best_index].to(torch.uint8).cpu().numpy()


def run_ctseg(ckpt, shape, threads, batch, queue, device="cpu") -> None:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from ctseg_core.inference.predictor import Predictor
    from ctseg_core.inference.strategies import candidate_channels

    ct = synthetic_ct(shape)
    predictor = Predictor([ckpt], batch_slices=batch, device=device)
    forward = time_forward(predictor)
    before = _current_mb()
    warm = predictor.predict(ct[:, :, :batch])  # warm-up (allocator, kernels), not timed
    scores = predictor.strategy._batch_scores(ct, list(range(min(batch, shape[2]))))
    kept = [int(candidate_channels(s).sum()) for s in scores]
    del scores
    result = {"kept": float(np.mean(kept)), "active": len(predictor.active)}
    forward[0] = 0.0
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        on_cpu = Predictor([ckpt], batch_slices=batch).predict(ct[:, :, :batch])
        result["cpu_agreement"] = float(np.mean(on_cpu == warm))
    start = time.perf_counter()
    labels = predictor.predict(ct)
    if device != "cpu":
        torch.cuda.synchronize()
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    seconds = time.perf_counter() - start
    result.update(seconds=seconds, peak_mb=_rss_mb(), before_mb=before, labels=int(labels.max()))
    result.update(forward=forward[0], estimate_mb=predictor.estimate_bytes(shape) / 2**20)
    queue.put(result)


def run_old_and_new(ckpt, shape, threads, batch, queue) -> None:
    """The old and the new upsampling in one process on the same CT, alternately (best of 2)."""
    import types

    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from ctseg_core.inference.predictor import Predictor

    ct = synthetic_ct(shape)
    predictor = Predictor([ckpt], batch_slices=batch, device="cpu")
    forward = time_forward(predictor)
    strategy = predictor.strategy
    ways = {"new": strategy._to_labels, "old": types.MethodType(old_to_labels, strategy)}
    best = {name: (float("inf"), 0.0) for name in ways}
    labels = {}
    for _ in range(2):
        for name, to_labels in ways.items():
            strategy._to_labels = to_labels
            predictor.predict(ct[:, :, :batch])  # warm-up
            forward[0] = 0.0
            start = time.perf_counter()
            labels[name] = predictor.predict(ct)
            seconds = time.perf_counter() - start
            if seconds < best[name][0]:
                best[name] = (seconds, forward[0])
    queue.put(
        {
            "new": best["new"][0],
            "new_forward": best["new"][1],
            "old": best["old"][0],
            "old_forward": best["old"][1],
            "equal": float(np.mean(labels["new"] == labels["old"])),
        }
    )


def run_naive(ckpt, shape, threads, batch, queue) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    from ctseg_core.data.slices import normalize_hu, resize_batch
    from ctseg_core.models.checkpoint import load_model
    from ctseg_core.models.head import label_scores

    ct = synthetic_ct(shape)
    model, cfg = load_model(ckpt)
    before = _current_mb()
    start = time.perf_counter()
    x_size, y_size, z_size = shape
    scores = np.empty((z_size, 118, x_size, y_size), dtype=np.float32)  # the whole volume's scores
    with torch.inference_mode():
        for z0 in range(0, z_size, batch):
            zs = slice(z0, min(z0 + batch, z_size))
            x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(ct[:, :, zs], 2, 0)))[:, None]
            x = resize_batch(normalize_hu(x, cfg.data.hu_window), cfg.data.target_size)
            s = label_scores(model(x), cfg)
            scores[zs] = F.interpolate(s, size=(x_size, y_size), mode="bilinear").numpy()
    labels = scores.argmax(axis=1).astype(np.uint8)
    seconds = time.perf_counter() - start
    queue.put(
        {"seconds": seconds, "peak_mb": _rss_mb(), "before_mb": before, "labels": int(labels.max())}
    )


def cpu_flags() -> str:
    """The bf16 hardware of this CPU, from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = next((line.split(":", 1)[1].split() for line in handle
                          if line.startswith("flags")), [])  # fmt: skip
    except OSError:
        return "flags unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return ", ".join(found) if found else "no avx512_bf16/amx"


def measure(fn, *args) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    args = (*args[:4], queue, *args[4:])  # (ckpt, shape, threads, batch, queue[, device])
    proc = ctx.Process(target=fn, args=args)
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Exception:  # queue.Empty: the child may have died
            if not proc.is_alive():
                raise RuntimeError(f"{fn.__name__} failed (exit code {proc.exitcode})") from None
    proc.join()
    return result


def line(name, shape, r) -> None:
    per100 = r["seconds"] / shape[2] * 100
    print(f"{name:<28}{' x '.join(map(str, shape)):<18}{per100:>10.2f} s/100 slices"
          f"{r['peak_mb']:>10.0f} MB peak ({r['peak_mb'] - r['before_mb']:.0f} MB above "
          f"the loaded CT + model)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, default=128, help="model input size (128 or 256)")
    parser.add_argument("--size", type=int, default=512, help="in-plane CT size")
    parser.add_argument("--slices", type=int, default=300, help="axial slices of the CT")
    parser.add_argument("--slab", type=int, default=8, help="slices for the naive peer")
    parser.add_argument("--old-slices", type=int, default=48,
                        help="slices for the old-vs-new upsampling comparison (0: skip it)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=8, help="slices per batch (both)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--device", default="cpu", help="also time ctseg on this device (cuda)")
    parser.add_argument("--device-only", action="store_true", help="only the --device run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp), args.target)
        full = (args.size, args.size, args.slices)
        slab = (args.size, args.size, args.slab)
        print(f"seed U-Net [32,64,128,256]+512, 118 outputs, target {args.target}, "
              f"{args.threads} thread(s), batch {args.batch}; CPU: {cpu_flags()}")  # fmt: skip
        if args.device_only:
            r = measure(run_ctseg, ckpt, full, args.threads, args.batch, args.device)
            line(f"ctseg Predictor ({args.device})", full, r)
            print(f"  peak allocated on {args.device}: {r['gpu_peak_mb']:.0f} MB; labels equal "
                  f"to CPU on {100 * r['cpu_agreement']:.3f} % of the first batch's voxels")  # fmt: skip
            return
        ours_full = measure(run_ctseg, ckpt, full, args.threads, args.batch)
        ours_slab = measure(run_ctseg, ckpt, slab, args.threads, args.batch)
        naive_slab = measure(run_naive, ckpt, slab, args.threads, args.batch)
        both = None
        if args.old_slices:
            old_shape = (args.size, args.size, args.old_slices)
            both = measure(run_old_and_new, ckpt, old_shape, args.threads, args.batch)
        on_device = None
        if args.device != "cpu":
            on_device = measure(run_ctseg, ckpt, full, args.threads, args.batch, args.device)

    line("ctseg Predictor", full, ours_full)
    line("ctseg Predictor", slab, ours_slab)
    line("naive whole-volume scores", slab, naive_slab)
    per_slice = (naive_slab["peak_mb"] - naive_slab["before_mb"]) / args.slab
    naive_full = naive_slab["before_mb"] + per_slice * args.slices  # extrapolated, not measured
    print(f"naive on the full CT: ~{naive_full:.0f} MB peak (extrapolated from the slab, "
          f"{per_slice:.0f} MB per slice)")  # fmt: skip
    print(f"memory ratio naive / ctseg on the same {args.slab}-slice slab: "
          f"{naive_slab['peak_mb'] / ours_slab['peak_mb']:.2f}x; "
          f"on the full CT (naive extrapolated): {naive_full / ours_full['peak_mb']:.1f}x")  # fmt: skip
    if on_device:
        line(f"ctseg Predictor ({args.device})", full, on_device)
        print(f"  {args.device} peak allocated {on_device['gpu_peak_mb']:.0f} MB; labels equal to "
              f"CPU on {100 * on_device['cpu_agreement']:.3f} % of the first batch's voxels")  # fmt: skip
    ratio = ours_full["seconds"] / ours_full["forward"]
    print(f"time / forward time on the full CT: {ratio:.2f}x ({ours_full['seconds']:.1f} s, of "
          f"which {ours_full['forward']:.1f} s in the network's forward calls); channels "
          f"that can win per slice: {ours_full['kept']:.1f} of {ours_full['active']}; goal <= 2x: "
          f"{'met' if ratio <= 2 else 'NOT met'}")  # fmt: skip
    print(f"memory estimate (Predictor.estimate_bytes) {ours_full['estimate_mb']:.0f} MB, "
          f"measured peak {ours_full['peak_mb']:.0f} MB (with Python, torch and the model)")  # fmt: skip
    if both:
        n = args.old_slices
        print(f"old vs new upsampling, same process, {n} slices (best of 2): old "
              f"{both['old'] / n * 100:.2f} s/100 slices ({both['old'] / both['old_forward']:.2f}x "
              f"its forward time), new {both['new'] / n * 100:.2f} s/100 slices "
              f"({both['new'] / both['new_forward']:.2f}x); old / new {both['old'] / both['new']:.2f}x;"
              f" labels equal on {100 * both['equal']:.4f} % of the voxels")  # fmt: skip
    goal = ours_full["peak_mb"] < 3 * 1024
    print(f"goal peak < 3 GB on the full CT: {'met' if goal else 'NOT met'} "
          f"({ours_full['peak_mb'] / 1024:.2f} GB)")  # fmt: skip


if __name__ == "__main__":
    main()
