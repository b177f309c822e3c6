"""Phantom soft-tissue anatomy: thorax (lungs, airways, heart), abdomen, pelvis, vessels.

All positions are body-frame mm (x = patient's right, y = anterior, z = superior); the patient's
right organs (liver, kidney_right, IVC) sit at x > 0, the left ones (spleen, stomach,
kidney_left, aorta) at x < 0. Functions paint in order of rising priority.
"""

from __future__ import annotations

import numpy as np

from .body import LEVEL_OF, Body, body_half_axes, spine_y
from .paint import GasFluid, Mat, Mottled
from .shapes import capsule, chain, ellipsoid, rotation, union

SIDES = ((1.0, "right"), (-1.0, "left"))
LUNG_LOBES = {
    "right": ("lung_lower_lobe_right", "lung_upper_lobe_right", "lung_middle_lobe_right"),
    "left": ("lung_lower_lobe_left", "lung_upper_lobe_left", None),
}
ALL_LOBES = [n for names in LUNG_LOBES.values() for n in names if n]
BOWEL = ("", "small_bowel", "colon")


def _front_of_spine(z: float, gap: float) -> float:
    """Body y just anterior to the vertebral body at height z, plus ``gap`` mm."""
    ry = 11.0 if z < 100 else 10.0
    return float(spine_y(z)) + ry + gap


def paint_bowel(body: Body) -> None:
    """Small bowel loops (overlapping blobs, each its own content) and the colon frame."""
    hu, rng, g = body.hu, body.rng, body.grid
    for _ in range(int(rng.integers(12, 18))):
        centre = rng.uniform((-40, -2, -25), (40, 38, 80))
        radii = rng.uniform(8, 14, 3)
        content = hu["bowel_fluid"] if rng.random() < 0.8 else -900.0
        body.paint(
            ellipsoid(g, centre, radii, rotation(rng.uniform(0, 180))),
            "small_bowel",
            Mat(content, hu["wall"], 0.8, tex_hu=4),
            where=body.cavity,
        )
    pts = [
        (0, -14, -90),
        (0, -16, -40),
        (-18, -4, -15),
        (-48, -6, 5),
        (-56, -8, 60),
        (-54, -4, 112),
        (-34, 30, 104),
        (0, 40, 92),
        (34, 32, 100),
        (56, 6, 96),
        (58, 4, 40),
        (48, 14, 5),
    ]
    radii = np.array([11, 10, 10, 11, 12, 12, 13, 12, 13, 13, 14, 15]) * body.jitter("colon")[1]
    pts = np.asarray(pts, float) + body.jitter("colon")[0]
    colon = Mottled(hu["wall"], hu["stool"], gas_above=float(rng.uniform(0.2, 1.2)))
    body.paint(union(chain(g, pts, radii)), "colon", colon, where=body.cavity)


def paint_thorax(body: Body) -> None:
    """Lungs split into lobes by fissure planes, airways, lung vessels, the heart."""
    hu, rng, g = body.hu, body.rng, body.grid
    lung = Mat(hu["lung"], tex_hu=25, fine_hu=20)
    fissure_z = 198.0 + rng.normal(0, 5)
    horizontal_z = 208.0 + rng.normal(0, 5)
    for s, side in SIDES:
        lower, upper, middle = LUNG_LOBES[side]
        centre, radii = body.at(f"lung_{side}", (s * 40, -4, 232), (44, 52, 125), size=0.05)

        def beside_mediastinum(x, y, z, s=s):
            return s * x > 4.0

        def above_oblique_fissure(x, y, z):  # the fissure runs high at the back, low in front
            return z > fissure_z - 0.9 * y

        lobe_shape = ellipsoid(g, centre, radii)
        body.paint(lobe_shape, lower, lung, where=[*body.above_dome, beside_mediastinum])
        body.paint(lobe_shape, upper, None, where=above_oblique_fissure, over=[lower])
        if middle:
            body.paint(
                lobe_shape,
                middle,
                None,
                over=[upper],
                where=lambda x, y, z: (z < horizontal_z) & (y > -12),
            )
        hilum = np.array([s * 18, 0.0, 215.0])
        for _ in range(10):  # vessels fanning out from the hilum, tapering
            direction = rng.normal(0, 1, 3) * (1.0, 1.0, 1.6)
            direction[0] = s * abs(direction[0])
            end = hilum + direction / np.linalg.norm(direction) * rng.uniform(40, 85)
            vessel = Mat(0.5 * (hu["artery"] + hu["vein"]), tex_hu=0)
            body.paint(capsule(g, hilum, end, 3.2, 0.8), None, vessel, over=ALL_LOBES)
    y_tr = _front_of_spine(290, 21)
    wall = Mat(-1000.0, hu["wall"], 0.75, tex_hu=0)
    body.paint(capsule(g, (0, y_tr, 400), (0, y_tr - 2, 262), 8.0), "trachea", wall)
    for s, _side in SIDES:  # main bronchi: air, left unlabelled as in TotalSegmentator
        bronchus = chain(
            g,
            [(0, y_tr - 2, 264), (s * 22, y_tr - 5, 242), (s * 34, y_tr - 8, 218)],
            [6.0, 5.0, 3.5],
        )
        body.paint(bronchus, "", wall, over=["", *ALL_LOBES])
    svc = [(24, 12, 330), (22, 13, 270), (18, 16, 228)]  # right of the ascending aorta
    body.paint(chain(g, svc, [9, 9, 9]), "", Mat(hu["cavity_fat"]), over=["", *ALL_LOBES])
    body.paint(chain(g, svc, [6, 6, 6]), "superior_vena_cava", Mat(hu["vein"], tex_hu=2))
    centre, radii = body.at("heart", (-10, 22, 200), (40, 30, 36))
    heart_rot = rotation(-30.0, 10.0)
    body.paint(
        ellipsoid(g, centre, radii + 4, heart_rot),
        "",
        Mat(hu["cavity_fat"]),
        where=body.above_dome,
        over=["", *ALL_LOBES],
    )  # pericardial fat
    blood = Mat(hu["artery"], hu["myocardium"], 0.72, tex_hu=4)
    body.paint(ellipsoid(g, centre, radii, heart_rot), "heart", blood, where=body.above_dome)


