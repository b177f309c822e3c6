"""Random axial slices with labels: the preprocessing cache against nibabel on the raw files.

Peer ("straightforward way"): for each slice, open ct.nii.gz and all 117 mask .nii.gz files with
nibabel and read that slice from each. Both sides return the same (X, Y) int16 CT slice and
(X, Y) uint8 label slice in canonical orientation; the first slices are checked to be equal.

    python benchmarks/data_loading.py [--data ../shared/data/totalseg_sample] [--subject s0000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from ctseg_core.data import open_cached
from ctseg_core.data.subject import mask_files
from ctseg_core.labels import LABEL_OF

REPO = Path(__file__).resolve().parents[1]


def naive_slice(subject_dir: Path, z: int) -> tuple[np.ndarray, np.ndarray]:
    """Open the CT and every mask with nibabel for one canonical axial slice."""
    ct_img = nib.as_closest_canonical(nib.load(subject_dir / "ct.nii.gz"))
    ct = np.asarray(ct_img.dataobj[:, :, z]).astype(np.int16)
    labels = np.zeros(ct.shape, np.uint8)
    for name, path in sorted(mask_files(subject_dir)[0].items(), key=lambda kv: LABEL_OF[kv[0]]):
        mask = np.asarray(nib.as_closest_canonical(nib.load(path)).dataobj[:, :, z])
        labels[mask > 0] = LABEL_OF[name]
    return ct, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/totalseg_sample")
    parser.add_argument("--subject", default="s0000")
    parser.add_argument("--naive-slices", type=int, default=6)
    parser.add_argument("--cache-slices", type=int, default=2000)
    args = parser.parse_args()
    subject_dir = args.data / args.subject
    n_masks = len(mask_files(subject_dir)[0])
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as cache_dir:
        t0 = time.perf_counter()
        entry = open_cached(args.data, args.subject, cache_dir)
        build_s = time.perf_counter() - t0
        zs = rng.integers(0, entry.num_slices, max(args.naive_slices, args.cache_slices))

        t0 = time.perf_counter()
        for z in zs[: args.naive_slices]:
            naive_ct, naive_labels = naive_slice(subject_dir, int(z))
        naive_rate = args.naive_slices / (time.perf_counter() - t0)

        entry = open_cached(args.data, args.subject, cache_dir, build=False)  # fresh memmaps
        t0 = time.perf_counter()
        for z in zs[: args.cache_slices]:
            np.array(entry.ct[z]), np.array(entry.labels[z])
        cache_rate = args.cache_slices / (time.perf_counter() - t0)

        z = int(zs[args.naive_slices - 1])
        assert np.array_equal(naive_ct, entry.ct[z]) and np.array_equal(
            naive_labels, entry.labels[z]
        )
    print(f"subject {args.subject}: {entry.shape_xyz} voxels, {n_masks} mask files")
    print(f"cache build (once): {build_s:.2f} s")
    print(f"nibabel, ct + {n_masks} masks per slice: {naive_rate:8.2f} slices/s")
    print(f"ctseg cache (memmap):                {cache_rate:8.0f} slices/s")
    print(f"ratio cache / nibabel: {cache_rate / naive_rate:.0f}x (goal >= 100x)")


if __name__ == "__main__":
    main()
