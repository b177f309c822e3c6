"""What a NIfTI's header leaves to assumption (no orientation, a zero voxel size, sheared or
oblique axes, a qform other than its sform, a pixdim other than the sform's voxel size), said
once per file: ``geometry_notes`` and ``warn_once``."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np

from .image_limits import raw_header
from .image_limits import short_path as _short

log = logging.getLogger(__name__)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (mm) along each array axis from a (4, 4) affine."""
    return tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))


#: voxel axes turned more than this from the patient's axes are said (read unresampled)
OBLIQUE_DEGREES = 5.0

#: mm per unit of a NIfTI's xyzt_units (nibabel ignores them, ITK scales pixdim by them)
_UNIT_MM = {"meter": 1000.0, "mm": 1.0, "micron": 0.001, "unknown": 1.0}


def assumed_voxel_axes(path: str | Path) -> list[str]:
    """The axes of a NIfTI file ("x", "y", "z": its pixdim 1-3) along which it gives no voxel
    size (pixdim 0 and no sform), which nibabel reads as 1 mm; [] for none, for a DICOM
    folder and for a header that cannot be parsed."""
    try:
        header = raw_header(Path(path))
    except Exception:  # a folder, or a file its reader says more about
        return []
    return _zero_axes(header)


def _zero_axes(header) -> list[str]:
    """``assumed_voxel_axes`` of a raw NIfTI header."""
    if int(header["sform_code"]) != 0:  # an sform states the voxel size itself
        return []
    zooms = np.asarray(header["pixdim"][1:4], dtype=float)
    return [axis for axis, z in zip("xyz", zooms, strict=True) if not z > 0]


def pixdim_mm(header) -> np.ndarray:
    """(3,) the voxel size a NIfTI header's pixdim gives, in mm, as ITK reads it: its
    ``xyzt_units`` applied, a negative size taken whole and a zero one as 1."""
    unit = header.get_xyzt_units()[0]
    zooms = np.abs(np.asarray(header["pixdim"][1:4], dtype=float))
    return np.where(zooms == 0, 1.0, zooms) * _UNIT_MM.get(unit, 1.0)


def pixdim_disagrees(header, affine: np.ndarray) -> bool:
    """An sform alone (qform_code 0) whose voxel size is not pixdim's: ctseg and nibabel's
    affine read the sform; ITK (3D Slicer, ITK-SNAP, nnU-Net's SimpleITK reader) drops such an
    sform and takes pixdim, and nnU-Net's NibabelIO takes pixdim as the spacing."""
    zooms = pixdim_mm(header)
    return bool(
        int(header["qform_code"]) == 0 < int(header["sform_code"])
        and np.isfinite(zooms).all()
        and (zooms > 0).all()
        and not np.allclose(zooms, spacing_of(affine), rtol=1e-4, atol=1e-4)
    )


#: (file, mtime, size, what) already warned about in this process: one warning per file
_WARNED: set[tuple] = set()


def warn_once(path: Path, what: str, message: str) -> None:
    """Log ``message`` once per file (its path, size and mtime) and kind ``what``."""
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, what)
    except OSError:
        key = (str(path), 0, 0, what)
    if key not in _WARNED:
        if len(_WARNED) > 100_000:  # a long-running server: keep the set bounded
            _WARNED.clear()
        _WARNED.add(key)
        log.warning("%s", message)


def oblique_note(path: Path, affine: np.ndarray) -> str | None:
    """The note for voxel axes turned over ``OBLIQUE_DEGREES`` from the patient's (read on the
    nearest axes, not resampled); None when they are not."""
    axes = np.asarray(affine, dtype=np.float64)[:3, :3]
    unit = axes / np.linalg.norm(axes, axis=0)
    turned = float(np.degrees(np.arccos(min(1.0, np.abs(unit).max(axis=0).min()))))
    if turned <= OBLIQUE_DEGREES:
        return None
    return (
        f"{_short(path)} is oblique: its voxel axes are turned {turned:.1f} degrees from the "
        "patient's; ctseg reads it on the nearest of those axes without resampling (as nnU-Net "
        "and TotalSegmentator do), so a model sees the anatomy turned by as much; resample it "
        "onto axis-aligned voxels if that is more than its training rotated"
    )


