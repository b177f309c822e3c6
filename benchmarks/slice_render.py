"""One slice-slider step: read + window + overlay + PNG encode of a 512 x 512 slice, against
matplotlib (the notebook way: imshow of the windowed CT, imshow of an RGBA label overlay with
alpha, savefig to PNG).

    python benchmarks/slice_render.py [--data ../shared/data/totalseg_sample] [--subject s0001]

Two slices: the real subject's middle axial slice (memmap read from the preprocessing cache, built
in a temporary folder first) and a synthetic 512 x 512 slice with 40 labels. Both sides start
from the same (Z, X, Y) arrays and produce a PNG of the same picture (CT in the soft-tissue
window, labels at alpha 0.5); matplotlib's figure is sized to 512 x 512 pixels, and the two
decoded PNGs are compared pixel by pixel. Memmap pages are warm after the first step, as when
scrolling. Goal (issue 5):
under 100 ms server time per slider step.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np

from ctseg_core.data import open_cached
from ctseg_core.labels import colour_lut
from ctseg_core.viz.slices import (
    WINDOW_PRESETS,
    extract_plane,
    overlay_rgb,
    to_png_bytes,
    window_to_uint8,
)

REPO = Path(__file__).resolve().parents[1]


def ours(ct_zxy, labels_zxy, z, level, width, mode="fill", compress_level=1):
    gray = window_to_uint8(extract_plane(ct_zxy, "axial", z), level, width)
    rgb = overlay_rgb(gray, extract_plane(labels_zxy, "axial", z), alpha=0.5, mode=mode)
    return to_png_bytes(rgb, compress_level)


def matplotlib_peer(ct_zxy, labels_zxy, z, level, width):
    """The notebook way: two imshow layers (gray CT, RGBA labels with alpha), savefig PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct = np.asarray(ct_zxy[z]).T[::-1, ::-1]
    labels = np.asarray(labels_zxy[z]).T[::-1, ::-1]
    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    rgba[..., :3] = colour_lut()[labels] / 255.0
    rgba[..., 3] = np.where(labels > 0, 0.5, 0.0)
    fig = plt.figure(figsize=(5.12, 5.12), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(ct, cmap="gray", vmin=level - width / 2, vmax=level + width / 2)
    ax.imshow(rgba, interpolation="nearest")
    ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def timed(fn, repeats):
    fn()  # warm-up (imports, first-touch of the memmap pages)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - t0) / repeats, out


def synthetic(n_labels=40, seed=0):
    """(Z, X, Y) = (3, 512, 512): a body ellipse of soft tissue with 40 ellipse "organs"."""
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(512), np.arange(512), indexing="ij")
    ct = np.full((512, 512), -1000, np.int16)
    body = ((x - 256) / 230) ** 2 + ((y - 256) / 180) ** 2 <= 1
    ct[body] = rng.normal(40, 20, body.sum()).astype(np.int16)
    labels = np.zeros((512, 512), np.uint8)
    for value in rng.choice(np.arange(1, 118), n_labels, replace=False):
        cx, cy = rng.integers(80, 432, 2)
        rx, ry = rng.integers(8, 60, 2)
        labels[(((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1) & body] = value
    return np.stack([ct] * 3), np.stack([labels] * 3)


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def report(name, ct_zxy, labels_zxy, z, repeats):
    level, width = WINDOW_PRESETS["soft tissue"]
    n_labels = len(np.unique(labels_zxy[z])) - 1
    print(f"\n{name}: {ct_zxy.shape[1]} x {ct_zxy.shape[2]} slice, {n_labels} labels in it")
    t_fill, png = timed(lambda: ours(ct_zxy, labels_zxy, z, level, width), repeats)
    t_contour, _ = timed(lambda: ours(ct_zxy, labels_zxy, z, level, width, "contour"), repeats)
    t_png6, _ = timed(lambda: ours(ct_zxy, labels_zxy, z, level, width, compress_level=6), repeats)
    gray = window_to_uint8(extract_plane(ct_zxy, "axial", z), level, width)
    plane = extract_plane(labels_zxy, "axial", z)
    t_overlay, rgb = timed(lambda: overlay_rgb(gray, plane, alpha=0.5), repeats)
    t_encode, _ = timed(lambda: to_png_bytes(rgb), repeats)
    t_peer, peer_png = timed(lambda: matplotlib_peer(ct_zxy, labels_zxy, z, level, width), 5)
    print(f"  ctseg fill    (read+window+overlay+PNG lvl1): {t_fill * 1e3:7.1f} ms  {len(png)} B")
    print(f"  ctseg contour (read+window+overlay+PNG lvl1): {t_contour * 1e3:7.1f} ms")
    print(f"  ctseg fill with PNG level 6:                  {t_png6 * 1e3:7.1f} ms")
    print(f"    of which overlay {t_overlay * 1e3:.1f} ms, PNG encode {t_encode * 1e3:.1f} ms")
    print(
        f"  matplotlib imshow x2 + savefig PNG:           {t_peer * 1e3:7.1f} ms  {len(peer_png)} B"
    )
    diff = np.abs(_decode(png) - _decode(peer_png)).max()
    print(f"  same picture: largest pixel difference {diff} gray levels")
    print(f"  ratio matplotlib / ctseg: {t_peer / t_fill:.1f}x; goal < 100 ms: "
          f"{'met' if t_fill < 0.1 else 'NOT met'}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared/data/totalseg_sample")
    parser.add_argument("--subject", default="s0001")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache_dir:
        if (args.data / args.subject).is_dir():
            entry = open_cached(args.data, args.subject, cache_dir)
            ct, labels = entry.ct, entry.labels
            report(f"{args.subject} (memmap)", ct, labels, ct.shape[0] // 2, args.repeats)
        else:
            print(f"{args.data / args.subject} not found: real slice skipped")
    ct, labels = synthetic()
    report("synthetic, 40 labels", ct, labels, 1, args.repeats)


if __name__ == "__main__":
    main()
