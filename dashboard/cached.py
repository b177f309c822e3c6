"""Every st.cache_* wrapper of the dashboard, and the paths they are keyed by.

Heavy objects are cached by small keys (paths, ids, mtimes), never by hashing whole volumes: a
CachedSubject holds memmaps, so caching it costs nothing and each slice read is a few
milliseconds. Arguments named with a leading underscore are not hashed by Streamlit; each such
call also takes a ``source`` string that names the volume uniquely.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import streamlit as st

from ctseg_core import settings
from ctseg_core.access import check_allowed_folder


def cache_dir() -> Path:
    """The preprocessing cache folder ($CTSEG_CACHE or the user cache)."""
    from ctseg_core.data.cache import default_cache_dir

    return default_cache_dir()


def checkpoints_root() -> Path:
    """The root of run folders, as for the CLI (see ctseg_core.settings.checkpoints_root)."""
    return settings.checkpoints_root()


def demo_dir() -> Path:
    """Where the phantom demo dataset lives (see ctseg_core.settings.demo_dir)."""
    return settings.demo_dir()


@st.cache_resource(show_spinner=False)
def ensure_demo_dataset(root: str) -> str:
    """Generate the phantom demo dataset once (skipped when it is already there)."""
    from ctseg_core.data.phantom.dataset import make_phantom_dataset

    path = Path(root)
    if not (path / "meta.csv").is_file():
        # In-process: a spawned worker would re-import the server's __main__, which Streamlit
        # points at the page script, and run the page again in every worker.
        make_phantom_dataset(path, workers=1)
    return str(path)


def default_dataset() -> tuple[str, bool]:
    """(dataset root, is it the demo?): $CTSEG_DATA when set, else the phantom demo dataset."""
    if env := settings.default_data_root():
        return env, False
    return str(demo_dir()), True


def checked_dataset_path(path: str) -> Path:
    """A user-given dataset path, resolved and checked against $CTSEG_DATA_ROOTS."""
    return check_allowed_folder(path, "give the dataset root (subject folders inside)")


def _tree_stamp(root: str) -> float:
    """A cheap change marker of a dataset: the newest mtime among the root, its files (meta.csv)
    and subject folders, their files (the CT) and their segmentations/ folders (a mask added
    or removed); their change times too, so a folder made readable (chmod) is read again. A
    mask rewritten in place under its name, or made readable alone, is not seen: Home's "Read
    the dataset again" (``forget_dataset``) is for that; its stat would cost 117 per subject."""
    try:
        info = Path(root).stat()
        stamps = [max(info.st_mtime, info.st_ctime)]
        entries = os.scandir(root)
    except OSError:  # a root this user cannot read: open_dataset says so, in one line
        return 0.0
    with entries:
        for entry in entries:
            stamps.append(_mtime(entry))
            try:
                if entry.is_dir() and not entry.name.startswith("."):
                    with os.scandir(entry.path) as inside:
                        stamps += [_mtime(e) for e in inside]
            except OSError:  # a folder this user cannot read: open_dataset says it, skipped
                pass
    return max(stamps)


def _mtime(entry: os.DirEntry) -> float:
    """An entry's latest change, its contents' (mtime) or its permissions' (ctime: a folder
    made readable is read again); its link's own for a broken link (0 for one gone mid-scan)."""
    try:
        info = entry.stat()
    except OSError:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            return 0.0
    return max(info.st_mtime, info.st_ctime)


def forget_dataset(root: str) -> None:
    """Drop what is kept of ``root``'s files (its summary, its index), so that the next page
    reads them again."""
    store = _summaries()
    for key in [k for k in store if k[0] == str(root)]:
        store.pop(key, None)
    _index.clear()


#: The dashboard prepares in one process: forking a server that holds torch and Streamlit threads
#: is not safe. `ctseg prepare --data <root>` prepares a large dataset in parallel beforehand.
PREPARE_WORKERS = 1


@st.cache_resource(show_spinner=False)
def _summaries() -> dict:
    """Server-wide {(root, cache, change stamp): summary} (the 4 newest; read-only dicts)."""
    return {}


