"""The Train page's charts are kept per run-file version: Log y and Smoothing redraw them, and a
new epoch or step in the run's files shows at the next rerun."""

from __future__ import annotations

import json
import shutil

import pytest

pytestmark = pytest.mark.timeout(300)


def _specs(at) -> dict[str, dict]:
    """Title -> Vega-Lite spec of every chart on the page, its data as "rows" (a DataFrame)."""
    import pyarrow as pa

    out = {}
    for chart in at.get("vega_lite_chart"):
        spec = json.loads(chart.proto.spec)
        tables = [pa.ipc.open_stream(d.data.data).read_all() for d in chart.proto.datasets]
        spec["rows"] = tables[0].to_pandas() if tables else None
        out[str(spec.get("title"))] = spec
    return out


def _y_scales(spec: dict) -> list[str]:
    return [layer["encoding"]["y"]["scale"].get("type", "linear") for layer in spec["layer"]]


def test_log_y_redraws_both_loss_charts_and_new_epochs_show(
    app_env, tiny_run, monkeypatch, tmp_path, new_app, no_problems
):
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(tmp_path))
    run = shutil.copytree(tiny_run, tmp_path / "watched")
    at = new_app("train")
    at.run()
    no_problems(at)
    specs = _specs(at)
    step_title = next(t for t in specs if t.startswith("Loss per step"))
    assert _y_scales(specs["Loss"]) == _y_scales(specs[step_title]) == ["linear", "linear"]
    at.toggle(key="ctseg_train_log_y").set_value(True)
    at.run()
    specs = _specs(at)
    assert _y_scales(specs["Loss"]) == _y_scales(specs[step_title]) == ["log", "log"]
    at.toggle(key="ctseg_train_log_y").set_value(False)
    at.run()
    assert _y_scales(_specs(at)["Loss"]) == ["linear", "linear"]

    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    specs = _specs(at)
    assert specs["Loss"]["rows"]["epoch"].max() == history[-1]["epoch"]
    steps_drawn = len(specs[step_title]["rows"])
    last = dict(history[-1], epoch=history[-1]["epoch"] + 1, train_loss=0.125)
    with open(run / "history.jsonl", "a") as handle:  # a new epoch, as the trainer appends it
        handle.write(json.dumps(last) + "\n")
    step = json.loads((run / "steps.jsonl").read_text().splitlines()[-1])
    with open(run / "steps.jsonl", "a") as handle:
        handle.write(json.dumps(dict(step, step=step["step"] + 1, loss=0.5)) + "\n")
    at.run()
    no_problems(at)
    specs = _specs(at)
    loss = specs["Loss"]["rows"]
    assert loss["epoch"].max() == last["epoch"]
    assert loss.loc[
        (loss["epoch"] == last["epoch"]) & (loss["curve"] == "train_loss"), "loss"
    ].tolist() == [0.125]
    step_title = next(t for t in specs if t.startswith("Loss per step"))
    assert len(specs[step_title]["rows"]) == steps_drawn + 1
