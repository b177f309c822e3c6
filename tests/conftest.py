"""Shared fixtures: the real sample (read in place), a small phantom dataset, a private cache."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SAMPLE_ROOT = SHARED_DATA / "totalseg_sample"
EXTRA = SHARED_DATA / "extra"


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The real TotalSegmentator sample (4 subjects), skipped when ../shared/data is absent."""
    if not (SAMPLE_ROOT / "meta.csv").is_file():
        pytest.skip("../shared/data/totalseg_sample is not available")
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def extra_dir() -> Path:
    if not EXTRA.is_dir():
        pytest.skip("../shared/data/extra is not available")
    return EXTRA


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One preprocessing cache for the whole session (subjects are prepared once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, session_cache):
    """Never write into the user's real cache or checkpoints from a test."""
    monkeypatch.setenv("CTSEG_CACHE", str(session_cache))


@pytest.fixture
def cache_dir(session_cache) -> Path:
    return session_cache


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small phantom dataset: 6 subjects of about 64 x 64 x 24, made once per session."""
    from ctseg_core.data.phantom.dataset import make_phantom_dataset

    root = tmp_path_factory.mktemp("phantom") / "data"
    make_phantom_dataset(root, n_subjects=6, seed=1, shape=(64, 64, 24))
    return root


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (MONAI's ops oversubscribe the 2-core machine, 5x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
