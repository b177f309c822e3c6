"""The phantom's body frame: outline, spine levels, diaphragm, and the body wall (skin fat, muscle).

Body frame (mm of a standard phantom body, about 0.55 of an adult): x toward the patient's right,
y anterior, z superior (RAS+, nibabel's world convention), origin on the midline at the top of
the sacrum. The covered body runs from z = -150 (upper thighs) to z = 345 (upper thorax).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .paint import Mat, Painter
from .shapes import BodyGrid

Z_RANGE_MM = (-150.0, 345.0)

# Outer boundary of the muscle layer, half-width a (x) and half-depth b (y), along z.
_OUTLINE_Z = (-160.0, -60.0, 0.0, 60.0, 140.0, 220.0, 345.0)
_OUTLINE_A = (90.0, 96.0, 88.0, 80.0, 84.0, 86.0, 80.0)
_OUTLINE_B = (62.0, 64.0, 60.0, 58.0, 60.0, 56.0, 50.0)
# Centre of the vertebral bodies (y) along z: lumbar lordosis, thoracic kyphosis.
_SPINE_Z = (-80.0, -40.0, 0.0, 50.0, 100.0, 160.0, 240.0, 345.0)
_SPINE_Y = (-40.0, -33.0, -25.0, -16.0, -20.0, -27.0, -30.0, -26.0)
MAX_HALF_WIDTH_MM = max(_OUTLINE_A)
MAX_HALF_DEPTH_MM = max(_OUTLINE_B)


@dataclass(frozen=True)
class Level:
    """One vertebra: centre height zc, half-height h, vertebral body half-axes rx, ry (mm)."""

    name: str
    zc: float
    h: float
    rx: float
    ry: float


def _levels() -> tuple[Level, ...]:
    levels = [Level(f"vertebrae_L{5 - i}", 12.0 + 20.0 * i, 7.5, 16.0, 11.0) for i in range(5)]
    for k in range(12, 0, -1):  # T12 (just above L1) up to T1
        t = (12 - k) / 11.0
        levels.append(
            Level(
                f"vertebrae_T{k}", 111.0 + 18.0 * (12 - k), 7.0 - 0.8 * t, 14.0 - 4 * t, 11 - 2 * t
            )
        )
    return tuple(levels)


LEVELS: tuple[Level, ...] = _levels()
LEVEL_OF: dict[str, Level] = {lv.name: lv for lv in LEVELS}


def spine_y(z):
    """Body-frame y (mm) of the vertebral body centres at height z (scalar or array)."""
    return np.interp(z, _SPINE_Z, _SPINE_Y)


def body_half_axes(z):
    """(a, b): half-width and half-depth (mm) of the muscle outline at height z."""
    return np.interp(z, _OUTLINE_Z, _OUTLINE_A), np.interp(z, _OUTLINE_Z, _OUTLINE_B)


@dataclass
class Body:
    """One subject's anatomy context: the painter, tissue HU, and its anatomical variation.

    ``fat_mm`` is the subcutaneous fat thickness, ``wall_mm`` the muscle wall thickness,
    ``dome_shift_mm`` moves the diaphragm (breathing), ``rng`` draws organ-level jitter.
    """

    painter: Painter
    hu: dict
    rng: np.random.Generator
    fat_mm: float
    wall_mm: float
    dome_shift_mm: float
    male: bool
    cavity: np.ndarray | None = None  # inside the inner edge of the muscle wall
    muscle_in: np.ndarray | None = None  # inside the outer edge of the muscle wall
    _jitter: dict = field(default_factory=dict)

    @property
    def grid(self) -> BodyGrid:
        return self.painter.grid

    def paint(self, *args, **kwargs) -> None:
        self.painter.paint(*args, **kwargs)

    def jitter(
        self, key: str, shift_mm: float = 4.0, size: float = 0.1
    ) -> tuple[np.ndarray, float]:
        """A per-subject (offset (3,) mm, size factor) for one organ, drawn once per key."""
        if key not in self._jitter:
            offset = np.clip(self.rng.normal(0.0, shift_mm / 2, 3), -shift_mm, shift_mm)
            self._jitter[key] = (offset, float(self.rng.uniform(1 - size, 1 + size)))
        return self._jitter[key]

    def at(self, key: str, centre, radii, shift_mm: float = 4.0, size: float = 0.1):
        """``centre`` and ``radii`` moved and scaled by the organ's jitter."""
        offset, factor = self.jitter(key, shift_mm, size)
        return np.asarray(centre, float) + offset, np.asarray(radii, float) * factor

    def dome_z(self, x, y):
        """Height (mm) of the diaphragm above body point (x, y): two domes, the right one higher."""
        k = 0.014
        right = 168.0 - k * ((x - 35.0) ** 2 + y**2)
        left = 160.0 - k * ((x + 35.0) ** 2 + y**2)
        return np.maximum(right, left) + self.dome_shift_mm

    @property
    def below_dome(self) -> list:
        """Paint constraint: inside the body cavity, under the diaphragm."""
        return [self.cavity, lambda x, y, z: z < self.dome_z(x, y) - 1.0]

    @property
    def above_dome(self) -> list:
        """Paint constraint: inside the body cavity, above the diaphragm."""
        return [self.cavity, lambda x, y, z: z > self.dome_z(x, y) + 1.0]


