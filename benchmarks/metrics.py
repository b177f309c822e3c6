"""ctseg's metrics against MONAI's on one realistic label pair: time, speed ratio, largest difference.

    python benchmarks/metrics.py            # 512 x 512 x 300, 105 structures (a few minutes)
    python benchmarks/metrics.py --quick    # 256 x 256 x 150, 60 structures

The pair: 105 randomly placed and rotated ellipsoids of organ-like sizes on a 0.8 x 0.8 x 1.5 mm
grid (large ones painted first, small ones over them); the prediction repaints each with its centre
moved by up to 1 voxel per axis, its radii scaled by 0.93..1.07 and its orientation turned a little,
misses two structures and adds one false positive.

MONAI (1.6) needs one call per structure for HD95 and surface Dice and full-volume passes per class
for Dice/IoU, so it is timed on a stratified subset of the structures (small to large) and its
time is extrapolated linearly to all of them; ctseg is timed on all structures, and on the same
subset for a like-for-like figure. Building MONAI's one-hot inputs is not timed. Both run with one CPU thread (``torch.set_num_threads(1)``).
Goals (issue 4): Dice+IoU >= 100x faster than MONAI, HD95+surface Dice >= 10x faster, values
equal to 1e-6 (Dice, IoU, surface Dice) and 1e-3 mm (HD95).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from ctseg_core.metrics import compute_confusion, compute_dice_iou, compute_surface_metrics

SPACING_MM = (0.8, 0.8, 1.5)
TOLERANCE_MM = 3.0


def paint(volume: np.ndarray, label: int, centre, radii, rotation: np.ndarray) -> None:
    """Set the voxels of one rotated ellipsoid (centre, radii in mm) to `label`, in its box only."""
    spacing = np.asarray(SPACING_MM)
    reach = np.ceil(max(radii) / spacing).astype(int) + 1
    centre_vox = np.round(np.asarray(centre) / spacing).astype(int)
    lo = np.maximum(centre_vox - reach, 0)
    hi = np.minimum(centre_vox + reach + 1, volume.shape)
    if np.any(hi <= lo):
        return
    axes = [(np.arange(lo[a], hi[a]) * spacing[a] - centre[a]) for a in range(3)]
    offsets = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (x, y, z, 3) mm
    local = offsets @ rotation  # coordinates in the ellipsoid's own axes
    inside = ((local / np.asarray(radii)) ** 2).sum(-1) <= 1.0
    volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]][inside] = label


def make_pair(shape: tuple[int, int, int], n_labels: int, seed: int = 0):
    """Reference and perturbed prediction uint8 label volumes with structures 1..n_labels."""
    rng = np.random.default_rng(seed)
    extent_mm = np.asarray(shape) * np.asarray(SPACING_MM)
    # Organ-like radii (mm): a few large, many medium, many small (vessels, glands, vertebrae).
    scale = extent_mm.min() / 410.0
    radii = (
        np.concatenate(
            [
                rng.uniform(60, 120, (n_labels // 10, 3)),
                rng.uniform(20, 45, (n_labels * 4 // 10, 3)),
                rng.uniform(4, 15, (n_labels - n_labels // 10 - n_labels * 4 // 10, 3)),
            ]
        )
        * scale
    )
    order = np.argsort(-radii.prod(axis=1))  # large first, small painted over them
    reference = np.zeros(shape, dtype=np.uint8)
    prediction = np.zeros(shape, dtype=np.uint8)
    missed = set(rng.choice(np.arange(1, n_labels + 1), 2, replace=False).tolist())
    for label, index in enumerate(order, start=1):
        centre = rng.uniform(0.15, 0.85, 3) * extent_mm
        rot = Rotation.random(random_state=rng).as_matrix()
        paint(reference, label, centre, radii[index], rot)
        if label in missed:
            continue
        shift = rng.integers(-1, 2, 3) * np.asarray(SPACING_MM)
        turn = Rotation.from_rotvec(rng.normal(0, 0.05, 3)).as_matrix()
        paint(
            prediction, label, centre + shift, radii[index] * rng.uniform(0.93, 1.07, 3), rot @ turn
        )
    # A structure the reference does not have (label n_labels + 1): a false positive.
    paint(prediction, n_labels + 1, extent_mm / 2, np.full(3, 8.0 * scale), np.eye(3))
    return reference, prediction


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def monai_overlap(reference: np.ndarray, prediction: np.ndarray, labels: list[int]):
    """MONAI DiceMetric (num_classes, label maps) and MeanIoU (needs one-hot) on `labels`."""
    from monai.metrics import DiceMetric, MeanIoU

    lut = np.zeros(256, dtype=np.int64)
    lut[labels] = np.arange(1, len(labels) + 1)  # the subset as classes 1..k, the rest background
    y = torch.from_numpy(lut[reference])[None, None]
    y_pred = torch.from_numpy(lut[prediction])[None, None]
    metric = DiceMetric(include_background=False, reduction="none", num_classes=len(labels) + 1)
    dice, dice_s = timed(lambda: metric(y_pred, y)[0].numpy())
    iou, iou_s = [], 0.0
    for label in labels:
        start = time.perf_counter()
        ref_t, pred_t = torch.from_numpy(reference == label), torch.from_numpy(prediction == label)
        one_hot_ref = torch.stack([~ref_t, ref_t])[None]
        one_hot_pred = torch.stack([~pred_t, pred_t])[None]
        iou.append(
            float(MeanIoU(include_background=False, reduction="none")(one_hot_pred, one_hot_ref))
        )
        iou_s += time.perf_counter() - start
    return np.asarray(dice), np.asarray(iou), dice_s, iou_s


def monai_surface(reference: np.ndarray, prediction: np.ndarray, labels: list[int]):
    """MONAI HausdorffDistanceMetric(percentile=95) and SurfaceDiceMetric, one label per call.

    The one-hot inputs are built outside the timing (in MONAI's favour).
    """
    from monai.metrics import HausdorffDistanceMetric, SurfaceDiceMetric

    hd_metric = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
    sd_metric = SurfaceDiceMetric([TOLERANCE_MM], include_background=False, reduction="none")
    hd, sd, hd_s, sd_s = [], [], 0.0, 0.0
    for label in labels:
        ref_t, pred_t = torch.from_numpy(reference == label), torch.from_numpy(prediction == label)
        one_hot_ref = torch.stack([~ref_t, ref_t])[None].float()
        one_hot_pred = torch.stack([~pred_t, pred_t])[None].float()
        value, seconds = timed(hd_metric, one_hot_pred, one_hot_ref, spacing=SPACING_MM)
        hd.append(float(value))
        hd_s += seconds
        value, seconds = timed(sd_metric, one_hot_pred, one_hot_ref, spacing=SPACING_MM)
        sd.append(float(value))
        sd_s += seconds
    return np.asarray(hd), np.asarray(sd), hd_s, sd_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="256 x 256 x 150, 60 structures")
    parser.add_argument("--subset", type=int, default=None, help="structures timed with MONAI")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    shape, n_labels = ((256, 256, 150), 60) if args.quick else ((512, 512, 300), 105)
    n_subset = args.subset or (6 if args.quick else 10)

    (reference, prediction), gen_s = timed(make_pair, shape, n_labels, args.seed)
    num_labels = n_labels + 2
    ref_voxels = np.bincount(reference.ravel(), minlength=num_labels)
    pred_voxels = np.bincount(prediction.ravel(), minlength=num_labels)
    present = [k for k in range(1, num_labels) if ref_voxels[k] and pred_voxels[k]]
    # Stratified by size: every n-th structure of those present in both, small to large.
    by_size = sorted(present, key=lambda k: ref_voxels[k])
    subset = [by_size[i] for i in np.linspace(0, len(by_size) - 1, n_subset).round().astype(int)]
    print(
        f"pair {shape} at {SPACING_MM} mm, made in {gen_s:.1f} s: {len(present)} structures in "
        f"both, {int((ref_voxels[1:] > 0).sum())} in the reference, foreground "
        f"{(reference > 0).mean():.1%}; MONAI subset ({n_subset}): sizes "
        f"{ref_voxels[subset].min()}..{ref_voxels[subset].max()} voxels"
    )

    _, naive_s = timed(
        lambda: np.bincount(reference.ravel().astype(np.int64) * num_labels + prediction.ravel())
    )
    confusion, conf_s = timed(compute_confusion, reference, prediction, num_labels)
    (dice, iou), dice_iou_s = timed(compute_dice_iou, confusion)
    ours_overlap_s = conf_s + dice_iou_s
    m_dice, m_iou, m_dice_s, m_iou_s = monai_overlap(reference, prediction, subset)
    scale = (num_labels - 1) / len(subset)
    monai_overlap_s = (m_dice_s + m_iou_s) * scale

    surface, ours_surface_s = timed(
        compute_surface_metrics,
        reference,
        prediction,
        SPACING_MM,
        tolerance_mm=TOLERANCE_MM,
        num_labels=num_labels,
    )
    sub_surface, ours_sub_surface_s = timed(
        compute_surface_metrics,
        reference,
        prediction,
        SPACING_MM,
        labels=subset,
        tolerance_mm=TOLERANCE_MM,
        num_labels=num_labels,
    )
    m_hd, m_sd, m_hd_s, m_sd_s = monai_surface(reference, prediction, subset)
    monai_surface_s = (m_hd_s + m_sd_s) * scale

    print(f"\nDice + IoU, all {num_labels - 1} labels")
    print(
        f"  ctseg compute_confusion + compute_dice_iou: {ours_overlap_s:8.3f} s "
        f"(plain int64 np.bincount: {naive_s:.2f} s)"
    )
    print(
        f"  MONAI DiceMetric(num_classes) + MeanIoU:    {monai_overlap_s:8.1f} s  EXTRAPOLATED "
        f"from {len(subset)} labels ({m_dice_s:.1f} s Dice + {m_iou_s:.1f} s IoU) x {scale:.1f}"
    )
    print(f"  speed ratio MONAI / ctseg: {monai_overlap_s / ours_overlap_s:8.0f} x   (goal >= 100)")
    print(
        f"  largest |difference| on the subset: Dice {np.abs(dice[subset] - m_dice).max():.2e}, "
        f"IoU {np.abs(iou[subset] - m_iou).max():.2e}"
    )

    print(f"\nHD95 + surface Dice at {TOLERANCE_MM} mm, all {num_labels - 1} labels")
    print(
        f"  ctseg compute_surface_metrics:              {ours_surface_s:8.2f} s "
        f"({ours_surface_s / (num_labels - 1) * 1000:.0f} ms per label)"
    )
    print(
        f"  MONAI HausdorffDistanceMetric + SurfaceDiceMetric: {monai_surface_s:8.1f} s  "
        f"EXTRAPOLATED from {len(subset)} labels ({m_hd_s:.1f} s HD95 + {m_sd_s:.1f} s NSD) "
        f"x {scale:.1f}"
    )
    print(f"  speed ratio MONAI / ctseg: {monai_surface_s / ours_surface_s:8.1f} x   (goal >= 10)")
    print(
        f"  same {len(subset)} labels only: ctseg {ours_sub_surface_s:.2f} s vs MONAI "
        f"{m_hd_s + m_sd_s:.1f} s -> {(m_hd_s + m_sd_s) / ours_sub_surface_s:.1f} x"
    )
    hd_diff = np.abs(surface.hd95_mm[subset] - m_hd).max()
    sd_diff = np.abs(surface.surface_dice[subset] - m_sd).max()
    print(
        f"  largest |difference| on the subset: HD95 {hd_diff:.2e} mm, surface Dice {sd_diff:.2e}"
    )
    same = np.array_equal(sub_surface.hd95_mm[subset], surface.hd95_mm[subset])
    print(f"  subset run equals the all-label run: {same}")
    missed = [k for k in range(1, num_labels) if ref_voxels[k] and not pred_voxels[k]]
    false_pos = [k for k in range(1, num_labels) if pred_voxels[k] and not ref_voxels[k]]
    print(
        f"\nconvention: missed {missed} -> Dice {dice[missed].tolist()}, HD95 "
        f"{surface.hd95_mm[missed].tolist()}; false positive {false_pos} -> Dice "
        f"{dice[false_pos].tolist()}, HD95 {surface.hd95_mm[false_pos].tolist()}"
    )
    print(
        f"mean Dice {np.nanmean(dice[1:]):.3f}, mean HD95 (finite) "
        f"{np.nanmean(np.where(np.isinf(surface.hd95_mm), np.nan, surface.hd95_mm)[1:]):.2f} mm,"
        f" mean surface Dice {np.nanmean(surface.surface_dice[1:]):.3f}"
    )


if __name__ == "__main__":
    main()
