"""The dashboard in headless Chromium against a real `streamlit run` server on a small phantom.

Each page is also saved as a screenshot, in $CTSEG_SCREENSHOTS when set, else in the test's
temporary folder (the README's screenshots come from docs/make_screenshots.py, on a trained model).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
from browser_kit import (
    CHROMIUM,
    FRESH,
    fresh,
    go_to,
    metric_value,
    streamlit_server,
    wait_idle,
)
from browser_kit import screenshot as save_screenshot

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]


@pytest.fixture(scope="module")
def server(dash_dirs, tiny_run):
    """`streamlit run dashboard/Home.py` on a free localhost port, with the phantom as data."""
    try:
        with streamlit_server(dash_dirs, dash_dirs["checkpoints"].parent / "server.log") as url:
            yield url
    except RuntimeError as error:
        pytest.fail(str(error))


@pytest.fixture(scope="module")
def shots_dir(tmp_path_factory) -> Path:
    env = os.environ.get("CTSEG_SCREENSHOTS")
    return Path(env) if env else tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def screenshot(shots_dir):
    """screenshot(page, name, top=True): save <shots_dir>/<name>.png."""

    def take(page, name: str, top: bool = True) -> None:
        save_screenshot(page, shots_dir / f"{name}.png", top)

    return take


def test_home_then_explore_slider_changes_the_image_and_3d_view(
    server, page, dash_dirs, screenshot
):
    page.goto(server)
    page.get_by_text("Structure coverage").wait_for()
    assert metric_value(page, "Subjects") == "6"
    page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
    wait_idle(page)
    screenshot(page, "home")

    go_to(page, "Explore")
    image = page.locator('[data-testid="stImage"] img').first
    image.wait_for()
    before = image.get_attribute("src")
    before_png = page.request.get(before).body()  # now: replaced media files are dropped
    assert before_png.startswith(b"\x89PNG")
    slider = page.get_by_role("slider").first
    start = int(slider.input_value())
    slider.focus()
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    assert int(slider.input_value()) == start + 4
    page.wait_for_function(
        "old => { const i = document.querySelector('[data-testid=\"stImage\"] img');"
        " return i && i.getAttribute('src') !== old; }",
        arg=before,
    )
    wait_idle(page)  # each key press reran the fragment; take the image of the last one
    after_png = b""
    for _ in range(20):
        after = image.get_attribute("src")
        after_png = page.request.get(after).body()
        if after_png.startswith(b"\x89PNG"):
            break
        page.wait_for_timeout(250)  # replaced by a later rerun meanwhile
    assert after != before and after_png.startswith(b"\x89PNG") and after_png != before_png
    caption = fresh(page, '[data-testid="stImage"]').first.inner_text()
    assert f"slice {start + 4} of" in caption  # the slider and the caption count alike
    wait_idle(page)
    screenshot(page, "explore")

    page.get_by_text("3D view", exact=True).click()
    page.locator(".js-plotly-plot").first.wait_for()
    page.locator(".js-plotly-plot .gl-container canvas, .js-plotly-plot canvas").first.wait_for()
    wait_idle(page)
    page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
    screenshot(page, "explore_3d", top=False)


def test_train_shows_epochs_and_curves_advancing_without_a_reload(
    server, page, dash_dirs, screenshot
):
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import expect

    page.goto(f"{server}/train")
    page.get_by_role("heading", name="Train", exact=True).wait_for()
    wait_idle(page)
    page.evaluate("window.__no_reload_marker = 42")
    epochs = page.get_by_role("slider", name="Epochs")
    epochs.focus()
    page.keyboard.press("Home")
    for _ in range(5):  # 1 -> 6 epochs
        page.keyboard.press("ArrowRight")
    size = page.get_by_role("slider", name="Target size (px)")
    size.focus()
    page.keyboard.press("Home")  # 64 px
    page.get_by_role("combobox", name="Model width").click()
    page.get_by_role("option", name="tiny (8)").click()
    assert page.get_by_role("combobox", name="Model width").input_value() == "tiny (8)"
    page.get_by_text("Advanced", exact=True).click()
    page.get_by_label("Steps per epoch (0 = one pass over the training slices)").fill("12")
    page.get_by_label("Validation slices per subject (0 = all)").fill("2")
    page.get_by_label("Run name (empty = timestamp)").fill("browser-run")
    page.get_by_label("Run name (empty = timestamp)").press("Enter")  # Start does, Enter not
    wait_idle(page)
    assert not page.get_by_text("This server is training").count()
    assert not (dash_dirs["checkpoints"] / "browser-run").exists()
    page.get_by_role("button", name="Start", exact=True).click()
    page.get_by_text("This server is training browser-run").wait_for()
    watched = fresh(page, 'input[aria-label="Run"]')
    expect(watched).to_have_value("browser-run (2D)")  # the picker shows the kind

    seen_epochs, chart_shots = set(), []
    deadline = time.time() + 150
    state = ""
    while time.time() < deadline:
        state = metric_value(page, "State")
        epoch = int(metric_value(page, "Epoch").split(" / ")[0])
        seen_epochs.add(epoch)
        charts = fresh(page, '[data-testid="stVegaLiteChart"]')
        if epoch >= 1 and charts.count():
            # every round: a fragment rerun may replace the chart meanwhile (then the next
            # round takes it), and a shot of a chart just mounted may be blank
            with contextlib.suppress(PlaywrightError):
                chart_shots.append((epoch, charts.first.screenshot()))
        if state in ("finished", "failed", "stopped"):
            break
        page.wait_for_timeout(400)
    assert state == "finished", state
    assert metric_value(page, "Epoch") == "6 / 6"
    advancing = sorted(e for e in seen_epochs if e < 6)
    assert len(advancing) >= 2, f"epoch counter seen only at {sorted(seen_epochs)}"
    # the curves changed while the epochs advanced: the last epoch's chart looks unlike any
    # shot of the first epoch's
    first, last = min(e for e, _ in chart_shots), max(e for e, _ in chart_shots)
    early = {shot for e, shot in chart_shots if e == first}
    assert first < last and {shot for e, shot in chart_shots if e == last} - early
    assert page.evaluate("window.__no_reload_marker") == 42  # same document: no reload
    # the run-list watcher redraws the page once the run has ended: Stop off, banner gone
    page.get_by_text("This server is training").wait_for(state="detached")
    # the watcher ticks every few seconds; a busy machine needs more than expect's default 5 s
    # (only the current run's button: a rerun in flight still shows the previous one, stale)
    stop = page.locator(FRESH).get_by_role("button", name="Stop", exact=True)
    expect(stop).to_be_disabled(timeout=30_000)
    wait_idle(page)
    screenshot(page, "train")


def test_evaluate_and_predict_in_the_browser(server, page, dash_dirs, screenshot):
    page.goto(f"{server}/evaluate")
    page.get_by_role("heading", name="Evaluate", exact=True).wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Evaluate").click()
    page.get_by_text("Results on the test split").wait_for(timeout=120_000)
    page.get_by_text("Structure ranking").wait_for()
    wait_idle(page)
    screenshot(page, "evaluate")

    go_to(page, "Predict")
    # the limit the README states (config.toml's server.maxUploadSize), as the box words it
    page.get_by_text("500MB per file").first.wait_for()
    ct = dash_dirs["data"] / "s0003" / "ct.nii.gz"
    page.locator('input[type="file"]').first.set_input_files(str(ct))
    page.get_by_text("ct.nii.gz").first.wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Predict", exact=True).click()
    page.get_by_text("structures found").wait_for(timeout=120_000)
    page.locator('[data-testid="stImage"] img').first.wait_for()
    with page.expect_download() as download:
        page.get_by_role("button", name="Multilabel NIfTI").click()
    import nibabel as nib

    assert download.value.suggested_filename == "ct_labels.nii.gz"
    saved = dash_dirs["checkpoints"].parent / download.value.suggested_filename
    download.value.save_as(saved)
    labels = nib.load(saved)
    source = nib.load(ct)
    assert labels.shape == source.shape  # back on the uploaded CT's own grid
    assert abs(labels.affine - source.affine).max() < 1e-3
    assert labels.get_fdata().max() <= 117
    wait_idle(page)
    screenshot(page, "predict")

    # a mask is no CT: the labels come with a warning; an unreadable file is named as uploaded
    mask = dash_dirs["data"] / "s0003" / "segmentations" / "liver.nii.gz"
    page.locator('input[type="file"]').first.set_input_files(str(mask))
    page.get_by_text("liver.nii.gz").first.wait_for()
    wait_idle(page)
    # ct.nii.gz's labels and downloads went with its upload: none shown under the new file
    # (awaited: under load the upload's rerun can start after wait_idle has looked)
    from playwright.sync_api import expect

    expect(fresh(page, '[data-testid="stDownloadButton"]')).to_have_count(0, timeout=60_000)
    expect(fresh(page, ":text('structures found')")).to_have_count(0, timeout=60_000)
    page.get_by_role("button", name="Predict", exact=True).click()
    page.get_by_text("do not look like Hounsfield units").wait_for(timeout=120_000)
    fake = dash_dirs["checkpoints"].parent / "fake.nii.gz"
    fake.write_text("not an image")
    page.locator('input[type="file"]').first.set_input_files(str(fake))
    page.get_by_text("fake.nii.gz").first.wait_for()
    wait_idle(page)
    page.get_by_role("button", name="Predict", exact=True).click()
    error = page.locator('[data-testid="stAlert"]').filter(has_text="cannot be read as NIfTI")
    error.wait_for(timeout=60_000)
    assert "fake.nii.gz" in error.inner_text() and "ctseg-predict-" not in error.inner_text()


def test_train_opened_first_prepares_under_a_progress_bar(dash_dirs, page, tmp_path):
    """The Train page before Home, on a dataset the cache lacks: it prepares the subjects under
    Home's progress bar (with the `ctseg prepare` advice), not behind a bare spinner."""
    dirs = {**dash_dirs, "cache": tmp_path / "cache", "checkpoints": tmp_path / "runs"}
    dirs["checkpoints"].mkdir()
    # the bar may show only for a moment: every text the page ever rendered is recorded
    page.add_init_script(
        "window.__seen = [];"
        "new MutationObserver(() => { const t = document.body ? document.body.innerText : '';"
        " if (t.includes('into the cache')) window.__seen.push(t); })"
        ".observe(document, {subtree: true, childList: true, characterData: true});"
    )
    with streamlit_server(dirs, tmp_path / "server.log") as url:
        page.goto(f"{url}/train")
        page.get_by_role("heading", name="Live view").wait_for(timeout=120_000)
        seen = page.evaluate("window.__seen")
    assert any("into the cache — once per subject" in text for text in seen), seen[-1:]
    assert len(list((tmp_path / "cache").rglob("meta.json"))) == 6  # every phantom subject


