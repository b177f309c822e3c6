"""One spec per metric: its column name, title, unit, direction and how it is read per label.

Tables, reports, the dashboard's charts and the CLI read ``METRICS``; adding a metric is one
entry here (plus its pure function and tests). Each spec reads its (L,) per-label values from
``LabelScores``, the results of the overlap and surface computations of one subject.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .surface import SurfaceMetrics


@dataclass(frozen=True)
class LabelScores:
    """What one subject's metric functions computed, each (L,) float64 by label value."""

    dice: np.ndarray
    iou: np.ndarray
    surface: SurfaceMetrics


@dataclass(frozen=True)
class MetricSpec:
    """A metric as the tables and pages show it.

    name: the column of the subject x structure table; title: as axes and pickers show it;
    short: a CLI column header; unit: "" or "mm"; higher_is_better: the ranking's direction;
    value_range: (low, high) for a bounded score, None for an unbounded distance (which may be
    inf where a structure was missed); per_label: its (L,) values from a subject's LabelScores.
    """

    name: str
    title: str
    short: str
    unit: str
    higher_is_better: bool
    value_range: tuple[float, float] | None
    per_label: Callable[[LabelScores], np.ndarray]


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("dice", "Dice", "Dice", "", True, (0.0, 1.0), lambda s: s.dice),
        MetricSpec("iou", "IoU", "IoU", "", True, (0.0, 1.0), lambda s: s.iou),
        MetricSpec(
            "hd95_mm", "HD95 (mm)", "HD95 mm", "mm", False, None, lambda s: s.surface.hd95_mm
        ),
        MetricSpec(
            "surface_dice",
            "surface Dice",
            "NSD",
            "",
            True,
            (0.0, 1.0),
            lambda s: s.surface.surface_dice,
        ),
    )
}


def best_first_ascending(metric: str) -> bool:
    """Sort order that puts the best value first: ascending for a distance."""
    return not METRICS[metric].higher_is_better
