"""Charts of an evaluation table (columns of ctseg_core.evaluation.tables.RESULT_COLUMNS)."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd

from ctseg_core.evaluation.tables import DICE_THRESHOLDS
from ctseg_core.labels import GROUPS
from ctseg_core.metrics.specs import METRICS, best_first_ascending
from dashboard.helpers.charts import group_scale

STATUS_COLOURS = {
    "detected": "#2a9d8f",
    "mislocated": "#e9c46a",
    "missed": "#e76f51",
    "false_positive": "#9b5de5",
    "true_negative": "#3a3f4b",
}
METRIC_TITLES = {name: spec.title for name, spec in METRICS.items()}


def without_small_references(results: pd.DataFrame, min_ml: float) -> pd.DataFrame:
    """The rows whose reference volume is at least ``min_ml`` (ml); rows with an absent
    reference (0 ml, NaN metrics) stay, so false positives still count. 0 keeps every row."""
    if min_ml <= 0:
        return results
    ref_ml = results["ref_volume_ml"].astype(float)
    return results[(ref_ml >= min_ml) | (ref_ml == 0)]


def ranking(results: pd.DataFrame, metric: str = "dice") -> pd.DataFrame:
    """Per structure: mean, std and count of a metric over its finite values, and ``missed``:
    its missed pairs (no prediction of it: a distance has none for them, left out of its mean,
    as in the summary; a mislocated one has a distance), best first; ties keep the results' order, and a structure with no finite
    value (missed everywhere) comes last."""
    values = results[metric].astype(float)
    kept = results[values.notna()].assign(  # NaN: not scored (absent, a false positive)
        _value=values.where(np.isfinite(values)),
        _missed=results["status"] == "missed",
    )
    table = (
        kept.groupby(["structure", "group"], sort=False)
        .agg(
            mean=("_value", "mean"),
            std=("_value", "std"),
            count=("_value", "count"),
            missed=("_missed", "sum"),
        )
        .reset_index()
    )
    ascending = best_first_ascending(metric)  # lower is better for a distance
    table = table.sort_values("mean", ascending=ascending, kind="stable", na_position="last")
    return table.reset_index(drop=True)


def ranking_chart(table: pd.DataFrame, metric: str = "dice") -> alt.Chart:
    """Horizontal bars of the per-structure mean, best at the top, coloured by group."""
    height = max(120, 18 * len(table))  # a readable name for every bar: 117 structures, 2.1k px
    bars = (
        alt.Chart(table)
        .mark_bar()
        .encode(
            y=alt.Y(
                "structure:N",
                sort=list(table["structure"]),
                title=None,
                axis=alt.Axis(labelLimit=220, labelOverlap=False),
            ),
            x=alt.X("mean:Q", title=f"mean {METRIC_TITLES.get(metric, metric)}"),
            color=alt.Color("group:N", scale=group_scale(), legend=alt.Legend(orient="top")),
            tooltip=["structure", "group", alt.Tooltip("mean:Q", format=".3f"), "count", "missed"],
        )
    )
    return bars.properties(height=height)


def distribution_chart(results: pd.DataFrame, metric: str = "dice") -> alt.Chart:
    """Box plots of a metric per group (every scored subject x structure pair); the pairs a
    distance has no value for (missed: inf) are counted in the axis title."""
    values = results[metric].astype(float)
    data = results[np.isfinite(values)][["group", "structure", metric]]
    title = METRIC_TITLES.get(metric, metric)
    if missing := int(np.isinf(values).sum()):
        title += f" ({missing} missed pairs left out)"
    return (
        alt.Chart(data)
        .mark_boxplot(extent="min-max", size=40)
        .encode(
            x=alt.X("group:N", sort=list(GROUPS), title=None),
            y=alt.Y(f"{metric}:Q", title=title),
            color=alt.Color("group:N", scale=group_scale(), legend=None),
        )
        .properties(height=280)
    )


def success_rates(summary: pd.DataFrame) -> pd.DataFrame:
    """Per structure: fraction of scored subjects reaching each Dice threshold, and ``n``: the
    subjects it was scored in (a rate of 0 over one subject is not one over fifty)."""
    columns = [c for c in summary.columns if c.startswith("success_dice_")]
    table = summary[["structure", "group", "dice_n", *columns]].copy()
    names = {c: f"Dice ≥ {c.rsplit('_', 1)[-1]}" for c in columns}
    return table.rename(columns={**names, "dice_n": "n"})


def group_success_rates(results: pd.DataFrame) -> pd.DataFrame:
    """Per group and Dice threshold, the share of scored subject x structure pairs at or above
    it (pooled: a structure scored in more subjects weighs more; a missed one scores 0).
    Columns: group, threshold ("Dice ≥ 0.5"), rate, pairs."""
    scored = results.dropna(subset=["dice"])
    rows = [
        {"group": group, "threshold": f"Dice ≥ {t}", "rate": float((part["dice"] >= t).mean()),
         "pairs": len(part)}
        for group, part in scored.groupby("group", sort=False)
        for t in DICE_THRESHOLDS
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["group", "threshold", "rate", "pairs"])


def success_chart(results: pd.DataFrame) -> alt.Chart:
    """``group_success_rates`` as bars, one column of thresholds per group."""
    return (
        alt.Chart(group_success_rates(results))
        .mark_bar()
        .encode(
            x=alt.X("threshold:N", title=None),
            y=alt.Y("rate:Q", title="success rate", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("group:N", scale=group_scale(), legend=None),
            column=alt.Column("group:N", sort=list(GROUPS), title=None),
            tooltip=["group", "threshold", alt.Tooltip("rate:Q", format=".2f"), "pairs"],
        )
        .properties(width=90, height=220)
    )


DETECTION_FEW_SUBJECTS = 24


def detection_chart(results: pd.DataFrame) -> alt.Chart:
    """Structure x subject matrix of detected / mislocated / missed / false positive (true
    negatives dim).

    A row per structure (16 px, every name shown: the chart grows downwards) and the subjects
    across: 36 px columns for up to ``DETECTION_FEW_SUBJECTS`` (show it with width="content"),
    else as wide as the page (width="stretch": a full test split of ~90 subjects gets ~10 px
    columns; the tooltip names each cell).
    """
    data = results[["subject", "structure", "group", "status", "dice"]]
    # structures absent from every reference and prediction carry no information: left out
    shown = data.groupby("structure", sort=False)["status"].apply(
        lambda s: (s != "true_negative").any()
    )
    data = data[data["structure"].isin(shown[shown].index)]
    order = list(dict.fromkeys(data["structure"]))  # the results' order: by label value
    few = data["subject"].nunique() <= DETECTION_FEW_SUBJECTS
    return (
        alt.Chart(data)
        .mark_rect(stroke="#0e1117", strokeWidth=0.5)
        .encode(
            y=alt.Y(
                "structure:N",
                title=None,
                sort=order,
                axis=alt.Axis(labelOverlap=False, labelLimit=220),
            ),
            x=alt.X("subject:N", title=None, axis=alt.Axis(labelAngle=-45, orient="top")),
            color=alt.Color(
                "status:N",
                scale=alt.Scale(domain=list(STATUS_COLOURS), range=list(STATUS_COLOURS.values())),
                legend=alt.Legend(orient="top", title=None),
            ),
            tooltip=[
                "subject",
                "structure",
                "group",
                "status",
                alt.Tooltip("dice:Q", format=".3f"),
            ],
        )
        .properties(height=alt.Step(16), **({"width": alt.Step(36)} if few else {}))
    )


def group_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per group: structures scored, the mean and median over them of each structure's mean
    Dice (as the CLI's "mean Dice over structures"; a structure scored in more subjects does
    not weigh more), the median HD95 of its pairs, detection counts."""
    rows = []
    for group in GROUPS:
        part = results[results["group"] == group]
        if part.empty:
            continue
        dice = part["dice"].astype(float).groupby(part["structure"], sort=False).mean()
        hd = part["hd95_mm"].astype(float)
        rows.append(
            {
                "group": group,
                "structures": int(dice.notna().sum()),
                "mean Dice": round(float(np.nanmean(dice)), 4) if dice.notna().any() else None,
                "median Dice": round(float(np.nanmedian(dice)), 4) if dice.notna().any() else None,
                "median HD95 mm": round(float(np.median(hd[np.isfinite(hd)])), 2)
                if np.isfinite(hd).any()
                else None,
                "detected": int((part["status"] == "detected").sum()),
                "mislocated": int((part["status"] == "mislocated").sum()),
                "missed": int((part["status"] == "missed").sum()),
                "false positive": int((part["status"] == "false_positive").sum()),
            }
        )
    return pd.DataFrame(rows)


