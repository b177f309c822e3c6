"""What CTs a model was trained on: the record a run keeps, and how a CT compares with it.

The record, ``training_data.json`` in a run folder and ``"training_data"`` in its checkpoints::

    {"version": 1, "source": "phantom" | "dataset", "data_root": str, "split": "train",
     "subjects": int, "subject_ids_sha1": str,              # which CTs (sorted ids' SHA-1)
     "spacing_mm": {"min": [x, y, z], "max": [x, y, z]},   # canonical axes, over the subjects
     "hu_range": [min, max],                                # over all training CTs (HU)
     "body_hu": {"percentiles": [5, 50, 95], "min": [...], "max": [...], "subjects": int},
     "slice_field_of_view_mm": {"min": [x, y], "max": [x, y]},  # slice (2D, 2.5D) models only
     "extent_mm": {"min": [x, y, z], "max": [x, y, z]}}  # volumetric (3D) models only

``slice_field_of_view_mm``: the axial slices' extent (voxels x spacing) over the subjects. A
slice model sees every slice resized to its ``target_size``, so its pixel is that extent over
the target size: a CT of a much smaller or larger field of view is seen magnified or shrunk.
``extent_mm``: each CT's extent along x, y, z; a volumetric model pads a CT smaller than its
patch, so a CT much smaller than those it was trained on gives its windows little context.

``body_hu``: per CT, the percentiles of its body voxels (HU >= ``BODY_HU``: air and lung left
out, so the share of air around a patient does not move them), from a subsample of at most
``MAX_SLICES`` axial slices; ``min`` and ``max`` over at most ``MAX_HU_SUBJECTS`` training CTs
(spread evenly over the split). Cheap: a training run on the whole TotalSegmentator dataset reads
about 4 MB per sampled subject from the preprocessing cache.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..fileio import atomic_write_json
from .phantom.dataset import MARKER, PHANTOM_DESCRIP

log = logging.getLogger(__name__)

VERSION = 1
RECORD_FILE = "training_data.json"
#: voxels at or above this are "body" (fat is about -100 HU, lung -850, air -1000)
BODY_HU = -500
PERCENTILES = (5, 50, 95)
MAX_SLICES = 16
MAX_VALUES = 200_000
MAX_HU_SUBJECTS = 32


def body_hu_percentiles(ct_zxy: np.ndarray) -> list[float] | None:
    """``PERCENTILES`` of the body voxels (HU >= ``BODY_HU``) of a CT, or None when it has none.

    ``ct_zxy``: (Z, X, Y) HU, axial slice first (the cache's layout; a memory map reads only the
    slices sampled): at most ``MAX_SLICES`` evenly spaced slices, strided in-plane to at most
    ``MAX_VALUES`` voxels.
    """
    z, x, y = ct_zxy.shape
    zs = np.unique(np.linspace(0, z - 1, min(z, MAX_SLICES)).round().astype(int))
    step = max(1, math.ceil(math.sqrt(len(zs) * x * y / MAX_VALUES)))
    sample = np.asarray(ct_zxy[zs, ::step, ::step], dtype=np.float32)
    body = sample[sample >= BODY_HU]
    if body.size == 0:
        return None
    return [round(float(v), 1) for v in np.percentile(body, PERCENTILES)]


def is_phantom_root(root: str | Path) -> bool:
    """Whether ``root`` is a dataset written by the synthetic phantom (it holds its marker)."""
    return (Path(root) / MARKER).is_file()


def is_phantom_ct(path: str | Path) -> bool:
    """Whether a CT file is the synthetic phantom's: it lies in a phantom dataset
    (``root/<id>/ct.nii.gz``) or its NIfTI header says so (an upload of one). A DICOM folder or
    an unreadable file: False."""
    path = Path(path)
    if path.is_dir():
        return False
    if is_phantom_root(path.parent.parent):
        return True
    try:
        import nibabel as nib

        descrip = nib.load(str(path)).header.get("descrip")
        return bytes(np.asarray(descrip).tobytes()).startswith(PHANTOM_DESCRIP)
    except Exception:  # not a NIfTI (or not readable): the reader says why elsewhere
        return False


def describe_training_data(
    subjects: Sequence, data_root: str | Path, split: str, slice_model: bool = False
) -> dict:
    """The record of the CTs a model trains on (module docstring), from their cache entries.

    ``subjects``: ``CachedSubject`` entries (``spacing_mm``, ``meta["hu_range"]``, ``ct`` as
    (Z, X, Y)); spacing and HU range from every entry's metadata, body percentiles from a sample
    of at most ``MAX_HU_SUBJECTS`` of them; ``slice_model``: a 2D / 2.5D model (its record
    holds the slices' field of view).
    """
    spacings = np.array([s.spacing_mm for s in subjects], dtype=float).reshape(-1, 3)
    ranges = [s.meta.get("hu_range") for s in subjects]
    ranges = np.array([r for r in ranges if r], dtype=float).reshape(-1, 2)
    picks = np.unique(np.linspace(0, len(subjects) - 1, min(len(subjects), MAX_HU_SUBJECTS)))
    profiles = [body_hu_percentiles(subjects[int(i)].ct) for i in picks] if subjects else []
    profiles = np.array([p for p in profiles if p is not None], dtype=float)
    record = {
        "version": VERSION,
        "source": "phantom" if is_phantom_root(data_root) else "dataset",
        "data_root": str(data_root),
        "split": split,
        "subjects": len(subjects),
        "subject_ids_sha1": subject_ids_digest(subjects),
        "spacing_mm": None,
        "hu_range": None,
        "body_hu": None,
    }
    if len(spacings):
        record["spacing_mm"] = {
            "min": [round(float(v), 4) for v in spacings.min(axis=0)],
            "max": [round(float(v), 4) for v in spacings.max(axis=0)],
        }
    if len(ranges):
        record["hu_range"] = [int(ranges[:, 0].min()), int(ranges[:, 1].max())]
    if slice_model and len(spacings):
        extent = np.array([s.ct.shape[1:] for s in subjects], dtype=float) * spacings[:, :2]
        record["slice_field_of_view_mm"] = {
            "min": [round(float(v), 1) for v in extent.min(axis=0)],
            "max": [round(float(v), 1) for v in extent.max(axis=0)],
        }
    if not slice_model and len(spacings):
        record["extent_mm"] = _extent_record(subjects)
    if len(profiles):
        record["body_hu"] = {
            "percentiles": list(PERCENTILES),
            "min": [round(float(v), 1) for v in profiles.min(axis=0)],
            "max": [round(float(v), 1) for v in profiles.max(axis=0)],
            "subjects": len(profiles),
        }
    return record


def subject_ids_digest(subjects: Sequence) -> str:
    """SHA-1 of the sorted ``subject_id`` of ``CachedSubject`` entries: which CTs, in short."""
    ids = sorted(str(s.subject_id) for s in subjects)
    return hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest()


def val_subjects_warning(record: dict | None, subjects: Sequence, split: str) -> str | None:
    """One line when a resumed run validates on other subjects than its record's first epochs
    did (meta.csv's split changed since): best.pth and early stopping would then compare scores
    of other CTs. None for the same ones, or a record without them (older runs)."""
    digest = (record or {}).get("val_subject_ids_sha1")
    if not digest or digest == subject_ids_digest(subjects):
        return None
    return (
        f"the {split!r} split now holds other validation subjects ({len(subjects)}) than this "
        "run's earlier epochs were validated on: best.pth and early stopping compare scores of "
        "other CTs; restore meta.csv's split, or start a new run"
    )


def check_resumed_data(record: dict | None, subjects: Sequence, data_root: str | Path) -> None:
    """ConfigError when a resumed run's training subjects are not those its checkpoint's
    ``record`` trained on (by their ids' digest, a record from before it by their number; and
    by the range of their voxel sizes, which another copy of the same subjects changes): a
    relative ``data_root`` read from another folder would continue on other CTs silently."""
    if not record:
        return
    digest = record.get("subject_ids_sha1")
    same = (
        digest == subject_ids_digest(subjects)
        if digest
        else int(record.get("subjects", len(subjects))) == len(subjects)
    )
    if not same:
        raise ConfigError(
            f"this run trained on {record.get('subjects')} {record.get('split')} subjects of "
            f"{record.get('data_root')}; {data_root} gives {len(subjects)} other ones here: "
            "resume it on the data it started on (a relative path is read from the current "
            "folder), or start a new run"
        )
    recorded = record.get("spacing_mm")
    if subjects and isinstance(recorded, dict):  # the same ids, other CTs (another copy)
        spacings = np.array([s.spacing_mm for s in subjects], dtype=float).reshape(-1, 3)
        now = {"min": np.round(spacings.min(axis=0), 4).tolist(),
               "max": np.round(spacings.max(axis=0), 4).tolist()}  # fmt: skip
        if not all(np.allclose(now[k], recorded.get(k, now[k]), atol=1e-3) for k in now):
            raise ConfigError(
                f"this run trained on CTs of {recorded['min']} to {recorded['max']} mm voxels "
                f"from {record.get('data_root')}; the same subjects in {data_root} have "
                f"{now['min']} to {now['max']} mm: other CTs; resume it on the data it started "
                "on, or start a new run"
            )


def _extent_record(subjects: Sequence) -> dict:
    """{"min", "max"} of the subjects' extents along x, y, z in mm (``CachedSubject``s)."""
    spacings = np.array([s.spacing_mm for s in subjects], dtype=float).reshape(-1, 3)
    shapes = np.array(
        [np.roll(s.ct.shape, -1) for s in subjects], dtype=float
    )  # (Z,X,Y) -> x, y, z
    extent = shapes * spacings
    return {
        "min": [round(float(v), 1) for v in extent.min(axis=0)],
        "max": [round(float(v), 1) for v in extent.max(axis=0)],
    }


def record_training_data(
    run_dir: str | Path,
    subjects: Sequence,
    data_root: str | Path,
    split: str,
    resumed=None,
    slice_model: bool = False,
    val_subjects: Sequence = (),
) -> dict:
    """The record of a run (``resumed``: the one its checkpoint kept, else described now),
    written to ``run_dir/training_data.json``; a failed write is logged, not fatal. It keeps
    the digest of the validation subjects its first epochs scored (``val_subjects_warning``)."""
    record = resumed or describe_training_data(subjects, data_root, split, slice_model)
    if resumed and not slice_model and "extent_mm" not in record and len(subjects):
        record = {**record, "extent_mm": _extent_record(subjects)}  # kept from before it existed
    if "val_subject_ids_sha1" not in record and val_subjects:  # kept once: the first epochs'
        record = {**record, "val_subject_ids_sha1": subject_ids_digest(val_subjects)}
    try:
        atomic_write_json(Path(run_dir) / RECORD_FILE, record)
    except OSError as exc:
        log.warning("could not write %s: %s", Path(run_dir) / RECORD_FILE, exc)
    return record
