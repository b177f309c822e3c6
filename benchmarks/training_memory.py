"""Training memory: peak anonymous memory of a run on a small dataset vs one four times larger.

Peer: the same run (the phantom_demo model, 128 x 128, batch 4, the same number of steps and
validation slices) on a phantom of ``--subjects`` subjects, measured in the same invocation; the
large run has 4x the subjects. Each run is a fresh process, so the figures are its own. Memory is
the process's anonymous resident memory (``RssAnon`` in /proc/self/status: what it allocated),
sampled at every progress report (after each step and epoch: what is held between steps; the
activations inside a step depend on the batch alone); the memory-mapped cache is not counted,
since its pages are the kernel's page cache, shared and reclaimable. Goal (issue 3): peak memory
bounded by the batch, not by the dataset size: a ratio near 1. On 2 cores: 550 MB with 149
training slices, 570 MB with 808 (1.04).

    python benchmarks/training_memory.py [--subjects 4] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path


def anon_mb() -> float:
    """RssAnon of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def child(root: str, cache: str, steps: int) -> None:
    """One run; prints {"peak_anon_mb", "slices"} as JSON."""
    import torch

    from ctseg_core.data.slices import SliceDataset
    from ctseg_core.training.presets import phantom_demo
    from ctseg_core.training.trainer import Trainer

    torch.set_num_threads(2)
    config = phantom_demo(root)
    config.data.cache_dir = cache
    config.data.val_slices_per_subject = 16
    config.train.epochs, config.train.steps_per_epoch = 2, steps // 2
    config.train.sample_figure = False
    peak = [anon_mb()]
    trainer = Trainer(
        config,
        checkpoints_root=Path(cache).parent / "runs",
        callbacks=[lambda p: peak.append(anon_mb())],
    )
    trainer.open_run()
    trainer.run()
    peak_mb = max(peak)  # before the dataset below is opened again to count its slices
    slices = len(SliceDataset(config, config.data.train_split, build=False))
    print(json.dumps({"peak_anon_mb": peak_mb, "slices": slices}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--child", nargs=2, metavar=("ROOT", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child, args.steps)
        return
    from ctseg_core.data.phantom.dataset import make_phantom_dataset

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.subjects, 4 * args.subjects):
            root, cache = Path(tmp) / f"phantom{n}", Path(tmp) / f"cache{n}"
            make_phantom_dataset(root, n_subjects=n, seed=0)
            cmd = [
                sys.executable,
                __file__,
                "--steps",
                str(args.steps),
                "--child",
                str(root),
                str(cache),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            rows.append((n, json.loads(out.strip().splitlines()[-1])))
    print(f"{'subjects':>9}{'train slices':>14}{'peak anon MB':>14}")
    for n, r in rows:
        print(f"{n:>9}{r['slices']:>14}{r['peak_anon_mb']:>14.0f}")
    small, large = rows[0][1]["peak_anon_mb"], rows[1][1]["peak_anon_mb"]
    print(
        f"large / small: {large / small:.2f} for "
        f"{rows[1][1]['slices'] / rows[0][1]['slices']:.1f}x "
        "the training slices (goal: near 1)"
    )


if __name__ == "__main__":
    main()