def prepared_summary(root: str) -> dict:
    """summarize_dataset of ``root``, once per change stamp; on the first call it prepares what
    the cache lacks under a progress bar (any page may be the first one opened: a spinner
    alone would hide hours of preparing). The returned dict is shared: do not modify it."""
    from ctseg_core.data.summary import summarize_dataset

    key = (str(root), str(cache_dir()), _tree_stamp(root))
    store = _summaries()  # shared by the server's sessions: every access below is one step
    summary = store.get(key)
    if summary is None:
        bar = st.empty()
        from dashboard.state import plain  # names from the data, as plain text

        def progress(done: int, total: int, subject: str) -> None:
            bar.progress(
                done / max(total, 1),
                text=f"Preparing {plain(subject)} ({done} / {total}) into the cache — once per "
                f"subject; `ctseg prepare --data` {plain(root)} does this in parallel for a large "
                "dataset",
            )

        summary = summarize_dataset(root, cache_dir(), workers=PREPARE_WORKERS, progress=progress)
        bar.empty()
        store[key] = summary
        for old in list(store)[:-4]:
            store.pop(old, None)
    return summary


@st.cache_resource(show_spinner=False, max_entries=4)
def _index(root: str, stamp: float):
    from ctseg_core.data.dataset_root import open_dataset

    return open_dataset(root)


def dataset_index(root: str):
    """The DatasetIndex of a root (subjects, splits), cached per change stamp."""
    return _index(str(root), _tree_stamp(root))


def subject_version(root: str, subject_id: str) -> str:
    """The key of a subject's files as they are now (``data.cache.source_key``: the names,
    sizes and times of its CT and masks): a CT or mask changed on disk gets a new one, and with
    it new entries in every cache the subject's volumes are kept in; '' where it cannot be
    read (``open_cached`` then says why)."""
    from ctseg_core.data.cache import source_key
    from ctseg_core.errors import CtsegError

    try:
        return source_key(Path(root) / subject_id)
    except (CtsegError, OSError):
        return ""


@st.cache_resource(show_spinner=False, max_entries=16)
def _cached_subject(root: str, subject_id: str, cache: str, version: str):
    from ctseg_core.data.cache import open_cached

    return open_cached(root, subject_id, cache)


def cached_subject(root: str, subject_id: str):
    """The CachedSubject (memmapped (Z, X, Y) CT and labels), opened once per (root, subject)
    and version of its files (``subject_version``; its ``folder.name`` is that version)."""
    return _cached_subject(
        str(root), subject_id, str(cache_dir()), subject_version(root, subject_id)
    )


def subject_volume_id(root: str, subject_id: str) -> str:
    """How the dashboard names a subject's volume (Explore's viewer state, the browser's copies,
    the keys of its kept predictions): with its files' version, so a changed CT or mask is a
    new volume."""
    return f"{root}:{subject_id}:{cached_subject(root, subject_id).folder.name}"


@st.cache_data(show_spinner=False, max_entries=16)
def _subject_boxes(root: str, subject_id: str, cache: str, version: str) -> dict:
    from ctseg_core.viz.mesh import bounding_boxes

    entry = _cached_subject(root, subject_id, cache, version)
    return {
        value: tuple((b.start, b.stop) for b in box)
        for value, box in bounding_boxes(entry.labels).items()
    }


def structure_box_zxy(root: str, subject_id: str, values: list[int]) -> tuple | None:
    """The reference's bounding box of label ``values`` together (a merge: all its members):
    ((z0, z1), (x0, x1), (y0, y1)), half-open voxel ranges of the cache's (Z, X, Y) arrays;
    None where none of them is present."""
    boxes = _subject_boxes(
        str(root), subject_id, str(cache_dir()), subject_version(root, subject_id)
    )
    present = [boxes[value] for value in values if value in boxes]
    if not present:
        return None
    return tuple(
        (min(box[axis][0] for box in present), max(box[axis][1] for box in present))
        for axis in range(3)
    )


# ---------------------------------------------------------------- training and runs


@st.cache_resource(show_spinner=False)
def training_job():
    """The one TrainingJob of this server: every browser tab sees (and stops) the same job."""
    from ctseg_core.training.job import get_job

    return get_job()


def all_checkpoints() -> dict[str, str]:
    """label -> checkpoint path over every run under the checkpoints root, best run first
    (see ctseg_core.runs.listing.ranked_checkpoints)."""
    from ctseg_core.runs.listing import ranked_checkpoints

    show_runs_root_problem()
    return {label: str(path) for label, path in ranked_checkpoints(checkpoints_root()).items()}


def show_runs_root_problem() -> bool:
    """A warning when the checkpoints folder cannot be read (its runs are then not listed, and
    "no run yet" would not be so); whether there was one."""
    from ctseg_core.runs.listing import root_problem
    from dashboard.state import plain

    problem = root_problem(checkpoints_root())
    if problem:
        st.warning(plain(problem))
    return problem is not None


# ---------------------------------------------------------------- meshes, stats, browser volumes


