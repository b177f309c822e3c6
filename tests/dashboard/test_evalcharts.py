"""The Evaluate page's tables: pooled success rates and per-group counts from the result rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ctseg_core.evaluation.tables import RESULT_COLUMNS
from dashboard.helpers.evalcharts import (
    distribution_chart,
    group_success_rates,
    group_summary,
    ranking,
    subject_table,
)


def _results() -> pd.DataFrame:
    def row(subject, structure, dice, status):
        hd = np.inf if status == "missed" else np.nan if np.isnan(dice) else 2.0
        return {"subject": subject, "structure": structure, "group": "organs", "dice": dice,
                "iou": dice, "hd95_mm": hd, "surface_dice": dice, "ref_volume_ml": 1.0,
                "pred_volume_ml": 1.0, "status": status}  # fmt: skip

    rows = [
        row("a", "liver", 1.0, "detected"),
        row("b", "liver", 0.6, "detected"),
        row("a", "spleen", 0.0, "missed"),
        row("a", "kidney_left", np.nan, "true_negative"),  # absent: not scored
    ]
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def test_success_rates_are_shares_of_the_groups_scored_pairs():
    rates = group_success_rates(_results()).set_index("threshold")
    # 2 of the 3 scored pairs reach 0.5 (the missed spleen scores 0); a mean of the
    # structures' own rates would say (1 + 0) / 2
    assert rates.loc["Dice ≥ 0.5", "rate"] == pytest.approx(2 / 3)
    assert rates.loc["Dice ≥ 0.9", "rate"] == pytest.approx(1 / 3)
    assert (rates["pairs"] == 3).all() and (rates["group"] == "organs").all()


def test_group_summary_counts_the_structures_it_scored():
    (organs,) = group_summary(_results()).to_dict("records")
    assert organs["structures"] == 2  # liver and spleen; the absent kidney is not scored
    # the mean of the structures' means, as the CLI's: liver 0.8 (2 subjects), spleen 0.0
    assert organs["mean Dice"] == pytest.approx((0.8 + 0.0) / 2, abs=1e-4)
    assert (organs["detected"], organs["missed"]) == (2, 1)


def test_small_references_are_hidden_but_absent_ones_stay():
    from dashboard.helpers.evalcharts import without_small_references

    rows = pd.DataFrame({"structure": ["liver", "lung_middle_lobe_right", "heart"],
                         "ref_volume_ml": [1500.0, 0.027, 0.0]})  # fmt: skip
    kept = without_small_references(rows, 0.5)
    assert list(kept["structure"]) == ["liver", "heart"]  # the 0.027 ml reference hidden
    assert len(without_small_references(rows, 0.0)) == 3


def test_subject_table_puts_the_worst_subject_first_and_the_unscored_last():
    results = _results()
    fp = results.iloc[[0]].assign(subject="c", dice=np.nan, status="false_positive")
    table = subject_table(pd.concat([results, fp], ignore_index=True))
    assert list(table["subject"]) == ["a", "b", "c"]  # mean Dice 0.5, 0.6, none scored
    a, b, c = table.to_dict("records")
    assert a["structures scored"] == 2 and a["mean Dice"] == 0.5 and a["missed"] == 1
    assert a["worst structure"] == "spleen" and a["worst Dice"] == 0.0
    assert a["median HD95 mm"] == 2.0  # the missed spleen's infinite distance left out
    assert b["worst structure"] == "liver" and b["worst Dice"] == 0.6
    assert c["structures scored"] == 0 and c["false positive"] == 1
    assert pd.isna(c["worst structure"]) and pd.isna(c["mean Dice"])


def test_a_tiny_overall_difference_is_not_shown_as_zero_beside_a_verdict():
    """ "B − A +0.000 (B better)" read as a contradiction (reviewer): 2 significant digits."""
    from dashboard.helpers.evalcharts import comparison_summary

    overall = {"mean_a": 0.6881, "mean_b": 0.68821, "difference": 0.000108, "verdict": "better",
               "p_value": float("nan"), "p_note": "fewer than 5 subjects", "pairs": 3,
               "missed_a": 0, "missed_b": 0}  # fmt: skip
    text = comparison_summary(overall, "dice")
    assert "B − A +0.00011 (B better)" in text
    assert "B − A +0.020" in comparison_summary({**overall, "difference": 0.02}, "dice")


def test_a_distance_ranking_counts_the_missed_cases_it_leaves_out():
    """HD95 has no value for a missed case: the structure missed most must not rank best
    unsaid, and one missed everywhere is listed last, not dropped."""
    results = _results()
    more = results.iloc[[0, 0, 2]].assign(subject=["c", "d", "b"])  # liver twice, spleen
    more.loc[more.index[-1], ["structure", "dice", "hd95_mm"]] = ["pancreas", 0.0, np.inf]
    results = pd.concat([results, more], ignore_index=True)
    table = ranking(results, "hd95_mm").set_index("structure")
    assert list(table.index) == ["liver", "spleen", "pancreas"]  # never-present kidney: none
    assert table.loc["liver", "count"] == 4 and table.loc["liver", "missed"] == 0
    assert table.loc["spleen", "count"] == 0 and table.loc["spleen", "missed"] == 1
    assert np.isnan(table.loc["pancreas", "mean"]) and table.loc["pancreas", "missed"] == 1
    dice = ranking(results, "dice").set_index("structure")
    assert dice.loc["spleen", "count"] == 1 and dice.loc["spleen", "missed"] == 1  # Dice 0
    title = distribution_chart(results, "hd95_mm").to_dict()["encoding"]["y"]["title"]
    assert title.endswith("(2 missed pairs left out)")
    # a left/right swap (mislocated) has a distance, in the mean: not counted as missed
    swap = results.iloc[[0]].assign(subject="e", status="mislocated", dice=0.0, hd95_mm=80.0)
    table = ranking(pd.concat([results, swap], ignore_index=True), "hd95_mm")
    liver = table.set_index("structure").loc["liver"]
    assert (liver["count"], liver["missed"]) == (5, 0)


def test_tied_structures_keep_their_order_in_the_ranking():
    rows = _results().iloc[[0]]
    names = ["liver", "spleen", "kidney_right", "kidney_left", "gallbladder", "stomach"]
    tied = pd.concat([rows.assign(structure=n) for n in names], ignore_index=True)
    assert list(ranking(tied, "dice")["structure"]) == names


def test_the_dataset_change_stamp_takes_a_broken_link(tmp_path):
    """A dangling symlink in a subject folder crashed Home, Train and Evaluate."""
    from dashboard.cached import _tree_stamp

    (tmp_path / "s0001" / "segmentations").mkdir(parents=True)
    (tmp_path / "s0001" / "ct_backup.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (tmp_path / "s0002").symlink_to(tmp_path / "gone")
    assert _tree_stamp(str(tmp_path)) > 0


def test_the_dataset_change_stamp_takes_a_folder_it_may_not_read(tmp_path):
    """A subject folder, or the dataset folder, without read permission raised PermissionError
    from every page that opens the dataset, before open_dataset could say it in one line; and
    a subject made readable again (chmod changes no mtime) must be read again."""
    import time

    from permissions_kit import run_bound_by_permissions

    from dashboard.cached import _tree_stamp

    data = tmp_path / "data"
    (data / "s0001" / "segmentations").mkdir(parents=True)
    (data / "s0001").chmod(0o000)
    code = "import sys\nfrom dashboard.cached import _tree_stamp\nprint(_tree_stamp(sys.argv[1]))"
    try:
        stamp = float(run_bound_by_permissions(code, str(data)))
        time.sleep(0.05)  # past the filesystem's clock tick
    finally:
        (data / "s0001").chmod(0o755)  # the subject alone: the root's times stay
    assert stamp > 0  # taken, not raised
    assert _tree_stamp(str(data)) > stamp
    data.chmod(0o000)
    try:
        closed = float(run_bound_by_permissions(code, str(data)))
    finally:
        data.chmod(0o755)
    assert closed == 0.0  # open_dataset then says "dataset folder ... cannot be read"


def test_structures_the_comparison_chart_cannot_draw_are_named():
    """B missed the spleen in every pair: no HD95 difference to draw, so the chart left it out
    and the page did not say so."""
    from ctseg_core.evaluation.compare import compare_results
    from dashboard.helpers.evalcharts import comparison_chart, unplotted_structures

    def table(missed: bool) -> pd.DataFrame:
        rows = []
        for k in range(6):
            for name, dice in (("liver", 0.9), ("spleen", 0.0 if missed else 0.9)):
                rows.append({"subject": f"s{k}", "structure": name, "group": "organs",
                             "dice": dice, "iou": dice, "hd95_mm": np.inf if dice == 0 else 2.0,
                             "surface_dice": dice, "ref_volume_ml": 1.0,
                             "pred_volume_ml": 0.0 if dice == 0 else 1.0,
                             "status": "missed" if dice == 0 else "detected"})  # fmt: skip
        return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))

    rows = compare_results(table(False), table(True))
    hd = rows[rows["metric"] == "hd95_mm"]
    drawn = comparison_chart(hd, "hd95_mm").to_dict()
    values = next(iter(drawn["datasets"].values()))
    assert [r["structure"] for r in values] == ["liver"]
    assert unplotted_structures(hd) == ["spleen"]
