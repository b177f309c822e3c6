"""A 3D run's checkpoint on the Evaluate page, exactly as a 2D one: listed with its kind, scored."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import torch
from markdown_kit import as_shown

from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ctseg_core.training.trainer import Trainer


def test_evaluate_scores_a_3d_runs_checkpoint(app_env, tmp_path, monkeypatch, new_app, no_problems):
    torch.set_num_threads(1)
    config = RunConfig(
        DataConfig(
            data_root=str(app_env["data"]),
            cache_dir=str(app_env["cache"]),
            structures=["liver", "spleen", "kidney_left", "kidney_right", "aorta"],
            batch_size=2,
            patch_size=(32, 32, 16),
            spacing_mm=(6.0, 6.0, 6.0),
        ),
        ModelConfig(name="plain_unet3d", features=[8, 16, 32], norm="instance"),
        TrainConfig(epochs=1, steps_per_epoch=1, amp="off", sample_figure=False),
        run_name="vol",
    ).validate()
    root = tmp_path / "checkpoints"
    assert Trainer(config, checkpoints_root=root).run() == "finished"
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(root))
    at = new_app("evaluate")
    at.run()
    picker = at.selectbox(key="ctseg_eval_checkpoint")
    best = [o for o in picker.options if "best.pth" in o]
    assert best and all("(3D)" in o for o in best), picker.options
    picker.set_value(next(v for v in _values(picker) if v.endswith("best.pth")))
    at.run()
    at.selectbox(key="ctseg_eval_split").set_value("val")
    at.button(key="ctseg_eval_go").click()
    at.run()
    no_problems(at)
    out = Path(at.session_state["ctseg_eval_result"]["out_dir"])
    assert out == root / "vol" / "evaluation"
    table = pd.read_csv(out / "evaluation_results_val.csv")
    scored = table.dropna(subset=["dice"])
    assert len(scored) > 0 and scored["dice"].between(0, 1).all()
    # a phantom lying in air: its box around the body is recorded, and said
    source = json.loads((out / "source_val.json").read_text())
    assert source["body_crop"] is True
    boxes = source["body_boxes"]
    assert boxes and set(boxes) <= set(source["subjects"])
    assert all(0 <= lo < hi for box in boxes.values() for lo, hi in box)
    # the results say which run, with its kind, as the pickers do
    shown = [as_shown(c.value) for c in at.caption]
    assert any(c.startswith("vol (3D) / best.pth · files in") for c in shown), shown
    said = [c.value for c in at.caption if "box around the body" in c.value]
    assert said == [
        f"The 3D model labelled only the box around the body in {len(boxes)} CTs (the rest is "
        "background; each box in source_val.json)."
    ]
    # the run trained on (best.pth rewritten): the results shown describe the model it was
    import os

    stamp = (root / "vol" / "best.pth").stat()
    os.utime(root / "vol" / "best.pth", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))
    at.run()
    changed = [w.value for w in at.warning if "has changed since it was evaluated" in w.value]
    assert len(changed) == 1 and as_shown(changed[0]).startswith(
        f"the checkpoint {root / 'vol' / 'best.pth'} has changed since it was evaluated"
    ), [w.value for w in at.warning]
    os.utime(root / "vol" / "best.pth", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    # Explore says it too, for the box its own prediction of the subject used
    from dashboard import cached

    subject = next(iter(boxes))
    label = next(k for k, v in cached.all_checkpoints().items() if v.endswith("vol/best.pth"))
    at.switch_page("app_pages/explore.py")
    at.run()
    at.selectbox(key="ctseg_explore_subject").set_value(subject)
    at.selectbox(key="ctseg_explore_checkpoint").set_value(label)
    at.run()
    no_problems(at)
    spans = ", ".join(
        f"{a} {lo}-{hi - 1}" for a, (lo, hi) in zip("xyz", boxes[subject], strict=True)
    )
    assert (
        f"The 3D model labelled the box around the body (RAS voxel indices {spans}, "
        "inclusive); the rest is background." in [c.value for c in at.caption]
    )


def _values(selectbox) -> list[str]:
    """The values behind a selectbox's (formatted) options."""
    from dashboard import cached

    return list(cached.all_checkpoints())
