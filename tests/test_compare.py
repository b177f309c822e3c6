"""Two evaluations side by side: differences and Wilcoxon p-values equal to scipy on the paired
arrays, inf (missed) counted and ranked, the real TotalSegmentator --fast result against the
reference itself, the folders listed and written, the CLI's exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from ctseg_core.cli import main
from ctseg_core.errors import ConfigError, DataError
from ctseg_core.evaluation.compare import (
    COMPARISON_COLUMNS,
    OVERALL,
    compare_evaluations,
    compare_results,
    comparison_dir,
    list_evaluations,
)
from ctseg_core.evaluation.evaluate import evaluate_predictions
from ctseg_core.evaluation.paired_test import MIN_PAIRS
from ctseg_core.evaluation.tables import RESULT_COLUMNS

STRUCTURES = ("liver", "spleen", "heart")


def table(values: dict[str, np.ndarray], subjects, hd95: dict | None = None) -> pd.DataFrame:
    """A results table: ``values[structure]`` the Dice of each subject (NaN: not scored)."""
    rows = []
    for structure, dice in values.items():
        for i, subject in enumerate(subjects):
            hd = (hd95 or {}).get(structure, np.full(len(subjects), 2.0))[i]
            rows.append({"subject": subject, "structure": structure, "group": "",
                         "dice": dice[i], "iou": dice[i], "hd95_mm": hd,
                         "surface_dice": dice[i], "ref_volume_ml": 1.0, "pred_volume_ml": 1.0,
                         "status": "detected"})  # fmt: skip
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def rows_of(result: pd.DataFrame, metric: str) -> pd.DataFrame:
    return result[result["metric"] == metric].set_index("structure")


def test_differences_and_p_values_equal_scipy_on_the_paired_arrays():
    rng = np.random.default_rng(7)
    subjects = [f"s{i:04d}" for i in range(12)]
    a = {s: rng.uniform(0.6, 0.95, 12) for s in STRUCTURES}
    shift = {"liver": 0.04, "spleen": -0.02, "heart": 0.0}
    b = {s: np.clip(a[s] + shift[s] + rng.normal(0, 0.02, 12), 0, 1) for s in STRUCTURES}
    a["spleen"][3] = np.nan  # not scored in A: subject 3's spleen pairs with nothing
    b["heart"][[0, 5]] = np.nan
    # s0011 is in A only, s0012 in B only
    extra = table({s: np.array([0.5]) for s in STRUCTURES}, ["s0012"])
    table_b = table(b, subjects)[lambda t: t["subject"] != "s0011"]
    result = compare_results(table(a, subjects), pd.concat([table_b, extra], ignore_index=True))
    assert list(result.columns) == list(COMPARISON_COLUMNS)
    assert result.attrs["only_a"] == ["s0011"] and result.attrs["only_b"] == ["s0012"]
    dice = rows_of(result, "dice")
    kept = np.arange(11)  # s0000 .. s0010 in both
    for structure in STRUCTURES:
        va, vb = a[structure][kept], b[structure][kept]
        paired = ~np.isnan(va) & ~np.isnan(vb)
        va, vb = va[paired], vb[paired]
        row = dice.loc[structure]
        assert row["pairs"] == paired.sum()
        assert row["mean_a"] == pytest.approx(va.mean(), abs=1e-12)
        assert row["mean_b"] == pytest.approx(vb.mean(), abs=1e-12)
        # to the tick of 1e-9 (float noise in scores is far below it)
        assert row["difference"] == pytest.approx(vb.mean() - va.mean(), abs=6e-10)
        assert row["p_value"] == pytest.approx(wilcoxon(vb - va).pvalue, rel=1e-12)
        assert row["verdict"] == ("better" if vb.mean() > va.mean() else "worse")
    assert dice.loc["liver", "verdict"] == "better" and dice.loc["liver", "p_value"] < 0.01
    assert dice.loc["spleen", "verdict"] == "worse"
    # sorted by the difference, B's largest gain first, after the row over all structures
    order = list(dice.index)
    assert order[0] == OVERALL and order[1] == "liver" and order[-1] == "spleen"
    assert list(dice["difference"].iloc[1:]) == sorted(dice["difference"].iloc[1:], reverse=True)
    overall = dice.loc[OVERALL]
    assert overall["mean_a"] == pytest.approx(dice["mean_a"].iloc[1:].mean())
    assert overall["difference"] == pytest.approx(dice["difference"].iloc[1:].mean())
    # the test over subjects pairs each one's mean over its structures scored in both
    mean_a = [np.nanmean([a[s][i] for s in STRUCTURES if not np.isnan(a[s][i] + b[s][i])])
              for i in kept]  # fmt: skip
    mean_b = [np.nanmean([b[s][i] for s in STRUCTURES if not np.isnan(a[s][i] + b[s][i])])
              for i in kept]  # fmt: skip
    assert overall["pairs"] == 11
    expected = wilcoxon(np.array(mean_b) - np.array(mean_a)).pvalue
    assert overall["p_value"] == pytest.approx(expected, rel=1e-12)
    assert set(result["metric"]) == {"dice", "iou", "hd95_mm", "surface_dice"}
    assert (rows_of(result, "hd95_mm")["unit"] == "mm").all()


def test_differences_equal_up_to_float_noise_tie_and_equal_means_are_the_same():
    """HD95 on a 0.7 mm grid: differences of one voxel step that float32 left apart in their
    last bits rank as ties, as scipy ranks the exact steps (they once gave p = 0.125 for
    scipy's 0.1875); Dice differences of 0.05 alike; and the same values in another order
    give the same mean, "same" (pandas' sum made one of them smaller: "worse")."""
    from ctseg_core.metrics.surface import compute_surface_metrics

    def hd95(shift: int) -> float:  # a cube against itself moved ``shift`` voxels along x
        ref = np.zeros((30, 20, 12), dtype=np.uint8)
        ref[8:18, 6:14, 3:9] = 1
        pred = np.roll(ref, shift, axis=0)
        return float(compute_surface_metrics(pred, ref, (0.7, 0.7, 5.0)).hd95_mm[1])

    subjects = [f"s{i}" for i in range(6)]
    steps_a, steps_b = (2, 3, 4, 5, 1, 3), (1, 2, 3, 4, 2, 1)
    hd_a = {"liver": np.array([hd95(k) for k in steps_a])}
    hd_b = {"liver": np.array([hd95(k) for k in steps_b])}
    noisy = hd_b["liver"] - hd_a["liver"]
    assert len(set(np.abs(noisy[:5]).tolist())) > 1  # float32: not equal as they come
    dice_a = np.array([0.8, 0.6, 0.5, 0.75, 0.3, 0.2])
    dice_b = np.array([0.85, 0.65, 0.55, 0.70, 0.35, 0.2])
    result = compare_results(
        table({"liver": dice_a}, subjects, hd_a), table({"liver": dice_b}, subjects, hd_b)
    )
    exact = 0.7 * (np.array(steps_b) - np.array(steps_a))
    hd_row = rows_of(result, "hd95_mm").loc["liver"]
    assert hd_row["p_value"] == pytest.approx(wilcoxon(exact).pvalue)  # 0.1875
    assert wilcoxon(noisy).pvalue != pytest.approx(wilcoxon(exact).pvalue)
    dice_row = rows_of(result, "dice").loc["liver"]
    steps = wilcoxon([0.05, 0.05, 0.05, -0.05, 0.05, 0.0]).pvalue
    assert wilcoxon(dice_b - dice_a).pvalue != pytest.approx(steps)  # float64 noise: no ties
    assert dice_row["p_value"] == pytest.approx(steps)
    same = compare_results(
        table({"liver": np.array([0.1, 0.2, 0.3])}, subjects[:3]),
        table({"liver": np.array([0.3, 0.2, 0.1])}, subjects[:3]),
    )
    for structure in (OVERALL, "liver"):
        row = rows_of(same, "dice").loc[structure]
        assert row["difference"] == 0 and row["verdict"] == "same"


def test_missed_distances_are_counted_left_out_of_the_means_and_ranked_in_the_test():
    subjects = [f"s{i}" for i in range(8)]
    hd_a = np.array([1.0, 2.0, 3.0, 4.0, np.inf, 2.0, np.inf, 5.0])
    hd_b = np.array([2.0, 3.5, 3.0, 6.0, 1.0, np.inf, np.inf, 9.0])
    dice = {"liver": np.full(8, 0.9)}
    result = compare_results(
        table(dice, subjects, {"liver": hd_a}), table(dice, subjects, {"liver": hd_b})
    )
    row = rows_of(result, "hd95_mm").loc["liver"]
    finite = np.isfinite(hd_a) & np.isfinite(hd_b)
    with np.errstate(invalid="ignore"):  # inf - inf
        d = hd_b - hd_a
    assert row["pairs"] == 8 and row["missed_a"] == 2 and row["missed_b"] == 2
    assert row["mean_a"] == pytest.approx(hd_a[finite].mean())
    assert row["difference"] == pytest.approx(d[finite].mean())  # 1.7
    assert row["verdict"] == "worse"  # larger distances in B
    d[np.isnan(d)] = 0.0  # both missed: a tie; scipy ranks +-inf above every finite difference
    assert row["p_value"] == pytest.approx(wilcoxon(d).pvalue, rel=1e-12)
    # every pair of a structure missed in one of the two: the verdict counts the misses
    hd_b = np.where(np.arange(8) < 3, np.inf, 2.0)
    result = compare_results(
        table(dice, subjects, {"liver": np.full(8, np.inf)}),
        table(dice, subjects, {"liver": hd_b}),
    )
    row = rows_of(result, "hd95_mm").loc["liver"]
    assert np.isnan(row["difference"]) and row["missed_a"] == 8 and row["missed_b"] == 3
    assert row["verdict"] == "better"  # B found 5 that A missed
    assert row["p_value"] == pytest.approx(wilcoxon(np.r_[np.zeros(3), -np.ones(5)]).pvalue)


def test_a_distance_verdict_counts_the_misses_where_they_differ():
    """B misses the liver in 9 of 10 subjects and is 1 mm nearer on the one it finds: its
    HD95 verdict is "worse", as its test leans (it said "better", from that one pair); over
    all structures too. Where the misses go B's way the verdict follows them, and where A and
    B miss alike the mean difference decides as before."""
    subjects = [f"s{i}" for i in range(10)]
    a = table({"liver": np.full(10, 0.9)}, subjects, {"liver": np.full(10, 5.0)})
    hd_b = np.r_[4.0, np.full(9, np.inf)]
    b = table({"liver": np.r_[0.92, np.zeros(9)]}, subjects, {"liver": hd_b})
    hd = rows_of(compare_results(a, b), "hd95_mm")
    assert hd.loc["liver", "difference"] == pytest.approx(-1.0)  # the finite pair's gain
    assert hd.loc["liver", "missed_b"] == 9 and hd.loc["liver", "verdict"] == "worse"
    assert hd.loc[OVERALL, "verdict"] == "worse"
    assert rows_of(compare_results(b, a), "hd95_mm").loc["liver", "verdict"] == "better"
    # one extra miss against nine pairs 1 mm nearer: the signed-rank sum leans to B
    hd_b = np.r_[np.full(9, 4.0), np.inf]
    b = table({"liver": np.full(10, 0.9)}, subjects, {"liver": hd_b})
    row = rows_of(compare_results(a, b), "hd95_mm").loc["liver"]
    d = np.r_[np.full(9, -1.0), 100.0]  # the miss ranks above every finite difference
    assert row["verdict"] == "better" and row["p_value"] == pytest.approx(wilcoxon(d).pvalue)
    # over all structures: B 5 mm nearer on every pair of three structures, one spleen missed:
    # "better", as every structure and the subjects' test say (it read "worse" from the miss)
    dice = {s: np.full(10, 0.9) for s in ("liver", "spleen", "aorta")}
    a = table(dice, subjects, {s: np.full(10, 8.0) for s in dice})
    hd_b = {s: np.full(10, 3.0) for s in dice}
    hd_b["spleen"][0] = np.inf
    rows = rows_of(compare_results(a, table(dice, subjects, hd_b)), "hd95_mm")
    assert rows.loc[OVERALL, "missed_b"] == 1 and rows.loc[OVERALL, "p_value"] < 0.01
    assert set(rows["verdict"]) == {"better"}


def test_no_p_value_for_few_pairs_or_no_difference_and_the_reason_is_said():
    few = [f"s{i}" for i in range(MIN_PAIRS - 1)]
    dice = {"liver": np.linspace(0.5, 0.8, len(few))}
    row = rows_of(compare_results(table(dice, few), table(dice, few)), "dice").loc["liver"]
    assert np.isnan(row["p_value"]) and row["p_note"] == f"fewer than {MIN_PAIRS} pairs"
    overall = rows_of(compare_results(table(dice, few), table(dice, few)), "dice").loc[OVERALL]
    assert overall["p_note"] == f"fewer than {MIN_PAIRS} subjects"
    enough = [f"s{i}" for i in range(MIN_PAIRS)]
    dice = {"liver": np.linspace(0.5, 0.8, MIN_PAIRS)}
    row = rows_of(compare_results(table(dice, enough), table(dice, enough)), "dice").loc["liver"]
    assert np.isnan(row["p_value"]) and row["p_note"] == "no difference in any of the pairs"
    assert row["verdict"] == "same" and row["difference"] == 0.0
    # zero differences are dropped from the test: the pairs that differ must reach MIN_PAIRS
    more = [f"s{i}" for i in range(MIN_PAIRS + 3)]
    a = {"liver": np.linspace(0.5, 0.8, len(more))}
    b = {"liver": a["liver"] + np.r_[np.zeros(4), np.full(len(more) - 4, 0.05)]}
    row = rows_of(compare_results(table(a, more), table(b, more)), "dice").loc["liver"]
    assert np.isnan(row["p_value"]) and row["verdict"] == "better"
    assert row["p_note"] == f"fewer than {MIN_PAIRS} pairs differ: 4 of {MIN_PAIRS + 3}"
    b["liver"][3] += 0.05  # 5 differ, all one way: 2 * 0.5 ** 5
    row = rows_of(compare_results(table(a, more), table(b, more)), "dice").loc["liver"]
    assert row["p_value"] == pytest.approx(0.0625) and row["p_note"] == ""


def test_hd95_lower_is_better_and_dice_higher_is_better():
    subjects = [f"s{i}" for i in range(6)]
    a = table({"liver": np.full(6, 0.8)}, subjects, {"liver": np.full(6, 4.0)})
    b = table({"liver": np.full(6, 0.9)}, subjects, {"liver": np.full(6, 2.0)})
    result = compare_results(a, b)
    assert rows_of(result, "dice").loc["liver", "verdict"] == "better"
    assert rows_of(result, "hd95_mm").loc["liver", "difference"] == pytest.approx(-2.0)
    assert rows_of(result, "hd95_mm").loc["liver", "verdict"] == "better"
    assert rows_of(compare_results(b, a), "hd95_mm").loc["liver", "verdict"] == "worse"


def test_tables_without_a_common_pair_or_with_a_repeated_pair_are_refused():
    a = table({"liver": np.full(2, 0.8)}, ["s0", "s1"])
    b = table({"liver": np.full(2, 0.8)}, ["s2", "s3"])
    with pytest.raises(DataError, match="no subject x structure is scored in both"):
        compare_results(a, b)
    with pytest.raises(DataError, match=r"scores \(s0, liver\) twice"):
        compare_results(pd.concat([a, a]), a)


@pytest.fixture(scope="module")
def real_evaluations(tmp_path_factory, s0000_root, extra_dir, session_cache):
    """Evaluations of s0000: the reference multilabel itself (A) and TotalSegmentator --fast (B)."""
    base = tmp_path_factory.mktemp("compare")
    folders = {}
    for name, file in (("reference", "s0000_totalsegmentator_multilabel.nii.gz"),
                       ("fast", "s0000_totalsegmentator_fast_multilabel.nii.gz")):  # fmt: skip
        predictions = base / "predictions" / name
        predictions.mkdir(parents=True)
        (predictions / "s0000.nii.gz").write_bytes((extra_dir / file).read_bytes())
        folders[name] = base / "checkpoints" / "evaluations" / name
        evaluate_predictions(
            s0000_root, "train", predictions, folders[name], cache_dir=session_cache, report=False
        )
    return base, folders


def test_totalsegmentator_fast_against_the_reference_itself(real_evaluations, capsys):
    base, folders = real_evaluations
    out = comparison_dir(base / "checkpoints", folders["reference"], folders["fast"])
    comparison = compare_evaluations(folders["reference"], folders["fast"], "train", out)
    written = pd.read_csv(comparison.csv, keep_default_na=False, na_values=[""])
    assert comparison.csv == out / "comparison_train.csv" and len(written) == len(comparison.table)
    dice = rows_of(written, "dice").drop(OVERALL)
    assert len(dice) == 41  # the structures present in s0000
    assert (dice["mean_a"] == 1.0).all() and (dice["pairs"] == 1).all()
    assert (dice["difference"] <= 0).all() and (dice["verdict"] == "worse").all()
    assert dice["difference"].idxmin() == "lung_middle_lobe_right"  # missed by --fast: Dice 0
    assert dice["p_value"].isna().all() and (dice["p_note"] == "fewer than 5 pairs").all()
    hd = rows_of(written, "hd95_mm")
    assert hd.loc["lung_middle_lobe_right", "missed_b"] == 1
    assert hd.loc["lung_middle_lobe_right", "verdict"] == "worse"
    assert (hd.drop(OVERALL)["mean_a"].dropna() == 0.0).all()
    assert (hd.drop(OVERALL)["difference"].dropna() >= 0).all()
    source = json.loads((out / "source_train.json").read_text())
    assert source["a"] == str(folders["reference"].resolve()) and source["subjects"] == ["s0000"]
    assert source["b_source"]["predictions_folder"].endswith("fast") and source["notes"] == []
    # the CLI: the same table, and a one-line refusal for a split neither evaluated
    argv = ["compare", str(folders["reference"]), str(folders["fast"]), "--split", "train"]
    assert main([*argv, "--out", str(base / "cli"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert len(printed["rows"]) == len(written)
    assert pd.read_csv(base / "cli" / "comparison_train.csv").equals(pd.read_csv(comparison.csv))
    assert main([*argv, "--out", str(base / "cli"), "--metric", "dice"]) == 0
    shown = capsys.readouterr().out
    assert "Dice: B - A per structure (higher is better)" in shown and "HD95" not in shown
    assert main(["compare", str(folders["reference"]), str(folders["fast"])]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: evaluation_results_test.csv is not in {folders['reference']}; it holds "
        "split(s) train: choose one with --split, or evaluate test\n"
    )
    assert main(["compare", str(folders["fast"]), str(folders["fast"]), "--split", "train"]) == 2
    assert "the same evaluation" in capsys.readouterr().err


def test_the_checkpoints_root_lists_run_and_folder_evaluations(tmp_path):
    root = tmp_path / "checkpoints"
    results = table({"liver": np.full(1, 0.8)}, ["s0"]).to_csv(index=False)
    for folder, split in (("run1/evaluation", "test"), ("run1/evaluation_last", "val"),
                          ("evaluations/preds-0a1b2c3d", "test"), ("run2/evaluation", "")):  # fmt: skip
        (root / folder).mkdir(parents=True)
        if split:
            (root / folder / f"evaluation_results_{split}.csv").write_text(results)
    (root / "run1" / "evaluation" / "evaluation_results_all.csv").write_text(results)
    found = list_evaluations(root)
    assert [(e.label, e.splits) for e in found] == [
        ("evaluations/preds-0a1b2c3d", ("test",)),
        ("run1/evaluation", ("all", "test")),
        ("run1/evaluation_last", ("val",)),
    ]  # run2 has no table yet
    a, b = root / "run1" / "evaluation", root / "run1" / "evaluation_last"
    there = comparison_dir(root, a, b)
    assert there.parent == root / "comparisons" and there.name.startswith("run1-vs-run1_last-")
    assert comparison_dir(root, b, a).name.startswith("run1_last-vs-run1-")
    assert comparison_dir(root, b, a).name[-8:] != there.name[-8:]
    with pytest.raises(ConfigError, match="the same evaluation"):
        compare_evaluations(a, a, "test", there)
    with pytest.raises(DataError, match=r"holds no evaluation_results_<split>\.csv"):
        compare_evaluations(a, root / "run2" / "evaluation", "test", there)
    compare_evaluations(a, root / "evaluations" / "preds-0a1b2c3d", "test", there)
    assert [e.label for e in list_evaluations(root)] == [e.label for e in found]  # not listed
    # a run folder given: its evaluation folders named (was "give a folder ctseg evaluate wrote")
    (root / "run1" / "config.json").write_text("{}")
    (root / "run1" / "evaluation_empty").mkdir()  # no table in it: not offered
    with pytest.raises(DataError) as refused:
        compare_evaluations(root / "run1", a, "test", there)
    inside = f"{root / 'run1' / 'evaluation'}, {root / 'run1' / 'evaluation_last'}"
    assert str(refused.value).endswith(f"give an evaluation folder in it: {inside}")
    (root / "run3").mkdir()
    (root / "run3" / "config.json").write_text("{}")
    with pytest.raises(DataError, match=r"it is a run folder: evaluate its checkpoint first \("):
        compare_evaluations(root / "run3", a, "test", there)


def test_evaluations_of_other_datasets_or_subjects_are_compared_with_a_note(tmp_path, capsys):
    dice = {"liver": np.linspace(0.6, 0.9, 6)}
    subjects = ["NA", "s1", "s2", "s3", "s4", "s5"]  # "NA" is a subject id, not a missing value
    folders = {}
    for name, ids, dataset in (("a", subjects, "/data/one"), ("b", subjects[:5], "/data/two")):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        results = table(dice, ids) if name == "a" else table({"liver": dice["liver"][:5]}, ids)
        (folders[name] / "evaluation_results_test.csv").write_text(results.to_csv(index=False))
        record = {"dataset": dataset, "tolerance_mm": 3.0, "subjects": ids}
        if name == "b":  # as evaluate_predictions records its warnings
            record["notes"] = ["s1.nii.gz: value 10 (...) looks merged", "s2.nii.gz: the same"]
        (folders[name] / "source_test.json").write_text(json.dumps(record))
    out = tmp_path / "out"
    assert main(["compare", str(folders["a"]), str(folders["b"]), "--out", str(out)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "note: A and B scored different datasets: /data/one and /data/two",
        "note: 1 subject only in A is left out: s5",
        "note: B's evaluation warned: s1.nii.gz: value 10 (...) looks merged (and 1 more)",
    ]
    source = json.loads((out / "source_test.json").read_text())
    assert source["notes"] == [line.removeprefix("note: ") for line in err]
    assert source["only_a"] == ["s5"] and source["subjects"][0] == "NA"
    # on a terminal the CLI's logging prints too: each note once, not also as a WARNING line
    command = [sys.executable, "-m", "ctseg_core", "compare", str(folders["a"]), str(folders["b"])]
    shown = subprocess.run([*command, "--out", str(tmp_path / "out2")], capture_output=True,
                           text=True, cwd=Path(__file__).parents[1], check=True)  # fmt: skip
    assert shown.stderr.splitlines() == err
    written = pd.read_csv(out / "comparison_test.csv")
    assert written.loc[written["metric"] == "dice", "pairs"].tolist() == [5, 5]


def test_a_row_says_when_its_test_leans_against_its_verdict():
    """The row over all structures shows the mean of the structures' means and tests the
    subjects' means: with a structure only one subject has, they can lean apart, and that is
    said beside the p-value (it was not), on the page and by the CLI; a structure's row where
    the mean difference and the ranks disagree, too."""
    from dashboard.helpers.evalcharts import comparison_summary

    subjects = [f"s{i}" for i in range(6)]
    a = {"liver": np.full(6, 0.8), "spleen": np.r_[0.5, np.full(5, np.nan)]}
    b = {"liver": np.full(6, 0.79), "spleen": np.r_[0.7, np.full(5, np.nan)]}
    overall = rows_of(compare_results(table(a, subjects), table(b, subjects)), "dice")
    overall = overall.loc[OVERALL]
    assert overall["difference"] == pytest.approx((0.2 - 0.01) / 2)  # B ahead by structure
    assert overall["verdict"] == "better" and np.isfinite(overall["p_value"])
    # subject 0: (0.2 - 0.01) / 2 = +0.095; the five others -0.01
    # subject 0's +0.095 ranks 6th, the five -0.01 share ranks 1-5
    note = (
        "the signed-rank test leans the other way: the ranks of the subjects' means where "
        "B - A > 0 sum to 6, where B - A < 0 to 15"
    )
    assert overall["p_note"] == note
    liver = rows_of(compare_results(table(a, subjects), table(b, subjects)), "dice").loc["liver"]
    assert liver["verdict"] == "worse" and liver["p_note"] == ""  # every pair agrees
    assert "p = " in comparison_summary(overall.to_dict(), "dice")
    assert f"({note})" in comparison_summary(overall.to_dict(), "dice")
    from ctseg_core.cli.cmd_compare import _metric_block

    result = compare_results(table(a, subjects), table(b, subjects))
    assert f"({note})" in _metric_block("dice", rows_of(result, "dice").reset_index())
    # one structure: one large gain, five small losses; the mean says better, the ranks worse
    one = {"liver": np.full(6, 0.8)}
    gains = {"liver": 0.8 + np.r_[0.1, np.full(5, -0.01)]}
    liver = rows_of(compare_results(table(one, subjects), table(gains, subjects)), "dice")
    assert liver.loc["liver", "verdict"] == "better"
    assert liver.loc["liver", "p_note"] == (
        "the signed-rank test leans the other way: the ranks of the pairs where B - A > 0 sum "
        "to 6, where B - A < 0 to 15"
    )
    b["liver"][:] = 0.81  # now both lean towards B: nothing to say
    overall = rows_of(compare_results(table(a, subjects), table(b, subjects)), "dice")
    assert overall.loc[OVERALL, "p_note"] == ""


def test_an_evaluation_whose_checkpoint_changed_since_is_compared_with_a_note(tmp_path):
    """A run resumed after its evaluation rewrites best.pth: the tables describe the model
    as it was, and compare used them under the run's name without a word (reviewer)."""
    from ctseg_core.evaluation.paths import write_source

    dice = {"liver": np.linspace(0.6, 0.9, 6)}
    subjects = [f"s{i}" for i in range(6)]
    ckpt = tmp_path / "run" / "best.pth"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"epoch 1")
    folders = {}
    for name in ("a", "b"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "evaluation_results_test.csv").write_text(
            table(dice, subjects).to_csv(index=False)
        )
        predictions = [ckpt] if name == "a" else tmp_path / "a"  # a folder for b
        write_source(folders[name], predictions, tmp_path, "test", subjects, 3.0, False)
    source = json.loads((folders["a"] / "source_test.json").read_text())
    assert source["checkpoint_files"][0]["size"] == 7
    assert compare_evaluations(folders["a"], folders["b"], "test", tmp_path / "o").warnings == []
    ckpt.write_bytes(b"epoch 2 now")  # resumed: best.pth rewritten
    (note,) = compare_evaluations(folders["a"], folders["b"], "test", tmp_path / "o").warnings
    assert note.startswith(f"A's checkpoint {ckpt.resolve()} has changed since it was evaluated")
    assert note.endswith("evaluate it again")
    ckpt.rename(tmp_path / "run" / "moved.pth")  # gone: not called changed
    (note,) = compare_evaluations(folders["a"], folders["b"], "test", tmp_path / "o").warnings
    assert note.startswith(f"A's checkpoint {ckpt.resolve()} is no longer there")
    # a run's own evaluation moves with it when the run is renamed: the checkpoint of that
    # name beside it is compared (every comparison said "no longer there"; reviewer)
    (tmp_path / "run" / "moved.pth").rename(ckpt)
    own = tmp_path / "run" / "evaluation"
    folders["a"].rename(own)
    write_source(own, [ckpt], tmp_path, "test", subjects, 3.0, False)
    renamed = (tmp_path / "run").rename(tmp_path / "run2")
    assert (
        compare_evaluations(renamed / "evaluation", folders["b"], "test", tmp_path / "o").warnings
        == []
    )
    (renamed / "best.pth").write_bytes(b"epoch 3, longer")
    (note,) = compare_evaluations(
        renamed / "evaluation", folders["b"], "test", tmp_path / "o"
    ).warnings
    assert note.startswith(f"A's checkpoint {(renamed / 'best.pth').resolve()} has changed")


def test_a_comparison_and_an_evaluation_never_write_into_each_others_folder(tmp_path, capsys):
    """compare --out A replaced A's source_<split>.json with the comparison's record, after
    which an evaluation into A was no longer refused (found by a review); and evaluate --out
    into a comparison's folder replaced its record without a word."""
    dice = {"liver": np.linspace(0.6, 0.9, 6)}
    ids = [f"s{i}" for i in range(6)]
    folders = {}
    for name in ("a", "b"):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        (folders[name] / "evaluation_results_test.csv").write_text(table(dice, ids).to_csv())
        record = {"predictions_folder": f"/preds/{name}", "subjects": ids}
        (folders[name] / "source_test.json").write_text(json.dumps(record))
    before = (folders["a"] / "source_test.json").read_bytes()
    for out in (folders["a"], folders["b"]):
        with pytest.raises(ConfigError, match=r"holds an evaluation \(evaluation_results_test"):
            compare_evaluations(folders["a"], folders["b"], "test", out)
    assert (folders["a"] / "source_test.json").read_bytes() == before
    out = tmp_path / "comparison"
    compare_evaluations(folders["a"], folders["b"], "test", out)
    assert main(["evaluate", "--data", str(tmp_path), "--split", "test", "--predictions",
                 str(tmp_path / "a"), "--out", str(out), "--no-report"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out {out} holds the test split's comparison of ")
    assert json.loads((out / "source_test.json").read_text())["a"] == str(folders["a"].resolve())
    assert main(["evaluate", "--data", str(tmp_path), "--split", "val", "--predictions",
                 str(tmp_path / "a"), "--out", str(out), "--no-report"]) == 2  # fmt: skip
    assert f"--out {out} holds a comparison (comparison_test.csv); give" in capsys.readouterr().err


def test_structures_scored_in_one_evaluation_only_are_named(tmp_path):
    """A merged run's "lungs" against a model's lobes: the comparison holds liver only, and it
    said nothing of the structures it left out, as it does of subjects (found by a review)."""
    ids = [f"s{i}" for i in range(6)]
    scores = np.linspace(0.6, 0.9, 6)
    lobes = {"lung_upper_lobe_left": scores, "lung_lower_lobe_left": scores}
    tables = {
        "a": table({"liver": scores, "lungs": scores}, ids),
        "b": table({"liver": scores + 0.05, **lobes}, ids),
    }
    for name, results in tables.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "evaluation_results_test.csv").write_text(results.to_csv())
    result = compare_evaluations(tmp_path / "a", tmp_path / "b", "test", tmp_path / "out")
    assert set(result.table["structure"]) == {"liver", "(all structures)"}
    assert result.warnings == [
        "1 structure scored only in A is left out: lungs",
        "2 structures scored only in B are left out: lung_lower_lobe_left, lung_upper_lobe_left",
    ]
    source = json.loads((tmp_path / "out" / "source_test.json").read_text())
    assert source["structures_only_a"] == ["lungs"] and source["notes"] == result.warnings
