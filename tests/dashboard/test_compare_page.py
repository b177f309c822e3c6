"""The Evaluate page's Compare tab in AppTest: two evaluations on disk, B − A per structure
sorted and coloured by better/worse, p-values equal to scipy's, the CSV written and offered,
folder names shown as text."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from markdown_kit import as_shown, assert_plain
from scipy.stats import wilcoxon

from ctseg_core.evaluation.tables import RESULT_COLUMNS

pytestmark = pytest.mark.timeout(300)

HOSTILE = ":blue[preds](javascript:alert(3))"  # a predictions folder's name, from its owner
SUBJECTS = [f"s{i:04d}" for i in range(8)]


def write_evaluation(folder, dice: dict[str, np.ndarray], hd95: float, split: str = "test"):
    rows = [
        {"subject": s, "structure": structure, "group": "organs", "dice": values[i],
         "iou": values[i], "hd95_mm": hd95 if i else np.inf, "surface_dice": values[i],
         "ref_volume_ml": 1.0, "pred_volume_ml": 1.0, "status": "detected"}
        for structure, values in dice.items()
        for i, s in enumerate(SUBJECTS)
    ]  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    (folder / f"evaluation_results_{split}.csv").write_text(table.to_csv(index=False))


def test_compare_tab_shows_the_sorted_differences_p_values_and_the_csv(
    app_env, new_app, no_problems
):
    rng = np.random.default_rng(3)
    a = {s: rng.uniform(0.6, 0.9, 8) for s in ("liver", "spleen", "kidney_left")}
    b = {"liver": a["liver"] + 0.05 + rng.uniform(0, 0.01, 8), "spleen": a["spleen"] - 0.03,
         "kidney_left": a["kidney_left"] + 0.01}  # fmt: skip
    root = app_env["checkpoints"]
    folder_a = root / "compare_run" / "evaluation"
    folder_b = root / "evaluations" / f"{HOSTILE}-0a1b2c3d"
    write_evaluation(folder_a, a, hd95=4.0)
    write_evaluation(folder_b, b, hd95=3.0)
    write_evaluation(root / "compare_run" / "evaluation_last", a, 4.0, split="val")
    label_a, label_b = "compare_run/evaluation", f"evaluations/{HOSTILE}-0a1b2c3d"

    at = new_app("evaluate")
    at.run()
    no_problems(at)
    options = at.selectbox(key="ctseg_eval_compare_a").options
    assert {label_a, label_b, "compare_run/evaluation_last"} <= set(options)
    assert at.selectbox(key="ctseg_eval_compare_a").value is None  # nothing compared unasked
    at.selectbox(key="ctseg_eval_compare_a").set_value(label_a)
    at.selectbox(key="ctseg_eval_compare_b").set_value("compare_run/evaluation_last")
    at.run()
    assert any("none in common" in i.value for i in at.info)  # test vs val
    at.selectbox(key="ctseg_eval_compare_b").set_value(label_b)
    at.run()
    assert at.selectbox(key="ctseg_eval_compare_split").options == ["test"]
    assert not at.get("download_button")
    at.button(key="ctseg_eval_compare_go").click()
    at.run()
    no_problems(at)

    info = at.session_state["ctseg_eval_comparison"]
    written = [p for p in (root / "comparisons").iterdir() if p.name.startswith("compare_run-vs-")]
    assert len(written) == 1 and info["out_dir"] == str(written[0])
    assert info["csv"] == (written[0] / "comparison_test.csv").read_bytes()
    assert json.loads((written[0] / "source_test.json").read_text())["b"] == str(folder_b)
    # Dice: B's gain first; bars coloured by verdict; the table's p-values are scipy's
    chart = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert chart["encoding"]["y"]["sort"] == ["liver", "kidney_left", "spleen"]
    assert chart["encoding"]["color"]["field"] == "verdict"
    shown = at.dataframe[0].value.set_index("structure")
    assert list(shown.index) == ["(all structures)", "liver", "kidney_left", "spleen"]
    assert list(shown["B is"]) == ["better", "better", "better", "worse"]
    for structure in ("liver", "spleen", "kidney_left"):
        expected = wilcoxon(b[structure] - a[structure]).pvalue
        assert shown.loc[structure, "p (Wilcoxon)"] == pytest.approx(expected, rel=1e-12)
        assert shown.loc[structure, "B − A"] == pytest.approx(  # to compare's tick, 1e-9
            (b[structure] - a[structure]).mean(), abs=6e-10
        )
    assert "missed in A" not in shown.columns
    (download,) = at.get("download_button")
    assert as_shown(download.proto.label) == "comparison_test.csv"
    assert_plain(at, HOSTILE)
    # HD95: lower is better; subject 0 missed in both (a tie), the others 1 mm closer in B
    at.segmented_control(key="ctseg_eval_compare_metric").set_value("hd95_mm")
    at.run()
    no_problems(at)
    chart = json.loads(at.get("vega_lite_chart")[0].proto.spec)
    assert "lower is better" in chart["encoding"]["x"]["title"]
    shown = at.dataframe[0].value.set_index("structure")
    assert (shown.loc["liver", ["B − A", "missed in A", "missed in B"]] == [-1.0, 1, 1]).all()
    assert (shown["B is"] == "better").all()
    summary = [m.value for m in at.markdown if m.value.startswith("Over all structures")]
    assert summary == [
        "Over all structures: mean HD95 (mm) A 4.000, B 3.000, B − A -1.000 mm (B better); "
        "missed: 3 in A, 3 in B. Paired Wilcoxon signed-rank test of the subjects' means "
        "(7 subjects): p = 0.0156."
    ]


def test_compare_lists_a_runs_evaluations_with_the_runs_kind(app_env, new_app, no_problems):
    """As every other run list: "vol (3D)/evaluation", "flat (2D)/evaluation"; a folder of
    predictions' evaluation keeps its bare label."""
    from ctseg_core.config import DataConfig, ModelConfig, RunConfig

    root = app_env["checkpoints"]
    dice = {"liver": np.linspace(0.6, 0.9, 8)}
    configs = {
        "vol": RunConfig(DataConfig(patch_size=(32, 32, 16)), ModelConfig(name="plain_unet3d")),
        "flat": RunConfig(DataConfig(), ModelConfig()),
    }
    for name, config in configs.items():
        write_evaluation(root / name / "evaluation", dice, hd95=3.0)
        (root / name / "config.json").write_text(json.dumps(config.to_dict()))
    write_evaluation(root / "evaluations" / "preds-0a1b2c3d", dice, hd95=3.0)
    at = new_app("evaluate")
    at.run()
    no_problems(at)
    options = at.selectbox(key="ctseg_eval_compare_a").options
    assert {"vol (3D)/evaluation", "flat (2D)/evaluation", "evaluations/preds-0a1b2c3d"} <= set(
        options
    ), options