@st.cache_resource(show_spinner=False, max_entries=32)
def _meshes(source: str, values: tuple, spacing_mm: tuple, kind: str, _labels_zxy, _affine):
    from ctseg_core.viz.mesh import structure_meshes

    return structure_meshes(
        _labels_zxy, list(values), spacing_mm, _affine, max_faces_total=120000, kind=kind
    )


def meshes_cached(source: str, labels_zxy, values, spacing_mm, affine, kind: str) -> list[dict]:
    """structure_meshes items of some structures, cached by a source key (volume never hashed).

    ``source`` names the label volume uniquely (e.g. "ref:<root>:<subject>").
    """
    values = tuple(sorted(int(v) for v in values))
    spacing = tuple(float(s) for s in spacing_mm)
    return _meshes(source, values, spacing, kind, labels_zxy, affine)


@st.cache_data(show_spinner=False, max_entries=64)
def _volume_stats(source: str, _labels_zxy, _ct_zxy, spacing_zxy: tuple):
    from ctseg_core.metrics.stats import compute_volume_stats

    return compute_volume_stats(_labels_zxy, _ct_zxy, spacing_zxy)


def volume_stats(source: str, labels_zxy, ct_zxy, spacing_mm):
    """VolumeStats (ml, mean HU per label) of a (Z, X, Y) label volume, cached by source key."""
    sx, sy, sz = (float(s) for s in spacing_mm)
    return _volume_stats(source, labels_zxy, ct_zxy, (sz, sx, sy))


@st.cache_data(show_spinner=False, max_entries=16)
def _label_counts(source: str, _labels_zxy) -> np.ndarray:
    from ctseg_core.labels import NUM_LABELS

    return np.bincount(np.asarray(_labels_zxy).ravel(), minlength=NUM_LABELS)


def label_counts(source: str, labels_zxy) -> np.ndarray:
    """(118,) voxels per label value of a label volume, counted once per source key."""
    return _label_counts(source, labels_zxy)


@st.cache_data(max_entries=16, show_spinner=False)
def _steps_frame(path: str, stamp: tuple):
    from ctseg_core.runs.step_log import read_steps
    from dashboard.helpers.tracker import steps_frame

    return steps_frame(read_steps(Path(path)))


def steps_frame(run_dir: Path):
    """A run's steps.jsonl as ``tracker.steps_frame``, re-read only when the file changed (a
    live view refreshes every 1.5 s; the file grows every few seconds)."""
    try:
        info = (Path(run_dir) / "steps.jsonl").stat()
        stamp = (info.st_mtime_ns, info.st_size)
    except OSError:
        stamp = None
    return _steps_frame(str(run_dir), stamp)


@st.cache_resource(show_spinner=False, max_entries=6)
def _browser_nifti(source: str, stride_xyz: tuple, dtype: str, _volume_zxy, _affine) -> bytes:
    from ctseg_core.viz.browser_volume import nifti_bytes

    return nifti_bytes(_volume_zxy, _affine, stride_xyz, np.dtype(dtype))


def browser_nifti(source: str, volume_zxy, affine, stride_xyz, dtype: str) -> bytes:
    """NIfTI bytes of a (Z, X, Y) volume for the browser viewer, built once per source key
    (a 256 x 256 x 300 CT: 39 MB, about half a second); shared by every session."""
    return _browser_nifti(source, tuple(int(s) for s in stride_xyz), dtype, volume_zxy, affine)


# ---------------------------------------------------------------- charts


def vega_lite_spec(chart) -> dict | None:
    """An Altair chart as the Vega-Lite spec (data inlined as Arrow) that ``st.altair_chart``
    sends; draw it with ``st.vega_lite_chart``. Kept in a cache, a spec saves Altair's ~0.1 s of
    CPU per chart and run (it builds and validates the chart against its JSON schema)."""
    if chart is None:
        return None
    # Streamlit's own conversion: the same theme and data transport as st.altair_chart
    from streamlit.elements.vega_charts import _convert_altair_to_vega_lite_spec

    return _convert_altair_to_vega_lite_spec(chart)


@st.cache_data(max_entries=8, show_spinner=False)
def _coverage_spec(coverage: tuple) -> dict | None:
    from dashboard.helpers import charts

    return vega_lite_spec(charts.coverage_chart(dict(coverage)))


def coverage_spec(coverage: dict[str, int]) -> dict | None:
    """The spec of ``charts.coverage_chart`` (None: no structure present), built once per
    coverage (Home draws it on every visit)."""
    return _coverage_spec(tuple(coverage.items()))
