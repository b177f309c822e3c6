"""The synthetic phantom dataset: small CT-like volumes in the exact TotalSegmentator layout.

``make_phantom_dataset(root)`` writes ``root/sNNNN/ct.nii.gz`` (int16 HU) and
``root/sNNNN/segmentations/<name>.nii.gz`` for all 117 structures (uint8 0/1, most empty) plus
``root/meta.csv`` (';'-separated: image_id;age;gender;institute;study_type;split).

Each subject is a synthetic thorax/abdomen/pelvis (about 90 labelled structures; see
``subject``, ``trunk`` and ``skeleton``) with per-subject size, position, in-plane
rotation, a smooth deformation, organ jitter, contrast phase, z coverage (thorax- to
pelvis-heavy), slice spacing (1.5-5 mm), in-plane size and spacing, and on-disk orientation
(RAS, LAS or LPS affines, the voxels reordered so the anatomy stays right in world
coordinates). The CT is the painted HU volume, blurred (partial volume, sigma 0.7 voxel) plus
Gaussian noise (10-20 HU). Masks come from one label volume, so they never overlap. Same seed
-> byte-identical files.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import gzip
import io
import json
import logging
import math
import multiprocessing
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from ...errors import ConfigError, DataError
from ...fileio import atomic_write_text
from ...labels import STRUCTURES
from .subject import SubjectSpec, plan_dataset, render_subject

__all__ = [
    "MARKER",
    "PHANTOM_DESCRIP",
    "SubjectSpec",
    "make_phantom_dataset",
    "plan_dataset",
    "render_subject",
]

log = logging.getLogger(__name__)

MARKER = ".ctseg-phantom.json"
#: the NIfTI header description of every phantom file, so that a phantom CT is known as such
#: outside its dataset too (e.g. uploaded on the Predict page)
PHANTOM_DESCRIP = b"ctseg synthetic phantom"
#: the largest nominal grid: a subject grows to 1.6x it, rendered in float32 several times over
MAX_VOXELS = 512**3
_GZIP_LEVEL = 1  # nibabel's default; level 6 took 2.4x the time for 8% smaller files (measured)


def _reorient(array: np.ndarray, affine: np.ndarray, code: str) -> tuple[np.ndarray, np.ndarray]:
    """The RAS ``array`` and its affine, stored with axis codes ``code`` (same world anatomy)."""
    ornt = ornt_transform(axcodes2ornt(("R", "A", "S")), axcodes2ornt(tuple(code)))
    return apply_orientation(array, ornt), affine @ inv_ornt_aff(ornt, array.shape)


def _nifti_gz(array: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz file's bytes; gzip mtime 0, so the same voxels give the same bytes every run."""
    img = nib.Nifti1Image(np.asarray(array), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = PHANTOM_DESCRIP
    return gzip.compress(img.to_bytes(), compresslevel=_GZIP_LEVEL, mtime=0)


def _mask_writer(shape: tuple[int, ...], affine: np.ndarray) -> Callable[[np.ndarray], bytes]:
    """A fast .nii.gz encoder for uint8 masks of one grid: nibabel's header once, then raw bytes.

    Writing ~40 masks per subject through nibabel's chunked writer costs more than drawing the
    subject; the header is identical for all of them and the voxels follow it directly.
    """
    template = gzip.decompress(_nifti_gz(np.zeros(shape, np.uint8), affine))
    header = template[: len(template) - int(np.prod(shape))]

    def encode(mask: np.ndarray) -> bytes:
        raw = header + mask.astype(np.uint8, copy=False).tobytes(order="F")
        return gzip.compress(raw, compresslevel=_GZIP_LEVEL, mtime=0)

    return encode


def write_subject(spec: SubjectSpec, root: str | Path) -> str:
    """Render one subject and move it into ``root/<id>`` whole (a temporary sibling, renamed)."""
    root = Path(root)
    ct, labels, affine = render_subject(spec)
    ct, disk_affine = _reorient(ct, affine, spec.orientation)
    labels, _ = _reorient(labels, affine, spec.orientation)
    tmp = root / f".tmp-phantom-{spec.subject_id}-{uuid.uuid4().hex[:8]}"
    (tmp / "segmentations").mkdir(parents=True)
    try:
        (tmp / "ct.nii.gz").write_bytes(_nifti_gz(ct, disk_affine))
        encode = _mask_writer(labels.shape, disk_affine)
        present = set(np.flatnonzero(np.bincount(labels.ravel(), minlength=256)).tolist())
        empty = encode(np.zeros(labels.shape, np.uint8))
        for value, name in enumerate(STRUCTURES, start=1):
            data = encode(labels == value) if value in present else empty
            (tmp / "segmentations" / f"{name}.nii.gz").write_bytes(data)
        _replace_dir(tmp, root / spec.subject_id)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return spec.subject_id


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an existing target (an earlier phantom subject) goes first."""
    if target.exists():
        old = target.with_name(f".tmp-phantom-old-{target.name}-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
        os.replace(new, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(new, target)


def _marker(root: Path, key: str):
    """``key`` of the phantom marker at ``root`` (None if root is not a phantom folder)."""
    try:
        return json.loads((root / MARKER).read_text(encoding="utf-8"))[key]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _earlier_phantom(root: Path) -> list[str] | None:
    """Subject ids of the phantom at ``root`` (None if root is not a phantom folder)."""
    subjects = _marker(root, "subjects")
    return [str(s) for s in subjects] if isinstance(subjects, list) else None


def _check_root(root: Path, ids: list[str]) -> list[str]:
    """Subject ids of an earlier phantom at ``root`` ([] if root is absent or empty).

    Raises DataError when root is a file, a non-empty folder without the phantom marker, or a
    phantom holding a subject folder it did not write (so nothing of the user's is replaced).
    """
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file; give a new or empty folder for the phantom dataset")
    if not root.is_dir() or not any(root.iterdir()):
        return []
    old = _earlier_phantom(root)
    if old is None:
        raise DataError(
            f"{root} is not empty and is not a ctseg phantom (no {MARKER}); "
            "give a new or empty folder so nothing of yours is overwritten"
        )
    foreign = [sid for sid in ids if (root / sid).exists() and sid not in old]
    if foreign:
        raise DataError(
            f"{root / foreign[0]} was not written by the phantom; move it away or give a new folder"
        )
    return old


def _write_marker(root: Path, specs: list[SubjectSpec], subjects: list[str], done: bool) -> None:
    info = {
        "generator": "ctseg_core.data.phantom.dataset",
        "complete": done,
        "subjects": sorted(subjects),
        "specs": [asdict(s) for s in specs],
    }
    atomic_write_text(root / MARKER, json.dumps(info, indent=1) + "\n")


def _meta_csv(specs: list[SubjectSpec]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";", lineterminator="\n")
    writer.writerow(["image_id", "age", "gender", "institute", "study_type", "split"])
    for s in specs:
        study = f"ct {s.region}" + (" angiography" if s.phase == "arterial" else "")
        writer.writerow([s.subject_id, s.age, s.gender, s.institute, study, s.split])
    return buf.getvalue()


def make_phantom_dataset(
    root: str | Path,
    n_subjects: int = 12,
    seed: int = 0,
    shape: tuple[int, int, int] = (160, 160, 64),
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    replace: bool = True,
) -> list[str]:
    """Write n_subjects phantom CTs in TotalSegmentator layout under root; return subject ids.

    ``shape`` is the nominal grid (x, y, z voxels); subjects vary around it (in-plane x0.875 to
    x1.125, slices x0.8 to x1.25). ``root`` must be absent, empty, or an earlier phantom (it holds
    the marker file .ctseg-phantom.json), which is then regenerated: its subject folders and
    meta.csv are replaced, other files are left alone. Each subject appears whole or not at all;
    meta.csv is written last, so its presence means the dataset is complete. ``workers``
    processes render subjects in parallel (default: one per core, at most one per subject);
    ``progress(done, total)`` is called as subjects finish. Raises ConfigError for bad arguments
    and DataError for a root that holds something else, or (``replace`` False) an earlier
    phantom of other subjects: runs and evaluations made on it would then describe other CTs.
    """
    if (
        n_subjects < 1
        or seed < 0
        or len(shape) != 3
        or min(shape) < 8
        or math.prod(shape) > MAX_VOXELS
    ):
        raise ConfigError(
            f"phantom needs n_subjects >= 1, seed >= 0 and a 3-value shape of at least 8 voxels "
            f"each and {MAX_VOXELS:,} in all (a 512 x 512 x 512 CT), got n_subjects={n_subjects}, "
            f"seed={seed}, shape={tuple(shape)}; e.g. --subjects 12 --size 160 160 64"
        )
    root = Path(root).expanduser()
    specs = plan_dataset(n_subjects, seed, tuple(shape))
    ids = [s.subject_id for s in specs]
    old = _check_root(root, ids)
    planned = json.loads(json.dumps([asdict(s) for s in specs]))  # as the marker holds them
    if old and not replace and _marker(root, "specs") != planned:
        raise DataError(
            f"{root} holds a phantom of other subjects (another --subjects, --seed or --size); "
            "runs and evaluations made on it would describe other CTs: give --replace to "
            "regenerate it, or another folder"
        )
    root.mkdir(parents=True, exist_ok=True)
    _write_marker(root, specs, sorted(set(old) | set(ids)), done=False)
    (root / "meta.csv").unlink(missing_ok=True)
    for stale in root.glob(".tmp-phantom-*"):  # left by an interrupted run of ours
        shutil.rmtree(stale, ignore_errors=True)
    total = len(specs)
    if progress:
        progress(0, total)
    if workers is None:
        workers = (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        )
    workers = max(1, min(int(workers or 1), total))
    if workers == 1:
        for done, spec in enumerate(specs, start=1):
            write_subject(spec, root)
            if progress:
                progress(done, total)
    else:
        # spawn: safe from threaded parents (the dashboard) and the same on every platform.
        context = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = [pool.submit(write_subject, spec, root) for spec in specs]
            for done, future in enumerate(cf.as_completed(futures), start=1):
                future.result()
                if progress:
                    progress(done, total)
    for stale in sorted(set(old) - set(ids)):
        if re.fullmatch(r"s\d{4,}", stale):  # only folders a phantom can have made
            shutil.rmtree(root / stale, ignore_errors=True)
    atomic_write_text(root / "meta.csv", _meta_csv(specs))
    _write_marker(root, specs, ids, done=True)
    log.info("wrote %d phantom subjects to %s", total, root)
    return ids
