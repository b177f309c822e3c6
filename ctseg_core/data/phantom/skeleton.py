"""Phantom skeleton and skeletal muscles: spine, sacrum, hips, femurs, ribs, sternum, muscles.

Vertebrae T1..T12 and L1..L5 share one shape and differ mainly by height z (the thoracic ones a
little in size; L1..L5 are identical, so only their surroundings tell them apart in 2D); each
has a body (cancellous core, cortical shell), pedicles, laminae, a spinous and two transverse
processes around the spinal canal (CSF, the spinal cord above L2).
Body-frame mm: x = patient's right, y = anterior, z = superior.
"""

from __future__ import annotations

import itertools

import numpy as np

from .body import LEVEL_OF, LEVELS, Body, Level, bone, muscle, spine_y
from .paint import Mat
from .shapes import capsule, chain, ellipsoid, rotation, rounded_cylinder
from .trunk import BOWEL, SIDES, chest_wall_ellipse

# Rib k: how far round the chest it reaches (angle from the back, rad), and how far it drops (mm).
_RIB_END = (2.75, 2.8, 2.8, 2.8, 2.75, 2.7, 2.6, 2.35, 2.1, 1.85, 1.45, 1.0)
_RIB_DROP = (30, 38, 42, 45, 45, 45, 45, 45, 42, 38, 25, 18)


def _canal_y(z):
    ry = np.where(np.asarray(z) < 100, 11.0, 10.0)
    return spine_y(z) - ry - 7.0


def paint_muscles(body: Body) -> None:
    """Autochthon (beside the spinous processes), iliopsoas, gluteus maximus and medius."""
    g, m = body.grid, muscle(body)
    back = Mat(body.hu["muscle"] - 10.0, tex_hu=8.0)  # paraspinal muscle: some fat between fibres
    zs = np.array([-30.0, 20.0, 80.0, 140.0, 200.0, 260.0, 345.0])
    for s, side in SIDES:
        pts = [(s * 16, float(_canal_y(z)) - 8, z) for z in zs]
        radii = np.array([8, 13, 13, 11, 10, 10, 9]) * body.jitter(f"autochthon_{side}")[1]
        body.paint(
            chain(g, pts, radii), f"autochthon_{side}", back, where=body.muscle_in, over=BOWEL
        )
        pts = [
            (s * 18, spine_y(100) - 1, 100),
            (s * 24, spine_y(60) - 1, 60),
            (s * 30, spine_y(20) + 1, 20),
            (s * 40, -2, -25),
            (s * 44, 18, -58),
            (s * 52, 24, -100),
        ]
        radii = np.array([3, 9, 13, 14, 11, 9]) * body.jitter(f"iliopsoas_{side}")[1]
        body.paint(chain(g, pts, radii), f"iliopsoas_{side}", m, where=body.muscle_in, over=BOWEL)
        c, r = body.at(f"gluteus_maximus_{side}", (s * 48, -44, -62), (38, 16, 46))
        body.paint(
            ellipsoid(g, c, r, rotation(s * -15)),
            f"gluteus_maximus_{side}",
            m,
            where=body.muscle_in,
            over=BOWEL,
        )
        thigh = capsule(g, (s * 48, 5, -85), (s * 52, 6, -230), 24, 34)  # unlabelled thigh muscles
        body.paint(thigh, "", m, where=body.muscle_in, over=[""])
        c, r = body.at(f"gluteus_medius_{side}", (s * 70, -22, -8), (13, 26, 30))
        medius = f"gluteus_medius_{side}"
        body.paint(
            ellipsoid(g, c, r, rotation(s * -30)), medius, m, where=body.muscle_in, over=BOWEL
        )
        c, r = body.at(f"gluteus_minimus_{side}", (s * 62, -12, -16), (8, 18, 20))
        body.paint(
            ellipsoid(g, c, r, rotation(s * -30)),
            f"gluteus_minimus_{side}",
            m,
            where=body.muscle_in,
            over=[*BOWEL, medius],
        )


def _vertebra(body: Body, lv: Level) -> None:
    g, yv = body.grid, float(spine_y(lv.zc))
    body.paint(rounded_cylinder(g, (0, yv, lv.zc), (lv.rx, lv.ry, lv.h)), lv.name, bone(body, 0.9))
    yb, zc = yv - lv.ry, lv.zc
    lumbar = lv.name.startswith("vertebrae_L")
    stretch = lv.h * 0.7 / 3.2
    parts = []
    for s, _ in SIDES:
        parts.append(
            capsule(g, (s * lv.rx * 0.55, yb + 3, zc), (s * 8, yb - 11, zc), 3.2, 3.2, stretch)
        )  # pedicle
        parts.append(capsule(g, (s * 8, yb - 11, zc), (0, yb - 16, zc), 3.0, 3.0, stretch))
        tip = (s * (lv.rx + 11), yb - 9, zc) if lumbar else (s * (lv.rx + 9), yb - 14, zc + 2)
        parts.append(capsule(g, (s * 8, yb - 10, zc), tip, 3.0, 2.5))
    spinous_tip = (0, yb - (24 if lumbar else 20), zc - (6 if lumbar else 14))
    parts.append(capsule(g, (0, yb - 16, zc), spinous_tip, 3.5, 2.8, 1.3))
    body.paint(parts, lv.name, bone(body, q_shell=0.7, cancellous_scale=0.9))