def paint_upper_abdomen(body: Body) -> None:
    """Liver (with vessels), gallbladder, stomach, spleen, pancreas, kidneys."""
    hu, rng, g = body.hu, body.rng, body.grid
    below = body.below_dome
    liver = Mat(hu["liver"], tex_hu=5)
    c1, r1 = body.at("liver", (38, 2, 120), (38, 42, 52))
    c2, r2 = body.at("liver_left", (-6, 24, 140), (34, 18, 22))
    parts = [ellipsoid(g, c1, r1, rotation(10)), ellipsoid(g, c2, r2, rotation(-15))]
    z_cut = c1[2] - 18.0

    def wedge(x, y, z):  # the inferior surface rises toward the left: a wedge, not a ball
        return z > z_cut - 0.55 * (x - c1[0]) + 0.15 * y

    body.paint(parts, "liver", liver, where=[*below, wedge])
    porta = np.add(c1, (-26, 8, -12))
    for _ in range(5):
        end = c1 + rng.uniform((-20, -25, -20), (25, 25, 30))
        body.paint(
            capsule(g, porta, end, 4.0, 1.5), None, Mat(hu["vein"], tex_hu=0), over=["liver"]
        )
    centre, radii = body.at("gallbladder", (24, 30, 100), (9, 11, 17), size=0.25)
    bile = Mat(hu["bile"], hu["wall"], 0.85, tex_hu=2)
    body.paint(ellipsoid(g, centre, radii, rotation(0, 30)), "gallbladder", bile, where=body.cavity)
    off, f = body.jitter("stomach", size=0.2)
    fundus = ellipsoid(g, np.add((-30, 10, 138), off), np.multiply((22, 22, 20), f))
    body_antrum = chain(
        g,
        np.add([(-30, 18, 128), (-20, 32, 108), (2, 36, 98), (20, 24, 94)], off),
        np.multiply([19, 16, 11, 7], f),
    )
    stomach = union([fundus, *body_antrum])
    level = 16.0 + off[1] + rng.uniform(-6, 10)
    body.paint(stomach, "stomach", GasFluid(hu["wall"], hu["bowel_fluid"], level), where=below)
    centre, radii = body.at("spleen", (-52, -22, 132), (13, 30, 24), size=0.15)
    body.paint(ellipsoid(g, centre, radii, rotation(35)), "spleen", Mat(hu["spleen"]), where=below)
    duodenum = [(20, 24, 94), (31, 14, 88), (31, 10, 70), (12, 6, 63), (-12, 8, 67), (-14, 12, 82)]
    body.paint(
        union(chain(g, duodenum, [7, 8, 8, 8, 7, 7])),
        "duodenum",
        Mat(hu["bowel_fluid"], hu["wall"], 0.75, tex_hu=4),
        where=body.cavity,
    )
    off, f = body.jitter("pancreas")
    pancreas = chain(
        g,
        np.add([(18, 12, 88), (0, 14, 92), (-24, 6, 98), (-44, -8, 106)], off),
        np.multiply([10, 7, 7, 6], f),
    )
    body.paint(pancreas, "pancreas", Mat(hu["pancreas"], tex_hu=6, fine_hu=8), over=BOWEL)
    portal = np.add([(-45, -12, 118), (-25, 0, 101), (2, 6, 93), (14, 8, 110), (22, 8, 118)], off)
    body.paint(
        chain(g, portal, [4, 4.5, 6, 6, 5]),
        "portal_vein_and_splenic_vein",
        Mat(hu["vein"], tex_hu=2),
        over=["", *BOWEL, "pancreas", "liver"],
    )
    for s, side in SIDES:
        y_k = float(spine_y(60)) + 2
        centre, radii = body.at(f"kidney_{side}", (s * 40, y_k, 58 if s > 0 else 68), (14, 11, 28))
        rot = rotation(s * 30, 0, s * -12)
        kidney = Mat(hu["kidney_medulla"], hu["kidney_cortex"], 0.72, tex_hu=3)
        body.paint(ellipsoid(g, centre, radii, rot), f"kidney_{side}", kidney, where=body.cavity)
        hilum = centre + rot @ np.array([-s * 11, 4, 0])
        body.paint(
            ellipsoid(g, hilum, (7, 6, 11), rot), "", Mat(hu["cavity_fat"]), over=[f"kidney_{side}"]
        )
    for s, side in SIDES:  # thin glands capping the upper kidney poles, medial to them
        centre, radii = body.at(f"adrenal_gland_{side}", (s * 23, -8, 98), (3.5, 9, 10), size=0.2)
        body.paint(ellipsoid(g, centre, radii, rotation(s * -35)), f"adrenal_gland_{side}",
                   Mat(hu["wall"] - 5, tex_hu=3), over=["", *BOWEL])  # fmt: skip  # renal sinus fat


