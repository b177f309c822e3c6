"""Tables of an evaluation: a subject's rows of metrics, per-structure summaries and
per-subject detection.

All take or return pandas DataFrames; ``RESULT_COLUMNS`` are the columns of the subject x
structure table that ``evaluation.evaluate_predictions`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..labels import NAME_OF, NUM_STRUCTURES, group_of, value_of
from ..metrics import compute_confusion, compute_dice_iou, compute_surface_metrics, overlap_counts
from ..metrics.specs import METRICS, LabelScores

DICE_THRESHOLDS = (0.5, 0.7, 0.9)
RESULT_COLUMNS = (
    "subject", "structure", "group", *METRICS, "ref_volume_ml", "pred_volume_ml", "status",
)  # fmt: skip


#: a structure's status in a subject (``metrics.overlap.OverlapCounts``), in table order
STATUSES = ("detected", "mislocated", "missed", "false_positive", "true_negative")


def summarize_results(results: pd.DataFrame) -> pd.DataFrame:
    """Per structure: mean/median/std and n of each metric, success rates at Dice thresholds.

    NaN (reference absent) is left out of every statistic; HD95 inf (missed) is left out of the
    HD95 mean/median/std and counted in ``missed``. ``*_std`` is the sample standard deviation
    (ddof=1; NaN with a single value). ``success_dice_<t>`` is the fraction of scored subjects
    with Dice >= t (a missed structure scores 0).
    """
    out = []
    for structure, rows in results.groupby("structure", sort=False):
        record: dict = {"structure": structure, "group": rows["group"].iloc[0]}
        for metric in METRICS:
            values = rows[metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            record[f"{metric}_mean"] = values.mean() if values.size else np.nan
            record[f"{metric}_median"] = np.median(values) if values.size else np.nan
            # the sample SD (n - 1), as pandas and most papers report it; NaN for one value
            record[f"{metric}_std"] = values.std(ddof=1) if values.size > 1 else np.nan
            record[f"{metric}_n"] = values.size
        dice = rows["dice"].dropna().to_numpy(dtype=float)
        for t in DICE_THRESHOLDS:
            record[f"success_dice_{t}"] = (dice >= t).mean() if dice.size else np.nan
        for status in STATUSES:
            record[status] = int((rows["status"] == status).sum())
        out.append(record)
    summary = pd.DataFrame(out)
    if not summary.empty:
        summary["label"] = summary["structure"].map(value_of)  # a merge at its first member
        summary = summary.sort_values("label").drop(columns="label").reset_index(drop=True)
    return summary


def detection_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per subject: counts and names of detected, mislocated, missed and false-positive
    structures (and the count of true negatives)."""
    out = []
    for subject, rows in results.groupby("subject", sort=False):
        record: dict = {"subject": subject}
        for status in STATUSES:
            names = rows.loc[rows["status"] == status, "structure"].tolist()
            record[f"n_{status}"] = len(names)
            if status != "true_negative":
                record[status] = ";".join(names)
        out.append(record)
    return pd.DataFrame(out)


def subject_rows(
    subject_id: str,
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing_mm: Sequence[float],
    annotated: np.ndarray,
    tolerance_mm: float = 3.0,
    names: dict[int, str] | None = None,
) -> list[dict]:
    """Rows (one per annotated structure) of one subject's metrics.

    reference, prediction: (X, Y, Z) integer labels on one grid; spacing_mm: (x, y, z) mm;
    annotated: (118,) bool, False for structures excluded entirely (mask file missing);
    names: value -> structure name where it is not ``NAME_OF``'s (a merge, ``labels.names_of``).
    """
    confusion = compute_confusion(reference, prediction)
    dice, iou = compute_dice_iou(confusion, annotated)
    counts = overlap_counts(confusion, annotated)
    scored = [
        k for k in range(1, NUM_STRUCTURES + 1) if annotated[k] and counts.reference_voxels[k]
    ]
    surface = compute_surface_metrics(
        reference, prediction, spacing_mm, labels=scored, tolerance_mm=tolerance_mm,
        annotated=annotated,
    )  # fmt: skip
    scores = LabelScores(dice, iou, surface)
    per_metric = {name: spec.per_label(scores) for name, spec in METRICS.items()}
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    rows = []
    for k in range(1, NUM_STRUCTURES + 1):
        if not annotated[k]:
            continue
        status = (
            "detected" if counts.detected[k]
            else "mislocated" if counts.mislocated[k]
            else "missed" if counts.missed[k]
            else "false_positive" if counts.false_positive[k]
            else "true_negative"
        )  # fmt: skip
        rows.append(
            {
                "subject": subject_id,
                "structure": (names or NAME_OF)[k],
                "group": group_of((names or NAME_OF)[k]),
                **{name: values[k] for name, values in per_metric.items()},
                "ref_volume_ml": counts.reference_voxels[k] * voxel_ml,
                "pred_volume_ml": counts.prediction_voxels[k] * voxel_ml,
                "status": status,
            }
        )
    return rows