def worst_case(results: pd.DataFrame, structure: str) -> tuple[str, float] | None:
    """(subject, dice) of a structure's lowest-Dice scored subject; a false positive if none."""
    rows = results[results["structure"] == structure]
    scored = rows[rows["dice"].notna()]
    if not scored.empty:
        worst = scored.loc[scored["dice"].astype(float).idxmin()]
        return str(worst["subject"]), float(worst["dice"])
    fp = rows[rows["status"] == "false_positive"]
    if not fp.empty:
        return str(fp.iloc[0]["subject"]), float("nan")
    return None


SUBJECT_COLUMNS = ["subject", "structures scored", "mean Dice", "worst structure", "worst Dice",
                   "missed", "mislocated", "false positive", "median HD95 mm"]  # fmt: skip


def subject_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per subject, worst mean Dice first: structures scored, mean Dice, the worst structure
    and its Dice, missed, mislocated and false-positive counts, median HD95 (mm).

    A subject with no scored pair (only false positives, say) comes last with None Dice; its
    worst structure is None. Columns as the Evaluate page shows them.
    """
    rows = []
    for subject, part in results.groupby("subject", sort=False):
        dice = part["dice"].astype(float)
        hd = part["hd95_mm"].astype(float)
        scored = part[dice.notna()]
        worst = scored.loc[scored["dice"].astype(float).idxmin()] if len(scored) else None
        rows.append(
            {
                "subject": str(subject),
                "structures scored": len(scored),
                "mean Dice": round(float(dice.mean()), 4) if len(scored) else None,
                "worst structure": None if worst is None else str(worst["structure"]),
                "worst Dice": None if worst is None else round(float(worst["dice"]), 4),
                "missed": int((part["status"] == "missed").sum()),
                "mislocated": int((part["status"] == "mislocated").sum()),
                "false positive": int((part["status"] == "false_positive").sum()),
                "median HD95 mm": round(float(np.median(hd[np.isfinite(hd)])), 2)
                if np.isfinite(hd).any()
                else None,
            }
        )
    table = pd.DataFrame(rows, columns=SUBJECT_COLUMNS)
    order = table["mean Dice"].astype(float).sort_values(na_position="last", kind="stable").index
    return table.loc[order].reset_index(drop=True)


def skipped_table(skipped: dict[str, str]) -> pd.DataFrame:
    """The subjects an evaluation could not score and why (as ``skipped_<split>.csv``)."""
    from ctseg_core.evaluation.evaluate import SKIPPED_COLUMNS

    return pd.DataFrame(list(skipped.items()), columns=list(SKIPPED_COLUMNS))


VERDICT_COLOURS = {"better": "#2a9d8f", "worse": "#e76f51", "same": "#8d99ae"}


def unplotted_structures(rows: pd.DataFrame) -> list[str]:
    """The structures of one metric's ``compare_results`` rows that ``comparison_chart``
    leaves out (no finite difference), in the rows' order."""
    from ctseg_core.evaluation.compare import OVERALL

    finite = np.isfinite(rows["difference"].astype(float))
    return list(rows.loc[(rows["structure"] != OVERALL) & ~finite, "structure"])


