"""Fixtures of the dashboard tests: the shared phantom and cache, a tiny trained run, page env."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HOME = str(REPO / "dashboard" / "Home.py")


@pytest.fixture(scope="session")
def dash_dirs(tmp_path_factory, phantom_root, session_cache) -> dict[str, Path]:
    """The shared small phantom (6 subjects of ~64 x 64 x 24), its cache, a checkpoints root."""
    from ctseg_core.data.prepare import prepare_dataset

    base = tmp_path_factory.mktemp("dashboard")
    dirs = {"data": phantom_root, "cache": session_cache, "checkpoints": base / "checkpoints"}
    dirs["checkpoints"].mkdir()
    prepare_dataset(phantom_root, session_cache, workers=1)
    return dirs


def tiny_config(dirs: dict[str, Path], run_name: str, epochs: int = 1, steps: int = 2):
    """A RunConfig that trains in a second or two on the phantom (tiny U-Net, 64 px)."""
    from ctseg_core.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from ctseg_core.data.summary import summarize_dataset

    coverage = summarize_dataset(dirs["data"], dirs["cache"], workers=1)["coverage"]
    data = DataConfig(
        data_root=str(dirs["data"]),
        cache_dir=str(dirs["cache"]),
        target_size=(64, 64),
        batch_size=4,
        structures=[s for s, n in coverage.items() if n > 0],
        val_slices_per_subject=4,
    )
    model = ModelConfig(features=[4, 8, 16, 32], bottleneck=64)
    train = TrainConfig(epochs=epochs, steps_per_epoch=steps)
    return RunConfig(data=data, model=model, train=train, run_name=run_name)


@pytest.fixture
def make_tiny_config():
    """``tiny_config`` for tests that train a run of their own."""
    return tiny_config


@pytest.fixture(scope="session")
def tiny_run(dash_dirs) -> Path:
    """A finished 1-epoch run folder under the test checkpoints root (trained by the library)."""
    import torch

    from ctseg_core.training.job import TrainingJob

    torch.set_num_threads(1)
    job = TrainingJob()
    run_dir = job.start(tiny_config(dash_dirs, "tiny").validate(), dash_dirs["checkpoints"])
    assert job.wait(120)
    assert job.snapshot().state == "finished", job.snapshot().error
    return Path(run_dir)


@pytest.fixture
def app_env(monkeypatch, dash_dirs) -> dict[str, Path]:
    """Environment of a dashboard started on the phantom (no data-root restriction)."""
    monkeypatch.setenv("CTSEG_DATA", str(dash_dirs["data"]))
    monkeypatch.setenv("CTSEG_CACHE", str(dash_dirs["cache"]))
    monkeypatch.setenv("CTSEG_CHECKPOINTS", str(dash_dirs["checkpoints"]))
    monkeypatch.delenv("CTSEG_DATA_ROOTS", raising=False)
    return dash_dirs


def _new_app(page: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(HOME, default_timeout=60)
    if page:
        at.switch_page(f"app_pages/{page}.py")
    return at


def _no_problems(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


@pytest.fixture
def new_app():
    """new_app(page=None): an AppTest of the dashboard entry, switched to app_pages/<page>.py."""
    return _new_app


def _choose_folder(folder):
    at = _new_app("evaluate")
    at.run()
    at.segmented_control(key="ctseg_eval_kind").set_value("a predictions folder (<id>.nii.gz)")
    at.run()
    at.text_input(key="ctseg_eval_folder").set_value(str(folder))
    at.run()
    return at


def _evaluate_folder(folder, split: str = "test", report: bool = False):
    at = _choose_folder(folder)
    at.selectbox(key="ctseg_eval_split").set_value(split)
    if report:
        at.toggle(key="ctseg_eval_report").set_value(True)
    at.button(key="ctseg_eval_go").click()
    at.run()
    return at


@pytest.fixture
def choose_folder():
    """choose_folder(folder): the Evaluate page with a predictions folder chosen, not scored."""
    return _choose_folder


@pytest.fixture
def evaluate_folder():
    """evaluate_folder(folder, split="test", report=False): the Evaluate page after scoring a
    predictions folder on ``split`` (with figures if ``report``)."""
    return _evaluate_folder


@pytest.fixture
def no_problems():
    """no_problems(at): assert no exception element and no st.error on the page."""
    return _no_problems


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium for a module's browser tests (playwright; skipped without it)."""
    pytest.importorskip("playwright", reason="needs the playwright package")
    from browser_kit import launch_chromium
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = launch_chromium(pw)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page (its own context) of the module's browser."""
    from browser_kit import new_page

    page = new_page(browser)
    yield page
    page.context.close()
