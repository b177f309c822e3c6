"""The linked-planes viewer of Explore (NiiVue, WebGL) in headless Chromium on the real s0000:
it opens on the server view's slice, a click moves the crosshair, and the readout names the
structure under it, checked against the cached volumes voxel by voxel."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from browser_kit import (
    CHROMIUM,
    choose,
    fresh,
    go_to,
    launch_chromium,
    new_page,
    streamlit_server,
    wait_idle,
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]


@pytest.fixture(scope="module")
def s0000_dirs(s0000_root, session_cache, tmp_path_factory) -> dict[str, Path]:
    checkpoints = tmp_path_factory.mktemp("niivue") / "checkpoints"
    checkpoints.mkdir()
    return {"data": s0000_root, "cache": session_cache, "checkpoints": checkpoints}


def _viewer_frame(page):
    """The component's iframe, once NiiVue has loaded the volumes (window.ctsegReady)."""
    frame = None
    for _ in range(300):  # the iframe appears, then navigates to the component's page
        frame = next((f for f in page.frames if "ctseg_niivue" in f.url), None)
        if frame is not None:
            break
        page.wait_for_timeout(100)
    assert frame is not None, "the linked-planes viewer did not appear"
    frame.wait_for_function("window.ctsegReady === true", timeout=60_000)
    return frame


def _location(frame) -> dict:
    return frame.evaluate(
        "({vox: Array.from(window.ctsegLocation.vox), hu: window.ctsegLocation.hu, "
        "labels: window.ctsegLocation.labels, text: document.getElementById('readout').innerText})"
    )


