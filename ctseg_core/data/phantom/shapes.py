"""Implicit shapes for the synthetic phantom, evaluated on a deformed body-frame grid in mm.

The phantom is drawn in a *body frame*: x toward the patient's right, y anterior, z superior
(RAS+, as nibabel's world space), origin on the midline at the top of the sacrum, in mm of a
standard-sized body. ``BodyGrid`` maps each voxel of the subject's canonical RAS grid into that
frame through the subject's scale, in-plane rotation, position and a smooth deformation field.

Every shape returns ``(box, q)``: ``box`` a tuple of slices into the volume that surely holds the
shape, ``q`` a float32 array over that box with q < 1 inside, q = 1 on the surface and q growing
outward (a normalised radius). Shells (cortical bone, organ walls) are ``q >= q_shell``.
Working on boxes keeps each shape's cost proportional to its own size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Box = tuple[slice, slice, slice]
Vec3 = Sequence[float]


@dataclass
class BodyGrid:
    """Body-frame coordinates (mm) of every voxel of a canonical RAS grid, shape (nx, ny, nz).

    ``world = centre + Rz(angle) @ (scale * (body - displacement))`` for voxel centres
    ``world = origin + index * spacing``. ``max_disp_mm`` bounds |displacement| (body mm).
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    z_lin: np.ndarray  # (nz,) body-frame height of each slice before the deformation
    texture: np.ndarray  # smooth zero-mean unit-variance noise, same shape
    origin_mm: np.ndarray
    spacing_mm: np.ndarray
    centre_mm: np.ndarray
    scale: np.ndarray
    angle_rad: float
    max_disp_mm: float

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.x.shape

    def box(self, lo: Vec3, hi: Vec3) -> Box | None:
        """Index slices that hold every voxel whose body coordinates fall in [lo, hi] (or None)."""
        pad = self.max_disp_mm + 1.0
        lo_b, hi_b = np.asarray(lo, float) - pad, np.asarray(hi, float) + pad
        corners = np.array(np.meshgrid(*zip(lo_b, hi_b, strict=True), indexing="ij")).reshape(3, -1)
        c, s = np.cos(self.angle_rad), np.sin(self.angle_rad)
        scaled = corners * self.scale[:, None]
        world = (
            np.stack([c * scaled[0] - s * scaled[1], s * scaled[0] + c * scaled[1], scaled[2]])
            + self.centre_mm[:, None]
        )
        index = (world - self.origin_mm[:, None]) / self.spacing_mm[:, None]
        start = np.maximum(np.floor(index.min(axis=1)).astype(int) - 1, 0)
        stop = np.minimum(np.ceil(index.max(axis=1)).astype(int) + 2, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))

    def coords(self, box: Box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[box], self.y[box], self.z[box]


def rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix (3, 3): yaw about z (in-plane), pitch about x (sagittal), roll about y."""
    a, b, g = np.deg2rad([yaw_deg, pitch_deg, roll_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(g), 0, np.sin(g)], [0, 1, 0], [-np.sin(g), 0, np.cos(g)]])
    return rz @ rx @ ry


def ellipsoid(grid: BodyGrid, centre: Vec3, radii: Vec3, rot: np.ndarray | None = None):
    """Ellipsoid with semi-axes ``radii`` (mm), optionally rotated (axes = columns of ``rot``)."""
    r_max = float(max(radii))
    centre = np.asarray(centre, float)
    box = grid.box(centre - r_max, centre + r_max)
    if box is None:
        return None, None
    x, y, z = grid.coords(box)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    if rot is not None:
        dx, dy, dz = (
            rot[0, 0] * dx + rot[1, 0] * dy + rot[2, 0] * dz,
            rot[0, 1] * dx + rot[1, 1] * dy + rot[2, 1] * dz,
            rot[0, 2] * dx + rot[1, 2] * dy + rot[2, 2] * dz,
        )
    q2 = (dx / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dz / radii[2]) ** 2
    return box, np.sqrt(q2, dtype=np.float32)


def rounded_cylinder(grid: BodyGrid, centre: Vec3, radii: Vec3, power: float = 4.0):
    """Cylinder along z, elliptic section ``radii[:2]``, half-height ``radii[2]``, soft edges."""
    centre = np.asarray(centre, float)
    box = grid.box(centre - np.asarray(radii), centre + np.asarray(radii))
    if box is None:
        return None, None
    x, y, z = grid.coords(box)
    r_xy = np.sqrt(((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2)
    q = (r_xy**power + np.abs((z - centre[2]) / radii[2]) ** power) ** (1.0 / power)
    return box, q.astype(np.float32, copy=False)


def capsule(
    grid: BodyGrid, a: Vec3, b: Vec3, r_a: float, r_b: float | None = None, z_stretch: float = 1.0
):
    """Segment a-b swept by a sphere whose radius goes linearly from r_a to r_b (mm).

    ``z_stretch`` > 1 elongates the section along z (a lamina or pedicle taller than wide).
    """
    r_b = r_a if r_b is None else r_b
    a, b = np.asarray(a, float), np.asarray(b, float)
    r_max = max(r_a, r_b)
    reach = np.array([r_max, r_max, r_max * z_stretch])
    box = grid.box(np.minimum(a, b) - reach, np.maximum(a, b) + reach)
    if box is None:
        return None, None
    x, y, z = grid.coords(box)
    d = (b - a) * np.array([1.0, 1.0, 1.0 / z_stretch])
    px, py, pz = x - a[0], y - a[1], (z - a[2]) / z_stretch
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist = np.sqrt((px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2)
    return box, (dist / (r_a + (r_b - r_a) * t)).astype(np.float32, copy=False)


def chain(grid: BodyGrid, points: Sequence[Vec3], radii: Sequence[float], z_stretch: float = 1.0):
    """A tube through ``points`` with radius ``radii[i]`` at point i: one capsule per segment."""
    return [
        capsule(grid, points[i], points[i + 1], radii[i], radii[i + 1], z_stretch)
        for i in range(len(points) - 1)
    ]


def union(parts):
    """One ``(box, q)`` for several shapes (q = the minimum), so a hollow organ built of parts
    gets one wall around the whole rather than walls between its parts."""
    parts = [(b, q) for b, q in parts if b is not None]
    if not parts:
        return None, None
    start = [min(b[i].start for b, _ in parts) for i in range(3)]
    stop = [max(b[i].stop for b, _ in parts) for i in range(3)]
    q_all = np.full([e - s for s, e in zip(start, stop, strict=True)], np.inf, np.float32)
    for b, q in parts:
        sub = tuple(slice(b[i].start - start[i], b[i].stop - start[i]) for i in range(3))
        np.minimum(q_all[sub], q, out=q_all[sub])
    return tuple(slice(s, e) for s, e in zip(start, stop, strict=True)), q_all


def smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int, int], cell_vox: Vec3
) -> np.ndarray:
    """Zero-mean, unit-variance smooth noise (float32, ``shape``), features ~``cell_vox`` voxels.

    Coarse white noise, upsampled trilinearly one axis at a time (three small matrix products,
    much cheaper than a 3D interpolation).
    """
    field = rng.standard_normal(
        [max(2, int(np.ceil(n / c)) + 1) for n, c in zip(shape, cell_vox, strict=True)]
    ).astype(np.float32)
    w0, w1, w2 = (_linear_weights(field.shape[i], n) for i, n in enumerate(shape))
    m0, m1, m2 = field.shape
    field = (w0 @ field.reshape(m0, m1 * m2)).reshape(shape[0], m1, m2)
    field = np.matmul(w1, field)  # (ny, m1) @ (nx, m1, m2) -> (nx, ny, m2)
    field = field @ w2.T
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


def _linear_weights(m: int, n: int) -> np.ndarray:
    """(n, m) float32 matrix resampling m samples linearly onto n, ends aligned."""
    pos = np.linspace(0, m - 1, n)
    lo = np.minimum(pos.astype(int), m - 2)
    frac = (pos - lo).astype(np.float32)
    weights = np.zeros((n, m), np.float32)
    weights[np.arange(n), lo] = 1 - frac
    weights[np.arange(n), lo + 1] = frac
    return weights


def displacement(
    rng: np.random.Generator, axes_mm: Sequence[np.ndarray], amplitude_mm: float, terms: int = 2
) -> list[np.ndarray]:
    """A smooth displacement field (3 components, broadcastable to the grid) in mm.

    Each component is a sum of ``terms`` separable products of sines with wavelengths of
    120-320 mm and random phases, so organs bend and bulge a little without tearing.
    """
    x, y, z = (np.asarray(a, np.float32) for a in axes_mm)
    fields = []
    for _ in range(3):
        total = np.zeros((x.size, y.size, z.size), np.float32)
        for _ in range(terms):
            w = 2 * np.pi / rng.uniform(120.0, 320.0, size=3)
            ph = rng.uniform(0, 2 * np.pi, size=3)
            sx = np.sin(w[0] * x + ph[0])[:, None, None]
            sy = np.sin(w[1] * y + ph[1])[None, :, None]
            sz = np.sin(w[2] * z + ph[2])[None, None, :]
            total += (amplitude_mm / terms**0.5) * (sx * sy * sz)
        fields.append(total)
    return fields