def test_names_from_the_data_are_text_in_the_browser(server, page, dash_dirs, tmp_path):
    """What AppTest cannot see: the frontend links bare URLs and e-mail addresses and draws
    ':material/' icons after parsing, where Markdown escapes do not reach."""
    import shutil

    link = "[session expired - log in here](https://evil.example/login)"
    bare = "www.evil.example x@evil.example"
    bad, odd = tmp_path / "bad", tmp_path / "odd"
    for root in (bad, odd):
        shutil.copytree(dash_dirs["data"] / "s0000", root / "s0000")
    (bad / "meta.csv").write_text(f"image_id;split\ns0000;{link} :material/warning: {bare}\n")
    (odd / f":red[**{bare}**]" / "segmentations").mkdir(parents=True)  # no CT: a problem
    evil = 'a[href*="evil"], a[href^="javascript"], a[href^="mailto"]'
    page.goto(server)
    page.get_by_text("Structure coverage").wait_for()
    box = page.locator('[data-testid="stTextInput"] input').first
    box.fill(str(bad))
    page.get_by_role("button", name="Open").click()
    alert = page.locator('[data-testid="stAlert"]').filter(has_text="has split")
    alert.wait_for()
    shown = alert.inner_text().replace("\u200b", "")
    # the icon would show as its name without the colons, the links as their text alone
    assert f"has split '{link} :material/warning: {bare}'" in shown
    assert page.locator(evil).count() == 0
    box.fill(str(odd))
    page.get_by_role("button", name="Open").click()
    problems = page.get_by_text("problem(s) found in the dataset")
    problems.wait_for(timeout=120_000)
    problems.click()
    listed = page.get_by_text("no ct.nii.gz").first
    listed.wait_for()
    assert f":red[**{bare}**]: no ct.nii.gz" in listed.inner_text().replace("\u200b", "")
    assert page.locator(evil).count() == 0
