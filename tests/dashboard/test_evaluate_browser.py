"""Evaluate -> Explore in headless Chromium: a small 3D run evaluated on the phantom; a subject's
row opens its slices and surfaces, a worst case opens zoomed to its structure."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser_kit import (
    CHROMIUM,
    choose,
    fresh,
    go_to,
    streamlit_server,
    wait_idle,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]


@pytest.fixture(scope="module")
def run3d_dirs(dash_dirs, tmp_path_factory) -> dict[str, Path]:
    """The phantom with a checkpoints root holding one finished 3D run, "vol" (one step)."""
    import torch

    from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from ctseg_core.training.trainer import Trainer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("eval3d") / "checkpoints"
    config = RunConfig(
        DataConfig(
            data_root=str(dash_dirs["data"]), cache_dir=str(dash_dirs["cache"]),
            structures=["liver", "spleen", "kidney_left", "kidney_right", "aorta"],
            batch_size=2, patch_size=(32, 32, 16), spacing_mm=(6.0, 6.0, 6.0),
        ),
        ModelConfig(name="plain_unet3d", features=[8, 16, 32], norm="instance"),
        TrainConfig(epochs=1, steps_per_epoch=1, amp="off", sample_figure=False),
        run_name="vol",
    ).validate()  # fmt: skip
    assert Trainer(config, checkpoints_root=root).run() == "finished"
    return {**dash_dirs, "checkpoints": root}


@pytest.fixture(scope="module")
def server(run3d_dirs):
    log = run3d_dirs["checkpoints"].parent / "server.log"
    with streamlit_server(run3d_dirs, log) as url:
        yield url


def _evaluate_all(page, server: str, run3d_dirs) -> pd.DataFrame:
    """Evaluate the 3D run's best checkpoint on all six subjects; returns the rows written."""
    page.goto(f"{server}/evaluate")
    page.get_by_role("heading", name="Evaluate", exact=True).wait_for()
    wait_idle(page)
    choose(page, "Run / checkpoint or model", "best.pth")
    choose(page, "Split", "all")
    page.get_by_role("button", name="Evaluate", exact=True).click()
    page.get_by_text("Results on all splits (6 subjects)").wait_for(timeout=180_000)
    wait_idle(page)
    out = run3d_dirs["checkpoints"] / "vol" / "evaluation" / "evaluation_results_all.csv"
    return pd.read_csv(out)


def _subject_shown(page, subject: str) -> None:
    """Until Explore shows ``subject`` (its picker and its caption name it)."""
    from playwright.sync_api import expect

    page.get_by_role("heading", name="Explore", exact=True).wait_for()
    expect(page.get_by_role("combobox", name="Subject")).to_have_value(
        re.compile(f"^{subject} "), timeout=60_000
    )
    page.get_by_text(re.compile(f"^{subject}: .* voxels")).wait_for(timeout=120_000)


def _caption(page) -> str:
    """The slice image's caption once the prediction is beside the reference."""
    image = fresh(page, '[data-testid="stImage"]').filter(has_text="reference | prediction")
    image.first.wait_for(timeout=180_000)
    wait_idle(page)
    return fresh(page, '[data-testid="stImage"]').first.inner_text()


