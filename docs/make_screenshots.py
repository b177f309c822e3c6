"""The README's screenshots (docs/screenshots/*.png), taken on a model that has really trained.

Trains the ``phantom_demo`` preset on the phantom demo dataset through the CLI (~10 minutes on
2 CPU cores; best mean validation Dice 0.80-0.83), then drives the dashboard in headless Chromium
(Debian's /usr/bin/chromium, as the browser tests do) and saves one screenshot per page: Home,
Train (the finished run's curves), Evaluate (the test split), Explore (a test subject, reference
beside prediction, its 3D view and the linked-planes viewer) and Predict (a test subject's CT uploaded as a new scan).

    python docs/make_screenshots.py [--work DIR] [--out docs/screenshots] [--epochs N]
        [--minutes M]

The work folder keeps the phantom, the cache and the run: a second call reuses the finished run
and only takes the screenshots again (an unfinished one is resumed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "dashboard"))

from browser_kit import (  # noqa: E402
    choose,
    go_to,
    launch_chromium,
    metric_value,
    new_page,
    screenshot,
    streamlit_server,
    wait_idle,
)

RUN = "phantom-demo"
TEST_SUBJECT = "s0003"  # in the phantom's test split (meta.csv), an abdomen


def train(dirs: dict[str, Path], epochs: int | None, minutes: float | None) -> None:
    """Train (or resume, or keep) checkpoints/phantom-demo with the phantom_demo preset."""
    run_dir = dirs["checkpoints"] / RUN
    status = run_dir / "status.json"
    if status.is_file() and json.loads(status.read_text())["state"] == "finished":
        print(f"{run_dir} has finished: reusing it")
        return
    cmd = [sys.executable, "-m", "ctseg_core", "train"]
    if (run_dir / "last.pth").is_file():
        cmd += ["--resume", str(run_dir)]
    else:
        cmd += [
            "--preset", "phantom_demo", "--data", str(dirs["data"]), "--cache", str(dirs["cache"]),
            "--checkpoints", str(dirs["checkpoints"]), "--run", RUN,
        ]  # fmt: skip
        if epochs:
            cmd += ["--epochs", str(epochs)]
        if minutes:
            cmd += ["--minutes", str(minutes)]
    subprocess.run(cmd, check=True)


def viewer_ready(page) -> None:
    """Wait until the linked-planes viewer's iframe has loaded its volumes."""
    for _ in range(600):  # the iframe appears, then navigates to the component's page
        frame = next((f for f in page.frames if "ctseg_niivue" in f.url), None)
        if frame is not None:
            frame.wait_for_function("window.ctsegReady === true", timeout=300_000)
            return
        page.wait_for_timeout(100)
    raise RuntimeError("the linked-planes viewer did not appear")


def take_screenshots(url: str, out: Path, data: Path) -> None:
    from playwright.sync_api import sync_playwright

    checkpoint = f"{RUN} (2D) / best.pth"  # as the pickers show it: the run, its kind
    with sync_playwright() as pw:
        browser = launch_chromium(pw)
        page = new_page(browser)
        page.goto(url)
        page.get_by_text("Structure coverage").wait_for()
        page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
        wait_idle(page)
        screenshot(page, out / "home.png")

        go_to(page, "Train")
        page.get_by_role("combobox", name="Run", exact=True).click()
        page.get_by_role("option", name=RUN).click()
        wait_idle(page)
        assert metric_value(page, "State") == "finished", metric_value(page, "State")
        screenshot(page, out / "train.png")

        go_to(page, "Evaluate")
        choose(page, "Run / checkpoint or model", checkpoint)
        wait_idle(page)
        page.get_by_role("button", name="Evaluate").click()
        page.get_by_text("Results on the test split").wait_for(timeout=300_000)
        page.get_by_text("Structure ranking").wait_for()
        wait_idle(page)
        screenshot(page, out / "evaluate.png")

        go_to(page, "Explore")
        page.get_by_role("combobox", name="Subject", exact=True).click()
        page.get_by_role("option", name=f"{TEST_SUBJECT} (test)").click()
        wait_idle(page)
        choose(page, "Prediction from", checkpoint)
        page.get_by_text("Reference and prediction").wait_for(timeout=300_000)
        page.locator('[data-testid="stImage"] img').first.wait_for()
        wait_idle(page)
        screenshot(page, out / "explore.png")
        page.get_by_text("3D view", exact=True).click()
        page.locator(".js-plotly-plot canvas").first.wait_for()
        wait_idle(page)
        page.locator(".js-plotly-plot").first.scroll_into_view_if_needed()
        screenshot(page, out / "explore_3d.png", top=False)
        page.get_by_text("3D view", exact=True).click()  # off again: the viewer alone below
        wait_idle(page)
        page.get_by_text("linked planes", exact=True).click()
        viewer_ready(page)
        wait_idle(page)
        screenshot(page, out / "explore_planes.png")

        go_to(page, "Predict")
        choose(page, "Checkpoint", checkpoint)
        wait_idle(page)
        page.locator('input[type="file"]').first.set_input_files(
            str(data / TEST_SUBJECT / "ct.nii.gz")
        )
        page.get_by_text("ct.nii.gz").first.wait_for()
        wait_idle(page)
        page.get_by_role("button", name="Predict").click()
        page.get_by_text("structures found").wait_for(timeout=300_000)
        page.locator('[data-testid="stImage"] img').first.wait_for()
        wait_idle(page)
        screenshot(page, out / "predict.png")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ctseg-shots")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    parser.add_argument(
        "--epochs", type=int, help="at most this many epochs (faster than the preset's 10 minutes)"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        help="the time budget (default the preset's 10; more on a busy CPU)",
    )
    args = parser.parse_args()

    from ctseg_core.data.phantom.dataset import make_phantom_dataset
    from ctseg_core.data.prepare import prepare_dataset

    dirs = {name: args.work / name for name in ("data", "cache", "checkpoints")}
    if not (dirs["data"] / "meta.csv").is_file():
        make_phantom_dataset(dirs["data"])  # the dashboard's demo dataset: 12 subjects, seed 0
    prepare_dataset(dirs["data"], dirs["cache"])
    dirs["checkpoints"].mkdir(parents=True, exist_ok=True)
    train(dirs, args.epochs, args.minutes)
    with streamlit_server(dirs, args.work / "server.log") as url:
        take_screenshots(url, args.out, dirs["data"])
    print(f"screenshots in {args.out}")


if __name__ == "__main__":
    main()
