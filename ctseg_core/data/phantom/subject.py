"""One phantom subject: what is drawn for it (``SubjectSpec``) and its rendering.

``plan_dataset`` fixes per-subject choices (study region = z coverage, on-disk orientation,
contrast phase, age, sex, split); ``render_subject`` draws the rest from (seed, index): grid size
and spacing, body size, position, in-plane rotation, smooth deformation, organ jitter, fat
and muscle thickness, then paints the anatomy (``trunk``, ``skeleton``) and scans it:
partial-volume blur (Gaussian, sigma 0.7 voxel) and Gaussian noise (10-20 HU), int16 HU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .body import Z_RANGE_MM, Body, body_half_axes, paint_body_wall, paint_table
from .paint import PHASES, Painter, tissue_table
from .shapes import BodyGrid, displacement, smooth_noise
from .skeleton import paint_muscles, paint_pelvic_bones, paint_ribs, paint_spine
from .trunk import (
    paint_bowel,
    paint_pelvis,
    paint_thorax,
    paint_upper_abdomen,
    paint_vessels,
)

ORIENTATIONS = ("RAS", "LAS", "LPS")
#: body-frame z (mm) range of the centre of the covered slab, per study region
REGIONS = {  # in cycle order: any three consecutive regions span thorax to pelvis
    "abdomen": (60.0, 100.0),
    "thorax": (200.0, 250.0),
    "pelvis": (-85.0, -45.0),
    "thorax-abdomen": (115.0, 150.0),
    "abdomen-pelvis": (10.0, 45.0),
}
SLICE_SPACINGS_MM = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


@dataclass(frozen=True)
class SubjectSpec:
    """What is drawn at dataset level for one subject; the rest comes from (seed, index)."""

    subject_id: str
    seed: int
    index: int
    nominal_shape: tuple[int, int, int]
    region: str
    orientation: str
    phase: str
    age: int
    gender: str
    institute: str
    split: str


def plan_dataset(n_subjects: int, seed: int, shape: tuple[int, int, int]) -> list[SubjectSpec]:
    """Subject specs. Subject i is the same whatever n_subjects is (only splits depend on n).

    Regions, orientations and phases cycle from seeded offsets, so even two or three subjects
    differ in coverage, orientation and contrast. Splits ~70/15/15 by subject: at least one val
    and one test subject from 3 subjects on; 2 subjects -> train + val; 1 -> train.
    """
    rng = np.random.default_rng([seed, 7919])
    regions = list(REGIONS)
    r_off, o_off, p_off = (int(v) for v in rng.integers(0, [len(regions), 3, 3]))
    n_test = max(1, round(0.15 * n_subjects)) if n_subjects >= 3 else 0
    n_val = max(1, round(0.15 * n_subjects)) if n_subjects >= 2 else 0
    splits = ["train"] * (n_subjects - n_test - n_val) + ["val"] * n_val + ["test"] * n_test
    splits = [splits[k] for k in np.random.default_rng([seed, 7920]).permutation(n_subjects)]
    specs = []
    for i in range(n_subjects):
        meta = np.random.default_rng([seed, i, 0])
        specs.append(
            SubjectSpec(
                subject_id=f"s{i:04d}",
                seed=seed,
                index=i,
                nominal_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
                region=regions[(i + r_off) % len(regions)],
                orientation=ORIENTATIONS[(i + o_off) % len(ORIENTATIONS)],
                phase=PHASES[(i + p_off) % len(PHASES)],
                age=int(meta.integers(18, 90)),
                gender=str(meta.choice(["m", "f"])),
                institute=f"phantom-{'ABC'[int(meta.integers(0, 3))]}",
                split=splits[i],
            )
        )
    return specs


def render_subject(spec: SubjectSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ct int16 HU, labels uint8 0..117, affine (4, 4)) on the subject's canonical RAS grid."""
    rng = np.random.default_rng([spec.seed, spec.index, 1])
    nom = spec.nominal_shape
    f_xy = rng.uniform(0.875, 1.125)
    nx, ny = max(16, round(nom[0] * f_xy)), max(16, round(nom[1] * f_xy))
    nz = max(8, round(nom[2] * rng.uniform(0.8, 1.25)))
    scale = rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05, 3)
    fat_mm, wall_mm = rng.uniform(5, 22), rng.uniform(5, 9)
    sp_z = float(rng.choice(SLICE_SPACINGS_MM))
    cover = nz * sp_z / scale[2]  # body-frame mm
    lo, hi = REGIONS[spec.region]
    zmin, zmax = Z_RANGE_MM
    if cover >= zmax - zmin:
        z_mid = 0.5 * (zmin + zmax)
    else:
        z_mid = float(np.clip(rng.uniform(lo, hi), zmin + cover / 2, zmax - cover / 2))
    a, b = body_half_axes(np.linspace(z_mid - cover / 2, z_mid + cover / 2, 64))
    half_w = (float(a.max()) + fat_mm) * scale[0]  # world mm, the field of view must hold it
    half_d = (float(b.max()) + fat_mm) * scale[1]
    sp_xy = round(2 * max(half_w, half_d * nx / ny) * rng.uniform(1.06, 1.2) / nx, 4)
    origin = np.array(
        [-(nx - 1) / 2 * sp_xy, -(ny - 1) / 2 * sp_xy, round(rng.uniform(-900, -300))]
    )
    room = np.maximum([nx * sp_xy / 2 - half_w, ny * sp_xy / 2 - half_d], 0) * 0.5
    centre = np.array(
        [
            rng.uniform(-room[0], room[0]),
            rng.uniform(-room[1], room[1]),
            origin[2] + (nz - 1) * sp_z / 2 - z_mid * scale[2],
        ]
    )
    spacing = np.array([sp_xy, sp_xy, sp_z])
    angle = np.deg2rad(rng.uniform(-8, 8))
    axes = [origin[i] + np.arange(n) * spacing[i] for i, n in enumerate((nx, ny, nz))]
    amp = rng.uniform(2.0, 5.0)
    disp = displacement(rng, axes, amp, terms=2)
    c, s = np.cos(angle), np.sin(angle)
    dxw, dyw = (axes[0] - centre[0])[:, None], (axes[1] - centre[1])[None, :]
    shape = (nx, ny, nz)
    grid = BodyGrid(
        x=(((c * dxw + s * dyw) / scale[0])[:, :, None] + disp[0]).astype(np.float32),
        y=(((-s * dxw + c * dyw) / scale[1])[:, :, None] + disp[1]).astype(np.float32),
        z=(((axes[2] - centre[2]) / scale[2])[None, None, :] + disp[2]).astype(np.float32),
        z_lin=(axes[2] - centre[2]) / scale[2],
        texture=smooth_noise(rng, shape, 14.0 / spacing),
        origin_mm=origin,
        spacing_mm=spacing,
        centre_mm=centre,
        scale=scale,
        angle_rad=float(angle),
        max_disp_mm=float(amp * np.sqrt(2)),
    )
    fine = smooth_noise(rng, shape, np.maximum(2.5 / spacing, 2.0))
    body = Body(
        painter=Painter(grid, fine),
        hu=tissue_table(rng, spec.phase, spec.age, oral_contrast=rng.random() < 0.25),
        rng=rng,
        fat_mm=fat_mm,
        wall_mm=wall_mm,
        dome_shift_mm=rng.uniform(-10, 10),
        male=spec.gender == "m",
    )
    for paint in (
        paint_body_wall,
        paint_bowel,
        paint_thorax,
        paint_upper_abdomen,
        paint_pelvis,
        paint_vessels,
        paint_muscles,
        paint_spine,
        paint_pelvic_bones,
        paint_ribs,
    ):
        paint(body)
    paint_table(body, rng)
    ct = _scan(body.painter.hu, rng)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = origin
    return ct, body.painter.labels, affine


def _scan(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partial-volume blur (Gaussian, sigma 0.7 voxel), quantum noise (10-20 HU), int16 HU."""
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(hu, sigma=0.7, mode="nearest", truncate=3.0)
    out += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(rng.uniform(10, 20))
    np.rint(out, out=out)
    return np.clip(out, -1024, 3071).astype(np.int16)