def comparison_chart(rows: pd.DataFrame, metric: str) -> alt.Chart:
    """Horizontal bars of B − A per structure, in the order of ``rows`` (one metric's rows of
    ``compare_results``: B's largest gain at the top), coloured by whether B is better.

    The row over all structures and structures without a finite difference (every pair
    missed in A or B) are left out; the table lists them.
    """
    from ctseg_core.evaluation.compare import OVERALL

    data = rows[(rows["structure"] != OVERALL) & np.isfinite(rows["difference"].astype(float))]
    spec = METRICS[metric]
    direction = "higher" if spec.higher_is_better else "lower"
    return (
        alt.Chart(data)
        .mark_bar()
        .encode(
            y=alt.Y(
                "structure:N",
                sort=list(data["structure"]),
                title=None,
                axis=alt.Axis(labelLimit=220, labelOverlap=False),
            ),
            x=alt.X("difference:Q", title=f"B − A, {spec.title} ({direction} is better)"),
            color=alt.Color(
                "verdict:N",
                scale=alt.Scale(domain=list(VERDICT_COLOURS), range=list(VERDICT_COLOURS.values())),
                legend=alt.Legend(orient="top", title="B is"),
            ),
            tooltip=[
                "structure",
                "group",
                "pairs",
                alt.Tooltip("mean_a:Q", format=".3f", title="A"),
                alt.Tooltip("mean_b:Q", format=".3f", title="B"),
                alt.Tooltip("difference:Q", format="+.3f", title="B − A"),
                alt.Tooltip("p_value:Q", format=".4f", title="p"),
            ],
        )
        .properties(height=max(120, 18 * len(data)))
    )


