"""Memory of one training step: ``training.memory.estimate_training_bytes`` vs the real peak.

Peer: two real training steps (forward, loss, backward, clipping, optimizer step) of the same
configuration in a fresh process, on the CPU, measured as its peak resident memory (VmHWM)
minus its resident memory before the model was built. Prints estimate, measurement and their ratio for a
small 3D patch, the phantom_3d network at a mid-size patch and the 2D phantom_demo.

    python benchmarks/step_memory.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

CASES = {
    "phantom_3d widths, 32 x 32 x 32, batch 1": (
        "phantom_3d",
        {"patch_size": [32, 32, 32], "batch_size": 1},
    ),
    "phantom_3d, 64 x 64 x 32, batch 2": (
        "phantom_3d",
        {"patch_size": [64, 64, 32], "batch_size": 2},
    ),
    "phantom_demo (2D), 128 x 128, batch 4": ("phantom_demo", {}),
    "phantom_3d, 96 x 96 x 64, batch 2": (
        "phantom_3d",
        {"patch_size": [96, 96, 64], "batch_size": 2},
    ),
    "phantom_3d itself (48 x 48 x 32, batch 1)": ("phantom_3d", {}),
}


def rss_bytes() -> int:
    """The resident memory of this process now (Linux)."""
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """The peak resident memory of this process image (VmHWM; Linux). Not ``ru_maxrss``: after
    fork and exec that keeps the parent's peak (a test runner's gigabyte)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def measure(preset_name: str, data: dict, steps: int = 2) -> int:
    """Peak bytes of ``steps`` training steps above the memory before the model (this process)."""
    import torch

    from ctseg_core.device import autocast_context, keep_freed_cpu_memory, resolve_amp
    from ctseg_core.models import build_model
    from ctseg_core.training.losses import build_loss
    from ctseg_core.training.memory import sample_shape
    from ctseg_core.training.optim import build_optimizer
    from ctseg_core.training.presets import preset, user_config
    from ctseg_core.training.step import backward_step

    torch.set_num_threads(2)
    keep_freed_cpu_memory()  # as training does
    config = user_config(preset(preset_name), {("data", k): v for k, v in data.items()})
    config.sync_channels()
    device = torch.device("cpu")
    amp = resolve_amp(config.train.amp, device)
    shape = sample_shape(config)
    b = config.data.batch_size
    before = rss_bytes()
    net = build_model(config.model).train()
    optimizer = build_optimizer(net, config.train)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss_fn = build_loss(config.train.loss)
    for _ in range(steps):
        image = torch.randn(b, int(config.model.in_channels), *shape)
        classes = torch.randint(0, int(config.model.out_channels), (b, *shape))
        backward_step(net, image, classes, loss_fn, optimizer, scaler,
                      autocast_context(device, amp), config.train.grad_clip)  # fmt: skip
        optimizer.step()
    return peak_rss_bytes() - before


def measure_in_subprocess(preset_name: str, data: dict) -> int:
    """``measure`` in a fresh Python process (its own peak), returned in bytes."""
    import os

    repo = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")])),
    }
    out = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps([preset_name, data])], env=env,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return int(out.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        print(measure(*json.loads(sys.argv[2])))
        return
    from ctseg_core.training.memory import estimate_training_bytes
    from ctseg_core.training.presets import preset, user_config

    print(f"{'configuration':<42}{'estimate MB':>13}{'measured MB':>13}{'ratio':>7}")
    for title, (name, data) in CASES.items():
        config = user_config(preset(name), {("data", k): v for k, v in data.items()})
        estimate = estimate_training_bytes(config, "cpu")
        measured = measure_in_subprocess(name, data)
        print(f"{title:<42}{estimate / 1e6:>13.0f}{measured / 1e6:>13.0f}"
              f"{estimate / measured:>7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