def paint_body_wall(body: Body) -> None:
    """Air outside, skin fat, the muscle wall and the fat inside it, over the whole volume.

    The outer outline is the muscle outline grown by the fat layer (thinner at the back, where
    a supine patient's weight flattens it). The outline follows each slice's undeformed height
    (it changes slowly along z); x and y carry the deformation.
    """
    g, hu, p = body.grid, body.hu, body.painter
    a, b = body_half_axes(g.z_lin)
    f, w = body.fat_mm, body.wall_mm

    def inv2(v):
        return (1.0 / np.asarray(v) ** 2).astype(np.float32)[None, None, :]

    x2, y2 = g.x * g.x, g.y * g.y
    outer = x2 * inv2(a + f) + (g.y - np.float32(0.15 * f)) ** 2 * inv2(b + 0.85 * f) < 1.0
    body.muscle_in = x2 * inv2(a) + y2 * inv2(b) < 1.0
    body.cavity = x2 * inv2(a - w) + y2 * inv2(b - w) < 1.0
    region = outer.view(np.uint8) + body.muscle_in.view(np.uint8) + body.cavity.view(np.uint8)
    base = np.array([-1000.0, hu["fat"], hu["muscle"], hu["cavity_fat"]], np.float32)
    texture_hu = np.array([0.0, 8.0, 5.0, 10.0], np.float32)
    p.hu[:] = base[region] + texture_hu[region] * g.texture


def muscle(body: Body, tex_hu: float = 5.0) -> Mat:
    return Mat(body.hu["muscle"], tex_hu=tex_hu)


def bone(body: Body, q_shell: float = 0.88, cancellous_scale: float = 1.0) -> Mat:
    """Cancellous bone inside, cortical bone in the outer shell (q >= q_shell), trabecular grain."""
    hu = body.hu
    return Mat(hu["cancellous"] * cancellous_scale, hu["cortical"], q_shell, tex_hu=15, fine_hu=35)


def paint_table(body: Body, rng: np.random.Generator) -> None:
    """The scanner table under the supine patient: carbon-fibre skins around a foam core.

    Unlabelled, as in real scans, where a model must learn to ignore it. Skipped when the
    field of view ends at the patient's back.
    """
    p = body.painter
    in_body = (p.hu > -500).any(axis=(0, 2))  # (ny,): rows of the image the body reaches
    if not in_body.any():
        return
    spacing = body.grid.spacing_mm[1]
    top = int(np.argmax(in_body)) - max(1, round(rng.uniform(2, 12) / spacing))
    skin, core = max(1, round(2.0 / spacing)), max(1, round(10.0 / spacing))
    bottom = top - 2 * skin - core
    if bottom < 0:
        return
    nx = p.hu.shape[0]
    half = int(nx * rng.uniform(0.3, 0.45))
    xs = slice(max(0, nx // 2 - half), min(nx, nx // 2 + half))
    p.hu[xs, bottom:top, :] = 250.0
    p.hu[xs, bottom + skin : top - skin, :] = -800.0
