"""The 117 TotalSegmentator v2 structures: values, anatomical groups, parts, colours, left/right pairs,
and merges (several structures learned as one, ``MERGES``).

Label value k (1..117) is the channel k - 1 of a one-output-per-structure model and the voxel value
k of a multilabel volume; 0 is background. The order is TotalSegmentator's ("total" task, v2).
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np

from .errors import ConfigError

STRUCTURES: tuple[str, ...] = (
    "spleen", "kidney_right", "kidney_left", "gallbladder", "liver", "stomach", "pancreas",
    "adrenal_gland_right", "adrenal_gland_left", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "esophagus",
    "trachea", "thyroid_gland", "small_bowel", "duodenum", "colon", "urinary_bladder", "prostate",
    "kidney_cyst_left", "kidney_cyst_right", "sacrum", "vertebrae_S1", "vertebrae_L5",
    "vertebrae_L4", "vertebrae_L3", "vertebrae_L2", "vertebrae_L1", "vertebrae_T12",
    "vertebrae_T11", "vertebrae_T10", "vertebrae_T9", "vertebrae_T8", "vertebrae_T7",
    "vertebrae_T6", "vertebrae_T5", "vertebrae_T4", "vertebrae_T3", "vertebrae_T2", "vertebrae_T1",
    "vertebrae_C7", "vertebrae_C6", "vertebrae_C5", "vertebrae_C4", "vertebrae_C3", "vertebrae_C2",
    "vertebrae_C1", "heart", "aorta", "pulmonary_vein", "brachiocephalic_trunk",
    "subclavian_artery_right", "subclavian_artery_left", "common_carotid_artery_right",
    "common_carotid_artery_left", "brachiocephalic_vein_left", "brachiocephalic_vein_right",
    "atrial_appendage_left", "superior_vena_cava", "inferior_vena_cava",
    "portal_vein_and_splenic_vein", "iliac_artery_left", "iliac_artery_right", "iliac_vena_left",
    "iliac_vena_right", "humerus_left", "humerus_right", "scapula_left", "scapula_right",
    "clavicula_left", "clavicula_right", "femur_left", "femur_right", "hip_left", "hip_right",
    "spinal_cord", "gluteus_maximus_left", "gluteus_maximus_right", "gluteus_medius_left",
    "gluteus_medius_right", "gluteus_minimus_left", "gluteus_minimus_right", "autochthon_left",
    "autochthon_right", "iliopsoas_left", "iliopsoas_right", "brain", "skull",
    *(f"rib_left_{i}" for i in range(1, 13)),
    *(f"rib_right_{i}" for i in range(1, 13)),
    "sternum", "costal_cartilages",
)  # fmt: skip
NUM_STRUCTURES = len(STRUCTURES)
assert NUM_STRUCTURES == 117
#: label values 0..117: background and the 117 structures (the only place this is defined)
NUM_LABELS = NUM_STRUCTURES + 1

#: structure name -> label value (1..117)
LABEL_OF: dict[str, int] = {name: value for value, name in enumerate(STRUCTURES, start=1)}
#: label value (1..117) -> structure name; 0 is "background"
NAME_OF: dict[int, str] = {0: "background", **{v: n for n, v in LABEL_OF.items()}}

# TotalSegmentator's own class-map split of the "total" task (class_map_5_parts): label value
# ranges. These are its sub-models, not anatomy (its "muscles" part holds the femurs and hips).
_PART_RANGES: dict[str, tuple[int, int]] = {
    "organs": (1, 24),
    "vertebrae": (25, 50),
    "cardiac": (51, 68),
    "muscles": (69, 91),  # bones of the limbs and girdles, spinal cord, muscles, brain, skull
    "ribs": (92, 117),  # ribs, sternum, costal cartilages
}
#: TotalSegmentator part (sub-model of the "total" task) -> its structures, in label order
PARTS: dict[str, tuple[str, ...]] = {
    part: STRUCTURES[lo - 1 : hi] for part, (lo, hi) in _PART_RANGES.items()
}
#: structure -> TotalSegmentator part ("TotalSegmentator part" in tables)
PART_OF: dict[str, str] = {name: p for p, names in PARTS.items() for name in names}


def _anatomical_group(name: str) -> str:
    """The anatomical group of a structure (``GROUPS`` lists them; every structure in one)."""
    if name.startswith("lung_") or name == "trachea":
        return "lungs"
    if name in ("heart", "atrial_appendage_left"):
        return "heart"
    if name in VESSELS:
        return "vessels"
    if name in ("sacrum", "spinal_cord") or name.startswith("vertebrae_"):
        return "spine"
    if name.startswith("rib_") or name in ("sternum", "costal_cartilages"):
        return "ribs"
    if name.split("_")[0] in ("humerus", "scapula", "clavicula", "femur", "hip", "skull"):
        return "bones"
    if name.split("_")[0] in ("gluteus", "autochthon", "iliopsoas"):
        return "muscles"
    if name == "brain":
        return "brain"
    return "organs"


def _swap_side(name: str) -> str:
    tokens = name.split("_")
    swapped = ["right" if t == "left" else "left" if t == "right" else t for t in tokens]
    return "_".join(swapped)


#: left/right pairs as (left name, right name), in label order of the left structure
LR_PAIRS: tuple[tuple[str, str], ...] = tuple(
    (name, _swap_side(name))
    for name in STRUCTURES
    if "left" in name.split("_") and _swap_side(name) in LABEL_OF
)
#: lateral structures without a partner (a left/right mirror cannot keep them anatomically true)
UNPAIRED_LATERAL: tuple[str, ...] = tuple(
    name
    for name in STRUCTURES
    if {"left", "right"} & set(name.split("_")) and _swap_side(name) not in LABEL_OF
)


#: blood-filled vessels, whose CT intensity depends on the contrast phase (native ~40 HU,
#: arterial-phase arteries ~300 HU); the heart is left out (its label holds the myocardium)
VESSELS: tuple[str, ...] = (
    "aorta", "pulmonary_vein", "brachiocephalic_trunk", "subclavian_artery_right",
    "subclavian_artery_left", "common_carotid_artery_right", "common_carotid_artery_left",
    "brachiocephalic_vein_left", "brachiocephalic_vein_right", "superior_vena_cava",
    "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_left",
    "iliac_artery_right", "iliac_vena_left", "iliac_vena_right",
)  # fmt: skip

#: anatomical group -> its structures in label order; every structure in exactly one group
GROUPS: dict[str, tuple[str, ...]] = {
    group: tuple(n for n in STRUCTURES if _anatomical_group(n) == group)
    for group in ("organs", "lungs", "heart", "vessels", "spine", "ribs", "bones", "muscles",
                  "brain")
}  # fmt: skip
#: structure -> anatomical group (the ``group`` column of evaluation tables)
GROUP_OF: dict[str, str] = {name: g for g, names in GROUPS.items() for name in names}


def lr_swap_lut(structures=()) -> np.ndarray:
    """Lookup table (118,) uint8 mapping each label value to its mirror partner (itself if none).

    Apply it to a label slice after flipping the patient's left/right axis:
    ``labels_mirrored = lut[np.flip(labels, axis=x_axis)]``. The members of a merge among
    ``structures`` (``MERGES``) map to themselves: a merge holds both sides, and its value (its
    first member's, maybe a left one) stands for all of them.
    """
    lut = np.arange(NUM_LABELS, dtype=np.uint8)
    for left, right in LR_PAIRS:
        lut[LABEL_OF[left]], lut[LABEL_OF[right]] = LABEL_OF[right], LABEL_OF[left]
    for name in structures:
        if name in MERGES:
            values = member_values(name)
            lut[values] = values
    return lut


def mirror_partners_present(structures) -> bool:
    """Whether each left/right structure among ``structures`` has its mirror partner among
    them too (a merge holds both sides): then a mirrored pass of a model predicting them scores
    every one of them, and training mirrored its patches. False for a structure that has no
    partner at all (``UNPAIRED_LATERAL``: lung_middle_lobe_right): training never mirrors what
    holds it (``augment``), and a mirrored pass scores it ~0 (its Dice 0.72 -> 0.06 with mirror
    TTA on a phantom model)."""
    if set(structures) & set(UNPAIRED_LATERAL):
        return False
    values = {value_of(name) for name in structures}
    lut = lr_swap_lut(structures)
    return all(int(lut[value]) in values for value in values)


def _make_colours() -> dict[str, tuple[int, int, int]]:
    """A fixed, distinct RGB colour per structure (golden-ratio hue walk, 3 brightness tiers)."""
    colours: dict[str, tuple[int, int, int]] = {}
    for i, name in enumerate(STRUCTURES):
        hue = (i * 0.618033988749895) % 1.0
        saturation = (0.85, 0.6, 0.95)[i % 3]
        value = (0.95, 0.8, 0.65)[(i // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
        colours[name] = (round(r * 255), round(g * 255), round(b * 255))
    # A few conventional anatomy colours, so the common organs look as users expect.
    colours.update(
        liver=(221, 130, 101), spleen=(157, 108, 162), kidney_left=(185, 102, 83),
        kidney_right=(185, 102, 83), heart=(206, 110, 84), aorta=(224, 97, 76),
        inferior_vena_cava=(0, 151, 206), urinary_bladder=(222, 198, 101),
        stomach=(216, 132, 105), gallbladder=(139, 150, 98),
    )  # fmt: skip
    colours["kidney_right"] = (200, 120, 70)  # keep the pair distinguishable side by side
    # neighbours that came out nearly equal (RGB distance 7 and 4): stomach against the liver
    # (3D Slicer's own two colours), the right lower lobe (hue walk) against the heart
    colours["stomach"] = (240, 176, 64)
    colours["lung_lower_lobe_right"] = (118, 170, 224)
    return colours


#: the hue walk with conventional anatomy colours, before neighbours were told apart
BASE_COLOURS: dict[str, tuple[int, int, int]] = _make_colours()
#: the colours that replace ``BASE_COLOURS`` so that touching structures differ (at least
#: ``viz.palette.MIN_TOUCHING_DELTA_E`` CIEDE2000); made by tools/structure_colours.py
COLOURS_FILE = Path(__file__).resolve().parent / "structure_colours.json"


def _recoloured() -> dict[str, tuple[int, int, int]]:
    if not COLOURS_FILE.exists():  # before tools/structure_colours.py first ran
        return {}
    doc = json.loads(COLOURS_FILE.read_text())
    return {name: tuple(int(c) for c in rgb) for name, rgb in doc["recoloured"].items()}


#: structure -> (r, g, b) 0..255: the overlay, legend, mesh and Slicer/ITK-SNAP colour
COLOURS: dict[str, tuple[int, int, int]] = {**BASE_COLOURS, **_recoloured()}


def colour_lut() -> np.ndarray:
    """RGB lookup table (118, 3) uint8 indexed by label value; row 0 (background) is black."""
    lut = np.zeros((NUM_LABELS, 3), dtype=np.uint8)
    for name, value in LABEL_OF.items():
        lut[value] = COLOURS[name]
    return lut


def class_lut(structures: list[str]) -> np.ndarray:
    """(118,) int64: label value -> class index (0 background, i for ``structures[i-1]``).

    Label values of structures not listed map to 0 (background); every member of a merged
    structure (``MERGES``) maps to its class.
    """
    lut = np.zeros(NUM_LABELS, dtype=np.int64)
    for i, name in enumerate(structures, start=1):
        lut[member_values(name)] = i
    return lut


# Merged structures: several structures learned and scored as one (one output channel trained
# on the union of their masks). A run lists a merge's name among its structures in place of
# the members. Its label value is its first member's (ribs: 92, rib_left_1's), so label
# volumes stay 0..117 uint8 and every table indexed by label value holds it; which name that
# value stands for comes from the run's structures (label_map.json), not from the value alone.
#: merge name -> its members, in label order
MERGES: dict[str, tuple[str, ...]] = {
    "ribs": tuple(n for n in STRUCTURES if n.startswith("rib_")),
    "vertebrae": tuple(n for n in STRUCTURES if n.startswith("vertebrae_")),
    "lungs": tuple(n for n in STRUCTURES if n.startswith("lung_")),
}


def is_structure(name: str) -> bool:
    """A TotalSegmentator v2 structure or a merge name (``MERGES``)."""
    return name in LABEL_OF or name in MERGES


def members(name: str) -> tuple[str, ...]:
    """The structures a name stands for: a merge's members, else the structure itself."""
    return MERGES.get(name, (name,))


def member_values(name: str) -> list[int]:
    """The label values a structure or merge name covers in a reference label volume."""
    return [LABEL_OF[n] for n in members(name)]


def structure_groups(structures) -> list[list[int]]:
    """The label values of each structure a run learns (a merge: its members), the structures
    in label order: what foreground sampling draws from, one structure at a time."""
    return sorted((member_values(name) for name in structures), key=lambda values: values[0])


def value_of(name: str) -> int:
    """The label value a structure or merge name is written with (a merge: its first member's)."""
    return LABEL_OF[members(name)[0]]


def group_of(name: str) -> str:
    """The anatomical group of a structure or merge name (a merge: its first member's)."""
    return GROUP_OF[members(name)[0]]


def names_of(structures) -> dict[int, str]:
    """Label value -> name for output written by a run learning ``structures`` (a merge's value
    named by the merge); the other values keep their structure names."""
    return {**NAME_OF, **{value_of(n): n for n in structures}}


def merge_lut(structures) -> np.ndarray:
    """(118,) uint8: reference label value -> the value it is scored as for a run learning
    ``structures``: a listed merge's members -> the merge's value, every other value itself."""
    lut = np.arange(NUM_LABELS, dtype=np.uint8)
    for name in structures:
        lut[member_values(name)] = value_of(name)
    return lut


def merged_annotated(annotated: np.ndarray, structures) -> np.ndarray:
    """(..., 118) bool: ``annotated`` with a listed merge's value annotated only where all its
    members are (the union of the references is whole only then) and its other members' not
    (they are scored as the merge)."""
    out = np.array(annotated, dtype=bool, copy=True)
    for name in structures:
        if name in MERGES:
            values = member_values(name)
            whole = out[..., values].all(axis=-1)
            out[..., values] = False
            out[..., values[0]] = whole
    return out


def merge_structures(structures, merges) -> list[str]:
    """``structures`` with each merge of ``merges`` (names in ``MERGES``) in place of its
    members (at its first member's place; added at the end when none is listed)."""
    out = list(structures)
    for merge in merges:
        if merge not in MERGES:
            raise ConfigError(f"unknown merge {merge!r}; known: {', '.join(MERGES)}")
        if merge in out:
            continue
        group = set(MERGES[merge])
        places = [i for i, n in enumerate(out) if n in group]
        out = [n for n in out if n not in group]
        out.insert(places[0] if places else len(out), merge)
    return out


def label_map() -> dict[str, str]:
    """Channel index -> structure name, as the seed notebooks wrote ``label_map.json``."""
    return {str(channel): name for channel, name in enumerate(STRUCTURES)}