def paint_pelvis(body: Body) -> None:
    """Urinary bladder (filling varies) and, in male subjects, the prostate."""
    hu, rng, g = body.hu, body.rng, body.grid
    fill = float(rng.uniform(0.6, 1.25))
    centre = np.array([0.0, 26.0, -64.0 + 14.0 * fill]) + body.jitter("bladder")[0]
    urine = Mat(hu["urine"], hu["wall"], 0.9, tex_hu=2)
    radii = np.array([24.0, 19.0, 19.0]) * fill
    body.paint(ellipsoid(g, centre, radii), "urinary_bladder", urine, where=body.cavity)
    if body.male:
        centre, radii = body.at("prostate", (0, 18, -80), (13, 10, 11))
        body.paint(ellipsoid(g, centre, radii), "prostate", Mat(hu["wall"] + 5, tex_hu=5))


def paint_vessels(body: Body) -> None:
    """Inferior vena cava (right of midline), iliac veins, aorta (left), iliac arteries."""
    hu, g = body.hu, body.grid
    vein = Mat(hu["vein"], tex_hu=2)
    artery = Mat(hu["artery"], tex_hu=2)
    ya = _front_of_spine
    ivc = [(13, ya(22, 7), 22), (15, ya(80, 9), 80), (16, 2, 130), (12, 10, 165), (8, 14, 178)]
    body.paint(chain(g, ivc, [8, 8.5, 9, 9, 8]), "inferior_vena_cava", vein)
    for s, side in SIDES:
        pts = [(13, ya(22, 7), 22), (s * 14, ya(0, 3), 0), (s * 31, 0, -32), (s * 36, 14, -62)]
        body.paint(chain(g, pts, [7, 6.5, 6, 5.5]), f"iliac_vena_{side}", vein)
    x_t = -20.0
    aorta = [
        (-4, ya(30, 9), 30),
        (-5, ya(90, 9), 90),
        (-10, ya(150, 7), 150),
        (x_t, float(spine_y(200)) + 8, 200),
        (x_t, float(spine_y(270)) + 8, 270),
        (-14, float(spine_y(300)) + 18, 300),
        (-4, 15, 308),
        (8, 22, 290),
        (6, 22, 232),
    ]
    radii = np.array([7, 7.5, 8, 8, 8, 8.5, 9, 10, 10])
    # mediastinal fat around the thoracic aorta, so it does not touch the lung directly
    body.paint(chain(g, aorta, radii + 3), "", Mat(hu["cavity_fat"]), over=["", *ALL_LOBES])
    body.paint(chain(g, aorta, radii), "aorta", artery)
    for s, side in SIDES:
        pts = [(-4, ya(30, 9), 30), (s * 16, ya(5, 10), 5), (s * 34, 8, -32), (s * 40, 20, -62)]
        body.paint(chain(g, pts, [5.5, 5, 4.5, 4.5]), f"iliac_artery_{side}", artery)
    t = LEVEL_OF["vertebrae_T8"]
    esophagus = [
        (-1, ya(330, 7), 345),
        (-4, ya(250, 7), 250),
        (-6, ya(t.zc, 9), t.zc),
        (-16, 6, 150),
        (-26, 10, 138),
    ]
    lumen = -900.0 if body.rng.random() < 0.4 else hu["wall"]
    body.paint(
        chain(g, esophagus, [5, 5, 5, 5.5, 6]), "esophagus", Mat(lumen, hu["wall"], 0.5, tex_hu=2)
    )


def chest_wall_ellipse(body: Body, z: float) -> tuple[float, float]:
    """Half-axes (mm) of the ellipse through the middle of the muscle wall at height z."""
    a, b = body_half_axes(z)
    return float(a) - body.wall_mm / 2, float(b) - body.wall_mm / 2
