"""The 117 structures: TotalSegmentator v2's values, left/right pairs, colours told apart."""

from __future__ import annotations

import itertools
import json

import numpy as np

from ctseg_core.labels import COLOURS, LABEL_OF, LR_PAIRS, STRUCTURES, lr_swap_lut


def test_values_are_totalsegmentator_v2s(extra_dir):
    classes = json.loads((extra_dir / "totalsegmentator_v2_classes.json").read_text())
    assert {int(k): v for k, v in classes.items()} == {LABEL_OF[n]: n for n in STRUCTURES}


def test_the_mirror_table_swaps_exactly_the_left_right_pairs():
    lut = lr_swap_lut()
    assert np.array_equal(lut[lut], np.arange(len(lut)))  # an involution
    swapped = {STRUCTURES[v - 1] for v in np.flatnonzero(lut != np.arange(len(lut)))}
    sided = {n for n in STRUCTURES if {"left", "right"} & set(n.split("_"))}
    unpaired = {"lung_middle_lobe_right", "atrial_appendage_left"}
    assert swapped == sided - unpaired and len(LR_PAIRS) == 32
    for left, right in LR_PAIRS:
        assert lut[LABEL_OF[left]] == LABEL_OF[right]
        assert left.replace("left", "right") == right


def test_every_two_colours_can_be_told_apart():
    # RGB distance: the stomach and liver were 7 apart, the right lower lobe and heart 4
    distances = {
        (a, b): float(np.linalg.norm(np.subtract(COLOURS[a], COLOURS[b])))
        for a, b in itertools.combinations(STRUCTURES, 2)
    }
    closest = min(distances, key=distances.get)
    assert distances[closest] >= 15, (closest, distances[closest])


def test_mirror_partners_present_needs_each_lateral_structures_partner():
    from ctseg_core.labels import mirror_partners_present

    assert mirror_partners_present(["liver", "kidney_left", "kidney_right"])
    assert not mirror_partners_present(["liver", "kidney_left"])
    assert mirror_partners_present(["liver", "lungs"])  # a merge holds both sides
    assert not mirror_partners_present(["rib_left_1"])
    # a structure with no partner at all: a mirrored pass scores it ~0 (training never mirrors
    # what holds it), so a model learning it gets no mirror TTA
    lobes = ["lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
             "lung_middle_lobe_right", "lung_lower_lobe_right"]  # fmt: skip
    assert not mirror_partners_present(lobes)
    assert not mirror_partners_present(["heart", "atrial_appendage_left"])
    assert mirror_partners_present(["lungs", "heart"])