def test_a_subject_row_opens_explore_with_the_prediction_and_its_surfaces(server, page, run3d_dirs):
    from ctseg_core.data.cache import open_cached
    from ctseg_core.labels import LABEL_OF
    from dashboard.helpers.eval_explore import SUBJECT_ROW_PX
    from dashboard.helpers.evalcharts import subject_table

    results = _evaluate_all(page, server, run3d_dirs)
    table = subject_table(results)  # as the page orders it: worst mean Dice first
    grid = page.locator(".st-key-ctseg_eval_subject_rows_0 canvas").first
    grid.scroll_into_view_if_needed()
    grid.wait_for()
    row = 1  # the second subject: not the one Explore would open by itself
    subject = str(table["subject"][row])
    box = grid.bounding_box()  # the grid's scroller takes the pointer: click where it is
    # every row is shown (height "auto"): the canvas is the header plus len(table) rows, so
    # the header's height is what is left of it (borders included)
    header_px = box["height"] - SUBJECT_ROW_PX * len(table)
    assert 0 < header_px < 2 * SUBJECT_ROW_PX, (box, len(table))
    page.mouse.click(box["x"] + 15, box["y"] + header_px + SUBJECT_ROW_PX * (row + 0.5))
    _subject_shown(page, subject)
    part = results[(results["subject"] == subject) & results["dice"].notna()]
    worst = list(part.sort_values("dice", kind="stable")["structure"][:3])
    entry = open_cached(run3d_dirs["data"], subject, run3d_dirs["cache"])
    per_slice = (np.asarray(entry.labels) == LABEL_OF[worst[0]]).sum(axis=(1, 2))
    caption = _caption(page)
    assert f"slice {int(per_slice.argmax()) + 1} of {entry.num_slices}" in caption, caption
    # the 3D view is on, with the subject's worst structures as surfaces of both layers
    page.locator(".js-plotly-plot .gl-container canvas, .js-plotly-plot canvas").first.wait_for(
        timeout=120_000
    )
    traces = page.wait_for_function(
        "() => { const p = document.querySelector('.js-plotly-plot');"  # as plotly drew it
        " const d = p && p._fullData ? p._fullData.filter(t => t.type === 'mesh3d') : [];"
        " return d.length ? d.map(t => [t.name, t.i.length]) : null; }",
        timeout=120_000,
    ).json_value()
    names = {name for name, _ in traces}
    assert names <= set(worst) and worst[0] in names, (names, worst)
    assert all(faces > 0 for _, faces in traces)
    # back on Evaluate: the results are there, and the row does not send us to Explore again
    go_to(page, "Evaluate")
    page.get_by_text("Results on all splits (6 subjects)").wait_for()
    page.locator(".st-key-ctseg_eval_subject_rows_1 canvas").first.wait_for()
    wait_idle(page)
    assert page.get_by_role("heading", name="Evaluate", exact=True).is_visible()


def _coloured_share(png: bytes) -> float:
    """The share of the reference panel's pixels (the left 45 % of a side-by-side image)
    that are coloured, i.e. overlay rather than grey CT."""
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    left = rgb[:, : int(rgb.shape[1] * 0.45)]
    return float(((left.max(axis=2) - left.min(axis=2)) > 20).mean())


def _image_png(page, old_src: str | None = None) -> tuple[str, bytes]:
    """The slice image's src and PNG bytes (a src other than ``old_src`` when given)."""
    for _ in range(240):
        image = fresh(page, '[data-testid="stImage"] img').first
        src = image.get_attribute("src")
        if src and src != old_src:
            body = page.request.get(src).body()
            if body.startswith(b"\x89PNG"):
                return src, body
        page.wait_for_timeout(250)  # replaced by a later rerun meanwhile
    raise AssertionError("no new slice image")


def test_the_worst_case_opens_in_explore_zoomed_to_its_structure(server, page, run3d_dirs):
    from ctseg_core.data.cache import open_cached
    from ctseg_core.labels import LABEL_OF

    results = _evaluate_all(page, server, run3d_dirs)
    structure = "kidney_left"  # small beside the slice: zooming to it is plain to see
    rows = results[(results["structure"] == structure) & results["dice"].notna()]
    subject = str(rows.loc[rows["dice"].astype(float).idxmin(), "subject"])
    choose(page, "Structure (worst first)", structure)
    page.get_by_text(f"Worst: {subject}").wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Open in Explore").click()
    _subject_shown(page, subject)
    entry = open_cached(run3d_dirs["data"], subject, run3d_dirs["cache"])
    per_slice = (np.asarray(entry.labels) == LABEL_OF[structure]).sum(axis=(1, 2))
    assert f"slice {int(per_slice.argmax()) + 1} of" in _caption(page)
    zoom = page.get_by_role("switch", name=f"Zoom to {structure}")
    assert zoom.is_checked()
    src, zoomed = _image_png(page)
    page.get_by_text(f"Zoom to {structure}", exact=True).click()  # the whole slice
    _, whole = _image_png(page, src)
    assert not zoom.is_checked()
    # only the structure is picked: zoomed, it covers several times more of the panel
    assert _coloured_share(zoomed) > 2.5 * _coloured_share(whole) > 0
