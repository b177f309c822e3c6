"""Structure colours: neighbours told apart by CIEDE2000, groups anatomical, parts kept."""

from __future__ import annotations

import numpy as np

from ctseg_core.labels import (
    BASE_COLOURS,
    COLOURS,
    GROUP_OF,
    GROUPS,
    LABEL_OF,
    PART_OF,
    PARTS,
    STRUCTURES,
)
from ctseg_core.viz.palette import (
    MIN_TOUCHING_DELTA_E,
    load_adjacency,
    neighbour_pairs,
    repair_palette,
    touching_distances,
)


def test_neighbour_pairs_finds_faces_and_small_gaps_but_not_far_structures():
    labels = np.zeros((3, 12, 12), dtype=np.uint8)  # (Z, X, Y), 3 mm voxels
    labels[:, 1:4, 1:4] = LABEL_OF["liver"]
    labels[:, 4:6, 1:4] = LABEL_OF["stomach"]  # shares a face with the liver
    labels[:, 1:4, 5:7] = LABEL_OF["heart"]  # 6 mm from the liver, 6.7 mm from the stomach
    labels[:, 10:12, 10:12] = LABEL_OF["spleen"]  # far from all
    pairs = neighbour_pairs(labels, (3.0, 3.0, 3.0), reach_mm=6.0)
    assert set(pairs) == {("liver", "stomach"), ("liver", "heart")}
    assert pairs[("liver", "stomach")] > 0
    assert neighbour_pairs(labels, (3.0, 3.0, 3.0), reach_mm=3.0).keys() == {("liver", "stomach")}
    assert neighbour_pairs(np.zeros((4, 4), np.uint8), (1.0, 1.0)) == {}


def test_stored_adjacency_holds_the_real_neighbours():
    pairs = load_adjacency()
    assert len(pairs) > 300
    for pair in (("kidney_right", "liver"), ("heart", "aorta"), ("liver", "stomach")):
        assert pair in pairs, pair
    assert all(LABEL_OF[a] < LABEL_OF[b] for a, b in pairs)


def test_touching_structures_are_far_apart_in_ciede2000_and_better_than_the_hue_walk():
    pairs = list(load_adjacency())
    now = touching_distances(COLOURS, pairs)
    before = touching_distances(BASE_COLOURS, pairs)
    assert min(now.values()) >= MIN_TOUCHING_DELTA_E  # 20: red against orange
    assert min(before.values()) < 5 < MIN_TOUCHING_DELTA_E  # the left lower lobe and rib 9: 4.3
    # the salmon organs: liver, heart, aorta, right kidney each other's neighbours
    for pair in (("kidney_right", "liver"), ("liver", "heart"), ("heart", "aorta")):
        assert now[pair] > 20 > before[pair], (pair, before[pair], now[pair])


def test_repair_keeps_colours_that_are_fine_and_moves_the_later_of_a_close_pair():
    start = dict(BASE_COLOURS)
    start["stomach"] = start["liver"]
    fixed = repair_palette(start, [("liver", "stomach")], keep=("liver",))
    assert fixed["liver"] == start["liver"]
    assert touching_distances(fixed, [("liver", "stomach")])[("liver", "stomach")] >= 20
    assert {n for n in STRUCTURES if fixed[n] != start[n]} == {"stomach"}


def test_every_structure_is_in_exactly_one_anatomical_group_and_one_part():
    assert sorted(n for names in GROUPS.values() for n in names) == sorted(STRUCTURES)
    assert sorted(n for names in PARTS.values() for n in names) == sorted(STRUCTURES)
    assert GROUP_OF["femur_left"] == "bones" and PART_OF["femur_left"] == "muscles"
    assert GROUP_OF["aorta"] == "vessels" and GROUP_OF["heart"] == "heart"
    assert GROUP_OF["lung_middle_lobe_right"] == "lungs" and GROUP_OF["iliopsoas_left"] == "muscles"
    assert {len(GROUPS[g]) for g in ("organs", "lungs", "heart", "vessels")} == {18, 6, 2, 16}
