"""The Train page's tracker in headless Chromium: the per-step curve moves during an epoch of a
real run, and the runs table, rename and delete work with real clicks."""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path

import pytest
from browser_kit import CHROMIUM, fresh, launch_chromium, new_page, streamlit_server, wait_idle

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]

LOGGED = re.compile(r"(\d+) steps logged · last: epoch (\d+), step (\d+)")


@pytest.fixture
def page():
    pytest.importorskip("playwright", reason="needs the playwright package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = new_page(browser)
        yield page
        browser.close()


def _logged(page) -> tuple[int, int, int]:
    """(steps logged, epoch, step) from the caption under the step curves."""
    text = fresh(page, '[data-testid="stCaptionContainer"]').filter(has_text="steps logged")
    match = LOGGED.search(text.first.inner_text())
    return tuple(int(g) for g in match.groups())


def test_the_step_curve_moves_during_the_first_epoch_of_a_run(
    dash_dirs, make_tiny_config, page, tmp_path
):
    from ctseg_core.training.trainer import Trainer

    dirs = {**dash_dirs, "checkpoints": tmp_path / "runs"}
    dirs["checkpoints"].mkdir()
    config = make_tiny_config(dirs, "live", epochs=1, steps=2000).validate()
    stop = threading.Event()
    trainer = Trainer(config, checkpoints_root=dirs["checkpoints"], stop_event=stop)
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()  # trained here; the server watches its folder as it would a CLI run
    try:
        with streamlit_server(dirs, tmp_path / "server.log") as url:
            page.goto(f"{url}/train")
            page.get_by_text("steps logged").first.wait_for(timeout=120_000)
            first = _logged(page)
            charts = page.locator('[data-testid="stVegaLiteChart"]')
            charts.nth(1).wait_for()
            assert charts.count() >= 2  # loss and learning rate per step (and the machine)
            deadline = time.time() + 60
            while (later := _logged(page))[0] <= first[0] and time.time() < deadline:
                page.wait_for_timeout(1000)  # the live view refreshes itself: no reload
            assert later[0] > first[0] and later[1] == first[1] == 1, (first, later)
            assert later[2] > first[2]
            assert page.get_by_text("No finished epoch yet").count() == 1  # mid-epoch
    finally:
        stop.set()
        thread.join(60)


def test_runs_table_rename_and_delete_with_real_clicks(dash_dirs, tiny_run, page, tmp_path):
    dirs = {**dash_dirs, "checkpoints": tmp_path / "runs"}
    dirs["checkpoints"].mkdir()
    for name in ("keep", "old"):
        shutil.copytree(tiny_run, dirs["checkpoints"] / name)
    with streamlit_server(dirs, tmp_path / "server.log") as url:
        page.goto(f"{url}/train")
        page.get_by_role("heading", name="Runs", exact=True).wait_for(timeout=120_000)
        wait_idle(page)
        table = page.locator('[data-testid="stDataFrame"]')
        table.first.wait_for()
        assert table.count() == 1
        assert page.get_by_text("2 of 2 runs").count() == 1
        page.get_by_role("textbox", name="Filter").fill("kee")
        page.get_by_role("textbox", name="Filter").press("Enter")
        page.get_by_text("1 of 2 runs").wait_for()
        # rename the watched run: copies share updated_at, so the list's first is "old"
        page.locator(FRESH_POPOVER, has_text="Rename").first.click()
        page.get_by_role("textbox", name="New name").fill("renamed")
        page.get_by_role("button", name="Rename", exact=True).last.click()
        page.get_by_text("Renamed old to renamed").wait_for()
        assert sorted(p.name for p in dirs["checkpoints"].iterdir()) == ["keep", "renamed"]
        wait_idle(page)
        page.locator(FRESH_POPOVER, has_text="Delete").first.click()
        page.get_by_role("button", name="Delete renamed").click()
        page.get_by_text("Deleted renamed").wait_for()
        assert sorted(p.name for p in dirs["checkpoints"].iterdir()) == ["keep"]


FRESH_POPOVER = '[data-testid="stPopover"] button'