def geometry_notes(path: Path, img, qform: np.ndarray | None = None, header=None) -> list[str]:
    """What was assumed for a NIfTI without orientation codes or with a zero voxel size (nibabel
    reads both on a default grid without a word), with sheared or oblique axes (turned over
    ``OBLIQUE_DEGREES``), with a ``qform`` other than its sform, or with an sform alone whose
    voxel size is not pixdim's (ITK reads pixdim then), warned once per file; [] when nothing
    was. A DICOM series (a folder): the oblique note only (its reader checks the rest).
    ``header``: the file's raw header (``raw_header``) where the caller has read it already."""
    if path.is_dir():  # a DICOM series: the reader checks its spacing and tilt
        oblique = oblique_note(path, img.affine)
        if oblique:
            warn_once(path, "oblique", oblique)
        return [oblique] if oblique else []
    if header is None:
        try:
            header = raw_header(path)
        except Exception:  # the file was read once already; a header we cannot parse says nothing
            return []
    notes = {}
    zooms = np.asarray(header["pixdim"][1:4], dtype=float)
    if zero := _zero_axes(header):
        notes["voxel size"] = (
            f"{_short(path)} gives voxel size {' x '.join(f'{z:g}' for z in zooms)} mm: 1 mm was "
            f"assumed along {', '.join(zero)}; write the real voxel size (pixdim) into the file"
        )
    if pixdim_disagrees(header, img.affine):  # ITK finds "unexpected scales in sform"
        sizes = " x ".join(f"{z:.4g}" for z in pixdim_mm(header))
        notes["pixdim"] = (
            f"{_short(path)}'s pixdim says {sizes} mm voxels, its sform "
            f"{' x '.join(f'{z:.4g}' for z in spacing_of(img.affine))} mm: ctseg reads the "
            "sform, as nibabel's affine does (and ctseg's runs of nnU-Net models); ITK-based "
            "tools (3D Slicer, ITK-SNAP) and nnU-Net's own readers take pixdim; write pixdim to "
            "match the sform"
        )
    if int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0:
        sizes = " x ".join(f"{s:g}" for s in spacing_of(img.affine))
        notes["orientation"] = (
            f"{_short(path)} has no orientation (qform_code = sform_code = 0): read as "
            f"{''.join(nib.aff2axcodes(img.affine))} with {sizes} mm voxels centred on the "
            "origin (the Analyze default), so left/right and position may be wrong; write the "
            "file with its qform/sform (e.g. convert the DICOM again with dcm2niix)"
        )
    axes = np.asarray(img.affine, dtype=np.float64)[:3, :3]
    unit = axes / np.linalg.norm(axes, axis=0)
    cosines = np.abs(unit.T @ unit - np.eye(3))
    if cosines.max() > 1e-3:  # sheared: voxel sizes and distances assume right angles
        degrees = float(np.degrees(np.arcsin(min(1.0, cosines.max()))))
        notes["shear"] = (
            f"{_short(path)}'s voxel axes are not at right angles (sheared by {degrees:.1f} "
            "degrees, as an uncorrected gantry tilt leaves them): volumes and distances in mm "
            "take them as perpendicular; give the tilt-corrected CT (dcm2niix writes one)"
        )
    elif oblique := oblique_note(path, img.affine):
        notes["oblique"] = oblique
    if qform is not None:
        moved = float(np.abs(qform[:3, 3] - img.affine[:3, 3]).max())
        notes["qform"] = (
            f"{_short(path)}'s qform and sform disagree ({moved:.1f} mm apart at the origin, or "
            "turned): ctseg reads the sform, as nibabel does; ITK-based tools (3D Slicer, "
            "ITK-SNAP) may take the qform. Files written on its grid keep both"
        )
    for what, note in notes.items():
        warn_once(path, what, note)
    return list(notes.values())