def paint_spine(body: Body) -> None:
    """Discs, vertebrae T1..L5, sacrum, then the canal (CSF) and the spinal cord."""
    g, hu = body.grid, body.hu
    for lower, upper in itertools.pairwise(LEVELS):
        zd = 0.5 * (lower.zc + lower.h + upper.zc - upper.h)
        half = 0.5 * (upper.zc - upper.h - lower.zc - lower.h) + 1.0
        disc = rounded_cylinder(g, (0, spine_y(zd), zd), (lower.rx * 0.95, lower.ry * 0.95, half))
        body.paint(disc, "", Mat(hu["disc"], tex_hu=3))
    body.paint(rounded_cylinder(g, (0, spine_y(2), 2), (15, 10, 3)), "", Mat(hu["disc"]))
    for lv in LEVELS:
        _vertebra(body, lv)
    sacrum = [
        ellipsoid(g, (0, spine_y(-12) - 2, -16), (31, 12, 17), rotation(0, -20)),
        ellipsoid(g, (0, spine_y(-50) - 4, -50), (22, 10, 22), rotation(0, -30)),
    ]
    body.paint(sacrum, "sacrum", bone(body, 0.88))
    zs = np.linspace(-45, 345, 27)
    canal = [(0, float(_canal_y(z)), z) for z in zs]
    body.paint(chain(g, canal, [4.5] * len(zs)), "", Mat(hu["csf"], tex_hu=2))
    cord = [p for p in canal if p[2] >= 75]
    radii = [1.5] + [3.5] * (len(cord) - 1)
    body.paint(chain(g, cord, radii), "spinal_cord", Mat(hu["cord"], tex_hu=2), over=[""])


def paint_pelvic_bones(body: Body) -> None:
    """Hips (iliac wing, acetabulum, pubic and ischial rami) and femurs (head, neck, shaft)."""
    g, hu = body.grid, body.hu
    for s, side in SIDES:
        off = body.jitter(f"hip_{side}", shift_mm=2.0)[0]
        head = np.array([s * 44, 4, -56]) + off
        hip = [
            ellipsoid(g, np.add((s * 54, -12, 18), off), (6, 34, 32), rotation(-s * 38)),
            capsule(g, np.add((s * 50, -14, 0), off), np.add(head, (s * 2, -6, 12)), 12, 14),
            capsule(g, np.add(head, (-s * 8, 12, -6)), (s * 8, 36, -70), 7, 6),
            capsule(g, np.add(head, (-s * 6, -10, -6)), np.add(head, (-s * 10, -14, -36)), 9, 8),
            capsule(g, np.add(head, (-s * 10, -12, -36)), (s * 10, 28, -80), 5, 5),
        ]
        body.paint(hip, f"hip_{side}", bone(body, 0.85))
        socket = ellipsoid(g, head, (20, 20, 20))
        body.paint(
            socket,
            f"hip_{side}",
            bone(body, 0.85),
            where=lambda x, y, z, s=s, hx=head[0]: s * (x - hx) < 4.0,
        )
        body.paint(
            ellipsoid(g, head, (15, 15, 15)), "", Mat(hu["cartilage"] - 50), over=[f"hip_{side}"]
        )  # joint space
        neck_end = np.add(head, (s * 18, -4, -14))
        femur = [
            ellipsoid(g, head, (13, 13, 13)),
            capsule(g, head, neck_end, 8.5, 8.5),
            ellipsoid(g, np.add(head, (s * 24, -10, -10)), (10, 12, 14)),
        ]
        body.paint(femur, f"femur_{side}", bone(body, 0.9))
        shaft = capsule(
            g, np.add(neck_end, (s * 1, 4, 0)), np.add(neck_end, (-s * 4, 10, -150)), 12, 11
        )
        body.paint(shaft, f"femur_{side}", Mat(hu["marrow"], hu["cortical"], 0.62, fine_hu=10))


def paint_ribs(body: Body) -> None:
    """Ribs 1..12 on each side from their vertebra round the chest wall, cartilages, sternum."""
    g, hu = body.grid, body.hu
    rib_bone = bone(body, q_shell=0.65, cancellous_scale=0.9)
    sternum_y = chest_wall_ellipse(body, 225)[1] + 1.0
    for k in range(1, 13):
        lv = LEVEL_OF[f"vertebrae_T{k}"]
        a, b = chest_wall_ellipse(body, lv.zc)
        phi0 = float(np.arcsin(min(0.95, (lv.rx + 16) / a)))
        phis = np.linspace(phi0, _RIB_END[k - 1], 7)
        drop = _RIB_DROP[k - 1] * (phis - phi0) / (np.pi - phi0)
        for s, side in SIDES:
            pts = [(s * (lv.rx + 3), float(spine_y(lv.zc)) - 2, lv.zc + 1)]
            pts += [
                (s * a * np.sin(p), -b * np.cos(p), lv.zc - d)
                for p, d in zip(phis, drop, strict=True)
            ]
            r = 3.6 if k <= 2 else 3.2
            body.paint(chain(g, pts, [r] * len(pts), z_stretch=1.5), f"rib_{side}_{k}", rib_bone)
            if k <= 10:
                z_join = max(lv.zc - 60, 170.0) if k <= 7 else 168.0
                end = pts[-1]
                target = (s * (9 if k <= 7 else 18), sternum_y - (0 if k <= 7 else 6), z_join)
                body.paint(
                    capsule(g, end, target, 3.0, 2.8, 1.3),
                    "costal_cartilages",
                    Mat(hu["cartilage"], tex_hu=5),
                    over=["", *BOWEL],
                )
    centre = (0.0, sternum_y, 228.0)
    body.paint(ellipsoid(g, centre, (13, 5.5, 62)), "sternum", bone(body, q_shell=0.82))
