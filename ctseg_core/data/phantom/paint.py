"""Painting phantom shapes into a label volume and a Hounsfield-unit volume, and tissue HU tables.

``Painter`` holds the canonical (x, y, z) label volume (uint8, 0 = unlabelled) and the CT before
blur and noise (float32 HU). Shapes are painted in order of rising priority: a later shape wins
where two meet, so every voxel carries exactly one label and the masks never overlap. A paint
can be confined (``where``: a boolean volume or a predicate on body coordinates) and can be told
which labels it may replace (``over``), e.g. lung vessels change only HU inside the lungs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ...labels import LABEL_OF
from .shapes import BodyGrid

PHASES = ("native", "arterial", "portal venous")


@dataclass(frozen=True)
class Mat:
    """HU of a tissue: ``inner`` inside, ``shell`` where q >= q_shell (cortex, wall), plus texture.

    ``tex_hu`` scales the grid's smooth unit-variance texture (organ heterogeneity);
    ``fine_hu`` scales the fine-grained texture (trabecular bone, lung parenchyma, bowel content).
    """

    inner: float
    shell: float | None = None
    q_shell: float = 1.0
    tex_hu: float = 4.0
    fine_hu: float = 0.0

    def __call__(self, q, tex, fine, y):
        hu = np.full(q.shape, self.inner, np.float32)
        if self.shell is not None:
            hu[q >= self.q_shell] = self.shell
        if self.tex_hu:
            hu += self.tex_hu * tex
        if self.fine_hu:
            hu += self.fine_hu * fine
        return hu


@dataclass(frozen=True)
class GasFluid:
    """A hollow organ of a supine patient: gas anterior to a fluid level at body y = ``level_y``."""

    wall: float
    fluid: float
    level_y: float
    q_wall: float = 0.8
    gas: float = -950.0

    def __call__(self, q, tex, fine, y):
        hu = np.where(y > self.level_y, np.float32(self.gas), np.float32(self.fluid))
        hu = hu + 4.0 * tex
        hu[q >= self.q_wall] = self.wall
        return hu.astype(np.float32, copy=False)


@dataclass(frozen=True)
class Mottled:
    """Bowel content: stool with gas bubbles where the fine texture exceeds ``gas_above``."""

    wall: float
    stool: float
    gas_above: float
    q_wall: float = 0.8

    def __call__(self, q, tex, fine, y):
        hu = np.where(fine > self.gas_above, np.float32(-900.0), np.float32(self.stool))
        hu = hu + 40.0 * tex
        hu[q >= self.q_wall] = self.wall
        return hu.astype(np.float32, copy=False)


Material = Callable[..., np.ndarray]
Condition = np.ndarray | Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
Where = Condition | list[Condition] | None


class Painter:
    """Paints shapes into ``labels`` (uint8) and ``hu`` (float32), both shaped like the grid."""

    def __init__(self, grid: BodyGrid, fine: np.ndarray):
        self.grid = grid
        self.fine = fine
        self.labels = np.zeros(grid.shape, np.uint8)
        self.hu = np.full(grid.shape, -1000.0, np.float32)

    def paint(
        self,
        shapes,
        name: str | None,
        material: Material | None,
        where: Where = None,
        over: Iterable[str] | None = None,
        q_max: float = 1.0,
    ) -> None:
        """Paint one shape ``(box, q)`` or a list of them.

        ``name`` is a structure name, "" for unlabelled tissue (label 0), or None to change HU
        only; ``material`` None changes the label only. ``where``: a boolean volume, a predicate
        on body coordinates (x, y, z), or a list of them that must all hold. ``over`` lists the
        structure names ("" = unlabelled) this paint may replace; None replaces anything.
        Voxels with q < q_max are painted.
        """
        if isinstance(shapes, tuple):
            shapes = [shapes]
        value = None if name is None else (LABEL_OF[name] if name else 0)
        allowed = None
        if over is not None:
            allowed = np.zeros(256, bool)
            allowed[[LABEL_OF[n] if n else 0 for n in over]] = True
        for box, q in shapes:
            if box is None:
                continue
            inside = q < q_max
            lab = self.labels[box]
            if allowed is not None:
                inside &= allowed[lab]
            for cond in where if isinstance(where, list) else [where]:
                if isinstance(cond, np.ndarray):
                    inside &= cond[box]
                elif cond is not None:
                    inside &= cond(*self.grid.coords(box))
            if not inside.any():
                continue
            if material is not None:
                tex = self.grid.texture[box][inside]
                fine = self.fine[box][inside]
                y = self.grid.y[box][inside]
                self.hu[box][inside] = material(q[inside], tex, fine, y)
            if value is not None:
                lab[inside] = value


def tissue_table(rng: np.random.Generator, phase: str, age: float, oral_contrast: bool) -> dict:
    """Mean HU per tissue for one subject, by contrast phase and age (bone density falls with age).

    Values follow typical adult CT: fat about -100, muscle 40-60, liver 55-65 native and near 100
    in the portal venous phase, arterial blood 250-330 in angiography, cortical bone 700-1000.
    """
    g = rng.normal
    by_phase = {  # liver, spleen, kidney cortex, kidney medulla, artery, vein, myocardium, pancreas
        "native": (57, 46, 34, 30, 42, 40, 45, 40),
        "arterial": (70, 105, 185, 70, 290, 75, 110, 115),
        "portal venous": (102, 112, 165, 150, 165, 150, 95, 90),
    }[phase]
    liver, spleen, cortex, medulla, artery, vein, myo, pancreas = by_phase
    spread = 4.0 if phase == "native" else 10.0
    return {
        "fat": -100 + g(0, 6),
        "cavity_fat": -92 + g(0, 6),
        "muscle": 50 + g(0, 4),
        "lung": -855 + g(0, 20),
        "liver": liver + g(0, spread),
        "spleen": spleen + g(0, spread),
        "kidney_cortex": cortex + g(0, spread),
        "kidney_medulla": medulla + g(0, spread),
        "artery": artery + g(0, 2 * spread),
        "vein": vein + g(0, spread),
        "myocardium": myo + g(0, spread),
        "pancreas": pancreas + g(0, spread),
        "wall": 40 + (25 if phase != "native" else 0) + g(0, 4),
        "bile": 8 + g(0, 3),
        "urine": 6 + g(0, 3),
        "bowel_fluid": 220 + g(0, 30) if oral_contrast else 14 + g(0, 4),
        "stool": -40 + g(0, 20),
        "disc": 85 + g(0, 8),
        "csf": 8 + g(0, 3),
        "cord": 32 + g(0, 3),
        "cartilage": 115 + g(0, 10),
        "cancellous": float(np.clip(300 - 1.8 * (age - 20) + g(0, 20), 110, 330)),
        "cortical": 850 + g(0, 70),
        "marrow": 20 + g(0, 20),
    }
