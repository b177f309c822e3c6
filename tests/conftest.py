"""Shared fixtures: the real sample (tests/data, and ../shared/data where present), a small
phantom dataset, a private cache."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATA = REPO / "tests" / "data"  # in git: s0000, the v2 class list, s0000's multilabels
S0000_ROOT = FIXTURE_DATA / "totalseg_sample"
EXTRA = FIXTURE_DATA / "extra"
SHARED_DATA = REPO.parent / "shared" / "data"  # optional: the larger subjects, DICOM, unlabeled CT
SAMPLE_ROOT = SHARED_DATA / "totalseg_sample"
SHARED_EXTRA = SHARED_DATA / "extra"


@pytest.fixture(scope="session")
def s0000_root() -> Path:
    """A dataset root holding the real subject s0000 alone (122 x 101 x 30 at 3 mm, all 117
    mask files) and its meta.csv row (split "train"); always present (tests/data)."""
    assert (S0000_ROOT / "s0000" / "ct.nii.gz").is_file(), f"{S0000_ROOT} is incomplete"
    return S0000_ROOT


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The real TotalSegmentator sample (4 subjects), skipped when ../shared/data is absent."""
    if not (SAMPLE_ROOT / "meta.csv").is_file():
        pytest.skip("../shared/data/totalseg_sample is not available")
    return SAMPLE_ROOT


@pytest.fixture
def root_of(request):
    """root_of(subject): the data root holding that real subject: tests/data for s0000, the
    4-subject sample in ../shared for the others (the test is skipped when it is absent)."""

    def root_of(subject: str) -> Path:
        if subject == "s0000":
            return request.getfixturevalue("s0000_root")
        return request.getfixturevalue("sample_root")

    return root_of


@pytest.fixture(scope="session")
def extra_dir() -> Path:
    """tests/data/extra: the v2 class list and s0000's reference and --fast multilabel files."""
    assert (EXTRA / "totalsegmentator_v2_classes.json").is_file(), f"{EXTRA} is incomplete"
    return EXTRA


@pytest.fixture(scope="session")
def shared_extra() -> Path:
    """../shared/data/extra (dicom_s0001/, unlabeled_ct_3mm.nii.gz), skipped when absent."""
    if not SHARED_EXTRA.is_dir():
        pytest.skip("../shared/data/extra is not available")
    return SHARED_EXTRA


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
