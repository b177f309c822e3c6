"""The synthetic phantom dataset: small CT-like volumes in the exact TotalSegmentator layout.

``make_phantom_dataset(root)`` writes ``root/sNNNN/ct.nii.gz`` (int16 HU) and
``root/sNNNN/segmentations/<name>.nii.gz`` for all 117 structures (uint8 0/1, most empty) plus
``root/meta.csv`` (';'-separated: image_id;age;gender;institute;study_type;split).

Each subject is a synthetic thorax/abdomen/pelvis (about 70 labelled structures, see
phantom_trunk and phantom_skeleton) with per-subject size, position, in-plane rotation, a smooth
deformation, organ jitter, contrast phase, z coverage (thorax- to pelvis-heavy), slice spacing
(1.5-5 mm), in-plane size and spacing, and on-disk orientation (RAS, LAS or LPS affines, the
voxels reordered so the anatomy stays right in world coordinates). The CT is the painted HU
volume, blurred (partial volume, sigma 0.7 voxel) plus Gaussian noise (10-20 HU). Masks come
from one label volume, so they never overlap. Same seed -> byte-identical files.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import gzip
import io
import json
import logging
import multiprocessing
import os
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from ..errors import ConfigError, DataError
from ..fileio import atomic_write_text
from ..labels import STRUCTURES
from .phantom_body import Z_RANGE_MM, Body, body_half_axes, paint_body_wall, paint_table
from .phantom_paint import PHASES, Painter, tissue_table
from .phantom_shapes import BodyGrid, displacement, smooth_noise
from .phantom_skeleton import paint_muscles, paint_pelvic_bones, paint_ribs, paint_spine
from .phantom_trunk import (
    paint_bowel,
    paint_pelvis,
    paint_thorax,
    paint_upper_abdomen,
    paint_vessels,
)

log = logging.getLogger(__name__)

MARKER = ".ctseg-phantom.json"
ORIENTATIONS = ("RAS", "LAS", "LPS")
#: body-frame z (mm) range of the centre of the covered slab, per study region
REGIONS = {  # in cycle order: any three consecutive regions span thorax to pelvis
    "abdomen": (60.0, 100.0),
    "thorax": (200.0, 250.0),
    "pelvis": (-85.0, -45.0),
    "thorax-abdomen": (115.0, 150.0),
    "abdomen-pelvis": (10.0, 45.0),
}
SLICE_SPACINGS_MM = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0)
_GZIP_LEVEL = 1  # nibabel's own default; level 6+ triples the write time for ~15% smaller files


@dataclass(frozen=True)
class SubjectSpec:
    """What is drawn at dataset level for one subject; the rest comes from (seed, index)."""

    subject_id: str
    seed: int
    index: int
    nominal_shape: tuple[int, int, int]
    region: str
    orientation: str
    phase: str
    age: int
    gender: str
    institute: str
    split: str


def plan_dataset(n_subjects: int, seed: int, shape: tuple[int, int, int]) -> list[SubjectSpec]:
    """Subject specs. Subject i is the same whatever n_subjects is (only splits depend on n).

    Regions, orientations and phases cycle from seeded offsets, so even two or three subjects
    differ in coverage, orientation and contrast. Splits ~70/15/15 by subject: at least one val
    and one test subject from 3 subjects on; 2 subjects -> train + val; 1 -> train.
    """
    rng = np.random.default_rng([seed, 7919])
    regions = list(REGIONS)
    r_off, o_off, p_off = (int(v) for v in rng.integers(0, [len(regions), 3, 3]))
    n_test = max(1, round(0.15 * n_subjects)) if n_subjects >= 3 else 0
    n_val = max(1, round(0.15 * n_subjects)) if n_subjects >= 2 else 0
    splits = ["train"] * (n_subjects - n_test - n_val) + ["val"] * n_val + ["test"] * n_test
    splits = [splits[k] for k in np.random.default_rng([seed, 7920]).permutation(n_subjects)]
    specs = []
    for i in range(n_subjects):
        meta = np.random.default_rng([seed, i, 0])
        specs.append(
            SubjectSpec(
                subject_id=f"s{i:04d}",
                seed=seed,
                index=i,
                nominal_shape=(int(shape[0]), int(shape[1]), int(shape[2])),
                region=regions[(i + r_off) % len(regions)],
                orientation=ORIENTATIONS[(i + o_off) % len(ORIENTATIONS)],
                phase=PHASES[(i + p_off) % len(PHASES)],
                age=int(meta.integers(18, 90)),
                gender=str(meta.choice(["m", "f"])),
                institute=f"phantom-{'ABC'[int(meta.integers(0, 3))]}",
                split=splits[i],
            )
        )
    return specs


def render_subject(spec: SubjectSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ct int16 HU, labels uint8 0..117, affine (4, 4)) on the subject's canonical RAS grid."""
    rng = np.random.default_rng([spec.seed, spec.index, 1])
    nom = spec.nominal_shape
    f_xy = rng.uniform(0.875, 1.125)
    nx, ny = max(16, round(nom[0] * f_xy)), max(16, round(nom[1] * f_xy))
    nz = max(8, round(nom[2] * rng.uniform(0.8, 1.25)))
    scale = rng.uniform(0.9, 1.1) * rng.uniform(0.95, 1.05, 3)
    fat_mm, wall_mm = rng.uniform(5, 22), rng.uniform(5, 9)
    sp_z = float(rng.choice(SLICE_SPACINGS_MM))
    cover = nz * sp_z / scale[2]  # body-frame mm
    lo, hi = REGIONS[spec.region]
    zmin, zmax = Z_RANGE_MM
    if cover >= zmax - zmin:
        z_mid = 0.5 * (zmin + zmax)
    else:
        z_mid = float(np.clip(rng.uniform(lo, hi), zmin + cover / 2, zmax - cover / 2))
    a, b = body_half_axes(np.linspace(z_mid - cover / 2, z_mid + cover / 2, 64))
    half_w = (float(a.max()) + fat_mm) * scale[0]  # world mm, the field of view must hold it
    half_d = (float(b.max()) + fat_mm) * scale[1]
    sp_xy = round(2 * max(half_w, half_d * nx / ny) * rng.uniform(1.06, 1.2) / nx, 4)
    origin = np.array(
        [-(nx - 1) / 2 * sp_xy, -(ny - 1) / 2 * sp_xy, round(rng.uniform(-900, -300))]
    )
    room = np.maximum([nx * sp_xy / 2 - half_w, ny * sp_xy / 2 - half_d], 0) * 0.5
    centre = np.array(
        [
            rng.uniform(-room[0], room[0]),
            rng.uniform(-room[1], room[1]),
            origin[2] + (nz - 1) * sp_z / 2 - z_mid * scale[2],
        ]
    )
    spacing = np.array([sp_xy, sp_xy, sp_z])
    angle = np.deg2rad(rng.uniform(-8, 8))
    axes = [origin[i] + np.arange(n) * spacing[i] for i, n in enumerate((nx, ny, nz))]
    amp = rng.uniform(2.0, 5.0)
    disp = displacement(rng, axes, amp, terms=2)
    c, s = np.cos(angle), np.sin(angle)
    dxw, dyw = (axes[0] - centre[0])[:, None], (axes[1] - centre[1])[None, :]
    shape = (nx, ny, nz)
    grid = BodyGrid(
        x=(((c * dxw + s * dyw) / scale[0])[:, :, None] + disp[0]).astype(np.float32),
        y=(((-s * dxw + c * dyw) / scale[1])[:, :, None] + disp[1]).astype(np.float32),
        z=(((axes[2] - centre[2]) / scale[2])[None, None, :] + disp[2]).astype(np.float32),
        z_lin=(axes[2] - centre[2]) / scale[2],
        texture=smooth_noise(rng, shape, 14.0 / spacing),
        origin_mm=origin,
        spacing_mm=spacing,
        centre_mm=centre,
        scale=scale,
        angle_rad=float(angle),
        max_disp_mm=float(amp * np.sqrt(2)),
    )
    fine = smooth_noise(rng, shape, np.maximum(2.5 / spacing, 2.0))
    body = Body(
        painter=Painter(grid, fine),
        hu=tissue_table(rng, spec.phase, spec.age, oral_contrast=rng.random() < 0.25),
        rng=rng,
        fat_mm=fat_mm,
        wall_mm=wall_mm,
        dome_shift_mm=rng.uniform(-10, 10),
        male=spec.gender == "m",
    )
    for paint in (
        paint_body_wall,
        paint_bowel,
        paint_thorax,
        paint_upper_abdomen,
        paint_pelvis,
        paint_vessels,
        paint_muscles,
        paint_spine,
        paint_pelvic_bones,
        paint_ribs,
    ):
        paint(body)
    paint_table(body, rng)
    ct = _scan(body.painter.hu, rng)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(spacing)
    affine[:3, 3] = origin
    return ct, body.painter.labels, affine