def test_linked_planes_open_on_the_slice_and_name_the_structure_under_a_click(s0000_dirs):
    pytest.importorskip("playwright", reason="needs the playwright package")
    from playwright.sync_api import sync_playwright

    from ctseg_core.data.cache import open_cached
    from ctseg_core.labels import STRUCTURES

    log = s0000_dirs["checkpoints"].parent / "server.log"
    with streamlit_server(s0000_dirs, log) as url, sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = new_page(browser)
        page.goto(url)
        wait_idle(page)
        go_to(page, "Explore")
        slider = page.get_by_role("slider").first  # the axial slice of the server view
        page.locator('[data-testid="stImage"] img').first.wait_for()
        assert int(slider.input_value()) == 16  # 30 slices: the middle, counted from 1
        slider.focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        assert int(slider.input_value()) == 19
        wait_idle(page)
        page.get_by_text("linked planes", exact=True).click()
        frame = _viewer_frame(page)
        entry = open_cached(s0000_dirs["data"], "s0000", s0000_dirs["cache"])
        _, nx, ny = entry.ct.shape
        opened = _location(frame)
        assert opened["vox"] == [nx // 2, ny // 2, 18]  # axial slice 19 = index 18

        canvas = frame.locator("canvas").bounding_box()
        named = []
        # the axial tile fills the left third of the row (radiological: patient's right left)
        for fx in (0.06, 0.12, 0.18, 0.24, 0.3):
            page.mouse.click(
                canvas["x"] + fx * canvas["width"], canvas["y"] + 0.5 * canvas["height"]
            )
            page.wait_for_timeout(150)
            loc = _location(frame)
            x, y, z = loc["vox"]
            assert z == 18, (fx, loc)  # a click in the axial plane keeps its slice ...
            assert (x, y) != tuple(opened["vox"][:2])  # ... and moves the crosshair in it
            assert loc["hu"] == int(entry.ct[z, x, y])  # the readout's HU is the voxel's
            value = int(entry.labels[z, x, y])
            expected = "background" if value == 0 else STRUCTURES[value - 1]
            assert loc["labels"] == [expected]
            assert f"reference: {expected}" in loc["text"]
            assert f"voxel ({x}, {y}, {z})" in loc["text"]
            named.append(expected)
        assert {"liver", "spleen"} <= set(named), named  # right and left of the abdomen
        # a click in the coronal tile (middle) moves the axial slice
        page.mouse.click(canvas["x"] + 0.6 * canvas["width"], canvas["y"] + 0.45 * canvas["height"])
        page.wait_for_timeout(150)
        assert _location(frame)["vox"][2] != 18
        browser.close()


def _coloured_share(png: bytes) -> float:
    """The share of a screenshot's pixels that are coloured (labels, crosshair), not grey CT."""
    import io

    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    return float(((rgb.max(axis=2) - rgb.min(axis=2)) > 40).mean())


def _tinted_black_share(shown_png: bytes, hidden_png: bytes) -> float:
    """The share of pixels black without the label layers that the layers make not black."""
    import io

    import numpy as np
    from PIL import Image

    shown, hidden = (
        np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
        for png in (shown_png, hidden_png)
    )
    black = hidden.sum(axis=2) == 0
    return float((black & (shown.sum(axis=2) > 30)).sum() / max(1, black.sum()))


def _set_opacity(frame, layer: str, value: float) -> None:
    """Move a layer's opacity slider as a drag would (an input event), then let NiiVue draw."""
    frame.locator(f'input[aria-label="{layer} opacity"]').evaluate(
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }",
        str(value),
    )
    frame.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def test_the_readout_names_the_predictions_structure_and_its_opacity_slides(s0000_dirs, tmp_path):
    """A predictions folder of s0000 that calls the liver gallbladder and misses the spleen,
    evaluated, then shown in the linked planes: each click names both layers' structures as
    the written files hold them; the legend lists them; opacity 0 hides the labels."""
    pytest.importorskip("playwright", reason="needs the playwright package")
    import nibabel as nib
    import numpy as np
    from playwright.sync_api import sync_playwright

    from ctseg_core.data.cache import open_cached
    from ctseg_core.labels import LABEL_OF, STRUCTURES

    entry = open_cached(s0000_dirs["data"], "s0000", s0000_dirs["cache"])
    pred_xyz = np.array(entry.labels_xyz())
    liver = pred_xyz == LABEL_OF["liver"]
    pred_xyz[pred_xyz == LABEL_OF["spleen"]] = 0
    pred_xyz[liver] = LABEL_OF["gallbladder"]
    folder = tmp_path / "preds"
    folder.mkdir()
    nib.save(nib.Nifti1Image(pred_xyz, entry.affine), folder / "s0000.nii.gz")
    pred_zxy = np.asarray(entry.labels).copy()  # the same change on the cache's (Z, X, Y)
    pred_zxy[pred_zxy == LABEL_OF["spleen"]] = 0
    pred_zxy[np.asarray(entry.labels) == LABEL_OF["liver"]] = LABEL_OF["gallbladder"]

    def name(value: int) -> str:
        return "background" if value == 0 else STRUCTURES[value - 1]

    with streamlit_server(s0000_dirs, tmp_path / "server.log") as url, sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = new_page(browser)
        page.goto(f"{url}/evaluate")
        page.get_by_role("heading", name="Evaluate", exact=True).wait_for()
        wait_idle(page)
        page.get_by_text("a predictions folder (<id>.nii.gz)", exact=True).click()
        box = page.get_by_label(re.compile("^Predictions folder"))
        box.fill(str(folder))
        box.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Evaluate", exact=True).click()
        page.get_by_text("Results on the train split (1 subjects)").wait_for(timeout=180_000)
        wait_idle(page)
        go_to(page, "Explore")
        choose(page, "Prediction from", "folder: ")
        slider = page.get_by_role("slider").first  # the axial slice of the server view
        fresh(page, '[data-testid="stImage"]').filter(has_text="reference | prediction").wait_for()
        slider.focus()
        for _ in range(3):
            page.keyboard.press("ArrowRight")
        wait_idle(page)
        assert int(slider.input_value()) == 19
        page.get_by_text("linked planes", exact=True).click()
        frame = _viewer_frame(page)
        legend = page.locator('[data-testid="stHtml"]').filter(has_text="gallbladder")
        legend.wait_for()
        chips = legend.locator("div > span").all_inner_texts()  # one chip per structure
        assert {"liver", "spleen", "gallbladder"} <= {c.strip() for c in chips}, chips

        canvas = frame.locator("canvas").bounding_box()
        pairs = set()
        for fx in (0.06, 0.12, 0.18, 0.24, 0.3):
            page.mouse.click(
                canvas["x"] + fx * canvas["width"], canvas["y"] + 0.5 * canvas["height"]
            )
            frame.wait_for_function(
                "z => window.ctsegLocation && window.ctsegLocation.vox[2] === z", arg=18
            )
            loc = _location(frame)
            x, y, z = loc["vox"]
            expected = [name(int(entry.labels[z, x, y])), name(int(pred_zxy[z, x, y]))]
            assert loc["labels"] == expected, (fx, loc)
            assert f"reference: {expected[0]} · prediction: {expected[1]}" in loc["text"]
            pairs.add(tuple(expected))
        assert {("liver", "gallbladder"), ("spleen", "background")} <= pairs, pairs

        shown_png = frame.locator("canvas").screenshot()
        _set_opacity(frame, "reference", 0)
        _set_opacity(frame, "prediction", 0)
        hidden_png = frame.locator("canvas").screenshot()
        shown, hidden = _coloured_share(shown_png), _coloured_share(hidden_png)
        assert frame.evaluate("[nv.volumes[1].opacity, nv.volumes[2].opacity]") == [0, 0]
        assert hidden < shown / 3, (hidden, shown)  # the crosshair alone stays coloured
        # background (value 0) is drawn in no colour: the air around the body stays black (a
        # label volume not marked as one had NiiVue tint every voxel in label 1's colour)
        tinted = _tinted_black_share(shown_png, hidden_png)
        assert tinted < 0.01, tinted
        browser.close()