def comparison_table(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric's rows of ``compare_results`` as the page shows them (the overall row
    first, as in the CSV); missed counts only for a distance."""
    table = rows.rename(
        columns={
            "mean_a": "A",
            "mean_b": "B",
            "difference": "B − A",
            "verdict": "B is",
            "p_value": "p (Wilcoxon)",
            "p_note": "about p",
            "missed_a": "missed in A",
            "missed_b": "missed in B",
        }
    ).drop(columns=["metric", "unit"])
    if METRICS[metric].value_range is not None:
        table = table.drop(columns=["missed in A", "missed in B"])
    return table.reset_index(drop=True)


def _signed(value: float) -> str:
    """``value`` with its sign, 3 decimals; one that rounds to 0 there in 2 significant
    digits ("B better" beside "+0.000" read as a contradiction)."""
    if value != 0 and abs(value) < 0.0005 and np.isfinite(value):
        return f"{value:+.2g}"
    return f"{value:+.3f}"


def comparison_summary(overall: dict, metric: str) -> str:
    """One sentence of the row over all structures (numbers and fixed words only)."""
    spec = METRICS[metric]
    unit = f" {spec.unit}" if spec.unit else ""
    p = overall["p_value"]
    if np.isfinite(p):  # a note beside a p-value: the subjects' means lean the other way
        test = f"p = {p:.4f}" + (f" ({overall['p_note']})" if overall["p_note"] else "")
    else:
        test = f"no p-value ({overall['p_note'] or 'no data'})"
    missed = (
        f"; missed: {overall['missed_a']} in A, {overall['missed_b']} in B"
        if spec.value_range is None
        else ""
    )
    verdict = f" (B {overall['verdict']})" if overall["verdict"] else ""
    return (
        f"Over all structures: mean {spec.title} A {overall['mean_a']:.3f}, B "
        f"{overall['mean_b']:.3f}, B − A {_signed(overall['difference'])}{unit}{verdict}{missed}. "
        f"Paired Wilcoxon signed-rank test of the subjects' means ({overall['pairs']} "
        f"subjects): {test}."
    )