def _scan(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partial-volume blur (Gaussian, sigma 0.7 voxel), quantum noise (10-20 HU), int16 HU."""
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(hu, sigma=0.7, mode="nearest", truncate=3.0)
    out += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(rng.uniform(10, 20))
    np.rint(out, out=out)
    return np.clip(out, -1024, 3071).astype(np.int16)


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


def _earlier_phantom(root: Path) -> list[str] | None:
    """Subject ids of the phantom at ``root`` (None if root is not a phantom folder)."""
    try:
        marker = json.loads((root / MARKER).read_text(encoding="utf-8"))
        return [str(s) for s in marker["subjects"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_marker(root: Path, specs: list[SubjectSpec], subjects: list[str], done: bool) -> None:
    info = {
        "generator": "ctseg_core.data.phantom",
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
) -> list[str]:
    """Write n_subjects phantom CTs in TotalSegmentator layout under root; return subject ids.

    ``shape`` is the nominal grid (x, y, z voxels); subjects vary around it (in-plane x0.875 to
    x1.125, slices x0.8 to x1.25). ``root`` must be absent, empty, or an earlier phantom (it holds
    the marker file .ctseg-phantom.json), which is then regenerated: its subject folders and
    meta.csv are replaced, other files are left alone. Each subject appears whole or not at all;
    meta.csv is written last, so its presence means the dataset is complete. ``workers``
    processes render subjects in parallel (default: one per core, at most one per subject);
    ``progress(done, total)`` is called as subjects finish. Raises ConfigError for bad arguments
    and DataError for a root that holds something else.
    """
    if n_subjects < 1 or len(shape) != 3 or min(shape) < 8:
        raise ConfigError(
            f"phantom needs n_subjects >= 1 and a 3-value shape of at least 8 voxels each, got "
            f"n_subjects={n_subjects}, shape={tuple(shape)}; e.g. --subjects 12 --size 160 160 64"
        )
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{root} is a file; give a new or empty folder for the phantom dataset")
    old: list[str] = []
    if root.is_dir() and any(root.iterdir()):
        earlier = _earlier_phantom(root)
        if earlier is None:
            raise DataError(
                f"{root} is not empty and is not a ctseg phantom (no {MARKER}); "
                "give a new or empty folder so nothing of yours is overwritten"
            )
        old = earlier
    root.mkdir(parents=True, exist_ok=True)
    specs = plan_dataset(n_subjects, seed, tuple(shape))
    ids = [s.subject_id for s in specs]
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
