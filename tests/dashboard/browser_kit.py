"""Driving the dashboard in headless Chromium: a `streamlit run` server, the browser, page helpers.

Shared by the browser tests (test_browser.py) and docs/make_screenshots.py.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": 1440, "height": 1000}
SHOT_HEIGHT = 1500  # screenshots take a taller viewport: the app scrolls inside itself
FRESH = '[data-testid="stElementContainer"][data-stale="false"]'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def streamlit_server(
    dirs: dict[str, Path],
    log: Path,
    cwd: Path = REPO,
    address: str | None = "127.0.0.1",
    app: Path = REPO,
) -> Iterator[str]:
    """`streamlit run dashboard/Home.py` on a free localhost port; yields its URL.

    ``dirs`` holds "data", "cache" and "checkpoints" (the dashboard's CTSEG_* folders); the
    server's output goes to ``log``; it starts in ``cwd``, with ``--server.address`` unless that
    is None (then the dashboard's own config decides); ``app`` is the checkout whose dashboard
    runs (a benchmark compares two). Raises RuntimeError with the log's tail if
    it does not start within a minute.
    """
    port = free_port()
    env = {
        **os.environ,
        "CTSEG_DATA": str(dirs["data"]),
        "CTSEG_CACHE": str(dirs["cache"]),
        "CTSEG_CHECKPOINTS": str(dirs["checkpoints"]),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("CTSEG_DATA_ROOTS", None)
    cmd = [
        sys.executable, "-m", "streamlit", "run", str(app / "dashboard" / "Home.py"),
        "--server.port", str(port), "--server.headless", "true",
    ]  # fmt: skip
    if address is not None:
        cmd += ["--server.address", address]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"streamlit did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def launch_chromium(playwright):
    """Debian's Chromium, headless (a Playwright browser download does not work everywhere)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
        ],
    )  # fmt: skip


def new_page(browser):
    """A page in a fresh context at the standard viewport, with a 60 s default timeout."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(60_000)
    return page


def screenshot(page, path: Path, top: bool = True) -> None:
    """Save a PNG of the page at ``path`` with a tall viewport, scrolled to the top unless not ``top``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if top:
        page.evaluate(
            "document.querySelectorAll('*').forEach(e => { if (e.scrollTop > 0) e.scrollTop = 0; })"
        )
    page.set_viewport_size({"width": VIEWPORT["width"], "height": SHOT_HEIGHT})
    page.wait_for_timeout(800)
    page.screenshot(path=str(path))
    page.set_viewport_size(VIEWPORT)


def wait_idle(page) -> None:
    """Until Streamlit is not running the script (the status widget disappears)."""
    page.wait_for_timeout(300)
    page.locator('[data-testid="stStatusWidget"]').wait_for(state="detached", timeout=60_000)


def go_to(page, title: str) -> None:
    """Open a page from the sidebar navigation and wait until it has run."""
    page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
    page.get_by_role("heading", name=title, exact=True).wait_for()
    wait_idle(page)


def fresh(page, selector: str):
    """Elements of the current script run (a rerun keeps the previous ones, marked stale)."""
    return page.locator(f"{FRESH} {selector}")


def metric_value(page, label: str) -> str:
    metric = fresh(page, '[data-testid="stMetric"]').filter(has_text=label).first
    return metric.locator('[data-testid="stMetricValue"]').inner_text()


def choose(page, label: str, option: str) -> None:
    """Pick the option of a selectbox whose text contains ``option``, until the box shows it
    (a rerun landing meanwhile closes the open list: then open it again)."""
    from playwright.sync_api import Error as PlaywrightError

    box = page.get_by_role("combobox", name=label)
    for _ in range(10):
        wait_idle(page)
        if option in box.input_value():
            return
        try:
            box.click()
            page.get_by_role("option").filter(has_text=option).first.click(timeout=5_000)
        except PlaywrightError:
            page.keyboard.press("Escape")
    raise AssertionError(f"{label}: {box.input_value()!r}, not {option!r}")
