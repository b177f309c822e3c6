"""Phantom generation time: 12 subjects of about 160 x 160 x 64 against the 20 s goal (2 cores).

Prints the wall time of ``make_phantom_dataset`` and the ratio goal / measured (> 1 is inside
the goal). Peer measured in the same run, for the mask-writing part: writing one subject's 117
masks with ``nib.save`` (nibabel's own .nii.gz writer, one image per mask) against the phantom's
encoder (one nibabel header, raw voxels, shared bytes for empty masks); the files are checked
to load to the same voxels.

    python benchmarks/phantom_generation.py [--subjects 12] [--workers 2] [--size 160 160 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ctseg_core.data.phantom.dataset import (
    _mask_writer,
    make_phantom_dataset,
    plan_dataset,
    render_subject,
)
from ctseg_core.labels import STRUCTURES

GOAL_S = 20.0


def _write_masks_nibabel(labels: np.ndarray, affine: np.ndarray, folder: Path) -> None:
    for value, name in enumerate(STRUCTURES, start=1):
        nib.save(
            nib.Nifti1Image((labels == value).astype(np.uint8), affine), folder / f"{name}.nii.gz"
        )


def _write_masks_phantom(labels: np.ndarray, affine: np.ndarray, folder: Path) -> None:
    encode = _mask_writer(labels.shape, affine)
    present = set(np.unique(labels).tolist())
    empty = encode(np.zeros(labels.shape, np.uint8))
    for value, name in enumerate(STRUCTURES, start=1):
        data = encode(labels == value) if value in present else empty
        (folder / f"{name}.nii.gz").write_bytes(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=3, default=(160, 160, 64))
    args = parser.parse_args()
    shape = tuple(args.size)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cores} cores available, load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ids = make_phantom_dataset(Path(tmp) / "demo", args.subjects, 0, shape, args.workers)
        total = time.perf_counter() - start
    print(
        f"make_phantom_dataset: {len(ids)} subjects of ~{shape} with {args.workers} workers "
        f"in {total:.1f} s; goal {GOAL_S:.0f} s -> ratio goal/measured {GOAL_S / total:.2f}x"
    )

    spec = plan_dataset(1, 0, shape)[0]
    start = time.perf_counter()
    _, labels, affine = render_subject(spec)
    render_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "nibabel", Path(tmp) / "phantom"
        a.mkdir(), b.mkdir()
        start = time.perf_counter()
        _write_masks_nibabel(labels, affine, a)
        peer_s = time.perf_counter() - start
        start = time.perf_counter()
        _write_masks_phantom(labels, affine, b)
        ours_s = time.perf_counter() - start
        for name in ("liver", "aorta", "brain"):
            x = np.asarray(nib.load(a / f"{name}.nii.gz").dataobj)
            y = np.asarray(nib.load(b / f"{name}.nii.gz").dataobj)
            assert np.array_equal(x, y), name
    print(f"one subject {labels.shape}: render {render_s:.2f} s (one core)")
    print(
        f"117 masks: nib.save {peer_s:.2f} s, phantom encoder {ours_s:.2f} s "
        f"-> {peer_s / ours_s:.1f}x faster than nibabel's writer"
    )


if __name__ == "__main__":
    main()
