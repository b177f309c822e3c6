"""Prediction files of a folder: finding a subject's, and reading it onto its reference's grid.

A prediction written by any tool may lie on another grid than its reference (another
orientation or field of view): it is resampled onto the reference's grid by affine (nearest
neighbour), so it is scored on the same voxels.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..data.volume import AFFINE_TOLERANCE, from_canonical, load_label_volume, to_canonical
from ..errors import DataError
from ..fileio import dangling_link, is_file
from ..labels import NUM_STRUCTURES

log = logging.getLogger(__name__)


def _has_usable_affine(path: Path) -> bool:
    """True when the NIfTI header carries a coded sform/qform with a finite, invertible matrix."""
    header = nib.load(str(path)).header
    coded = [header.get_sform(coded=True), header.get_qform(coded=True)]
    for affine, code in coded:
        usable = code and affine is not None and np.all(np.isfinite(affine))
        if usable and abs(np.linalg.det(affine[:3, :3])) > 1e-12:
            return True
    return False


#: a share of the reference's voxels outside a prediction's field of view said in the notes
OUTSIDE_NOTED = 0.01


def prediction_on_reference_grid(
    path: str | Path,
    shape_xyz: Sequence[int],
    affine: np.ndarray,
    original_shape: Sequence[int],
    original_affine: np.ndarray,
    notes: list[str] | None = None,
    reference: str = "reference",
    num_labels: int = NUM_STRUCTURES,
) -> np.ndarray:
    """Load a multilabel prediction as a canonical (X, Y, Z) uint8 array on the reference's grid.

    ``shape_xyz``/``affine``: the reference's canonical grid; ``original_*``: its grid on disk.
    Same grid (after canonical reorientation): returned as is. Other grid: resampled by the
    voxel-to-voxel affine, nearest neighbour (each voxel's half-voxel neighbourhood, the edge
    voxels' too), outside the prediction's field of view = 0.
    A file without a usable affine (sform and qform codes 0) is taken to be on the reference's
    original grid when its shape matches, else DataError. Label values above ``num_labels`` or an
    unreadable/empty file raise DataError. ``notes`` gains a line (logged instead when
    ``notes`` is None) where the file had no affine, or where its field of view leaves over ``OUTSIDE_NOTED`` of the reference's voxels
    out (they are scored as background). ``reference``: what messages call the grid's image
    (``ctseg stats``: the CT). ``num_labels``: the largest value allowed (a file in values of
    its own whose names came with it: ``prediction_labels``).
    """
    path = Path(path)
    pred = load_label_volume(path, num_labels=num_labels)
    if pred.array.size == 0:
        raise DataError(f"{path.name} holds no voxels; write the prediction again")
    shape_xyz = tuple(int(s) for s in shape_xyz)
    if not _has_usable_affine(path):
        if tuple(pred.original_shape) == tuple(original_shape):
            note = f"{path.name} has no affine; assumed to lie on the {reference}'s grid"
            if notes is not None:  # the caller says it (evaluate logs its notes, stats prints)
                notes.append(note)
            else:
                log.warning("%s", note)
            raw = from_canonical(pred.array, pred.original_affine)
            return to_canonical(raw, np.asarray(original_affine))[0]
        raise DataError(
            f"{path.name} has shape {tuple(pred.original_shape)} ({reference} "
            f"{tuple(original_shape)}) and no usable affine (sform/qform codes 0); "
            "save it with the CT's affine or on the CT's grid"
        )
    if pred.array.shape == shape_xyz and np.allclose(pred.affine, affine, atol=AFFINE_TOLERANCE):
        return pred.array
    # Reference voxel -> world -> prediction voxel.
    voxel_to_voxel = np.linalg.inv(pred.affine) @ np.asarray(affine, dtype=np.float64)
    # "grid-constant": a point within half a voxel of the prediction's first or last voxel is
    # that voxel's; "constant" took anything past their centres (float round-off included) as
    # outside, dropping the edge slab. Labels + 1 (at most 118 in uint8), so that 0 marks the
    # reference's voxels outside the prediction's field of view in the same pass
    resampled = ndimage.affine_transform(
        pred.array + np.uint8(1), voxel_to_voxel, output_shape=shape_xyz, order=0,
        mode="grid-constant", cval=0,
    )  # fmt: skip
    seen = resampled > 0
    np.subtract(resampled, 1, out=resampled, where=seen)
    if pred.array.any() and not resampled.any():
        raise DataError(
            f"{path.name} does not overlap its {reference} in world coordinates; check that it "
            "belongs to this subject and that its affine is right"
        )
    log.info("%s resampled onto the reference grid %s", path.name, shape_xyz)
    if notes is not None:  # the reference's voxels the prediction's field of view leaves out
        outside = 1.0 - float(np.count_nonzero(seen)) / seen.size
        if outside > OUTSIDE_NOTED:
            notes.append(
                f"{path.name} covers only part of its reference: {100 * outside:.1f} % of the "
                "reference's voxels lie outside its field of view and are scored as background"
            )
    return resampled


def find_prediction(folder: Path, subject_id: str) -> Path | None:
    """``folder/<id>.nii.gz`` or ``folder/<id>.nii``, or None; DataError when both are there
    (which one is the prediction, and which a stale copy, cannot be told)."""
    found = [folder / n for n in (f"{subject_id}.nii.gz", f"{subject_id}.nii")]
    for path in found:
        if why := dangling_link(path):
            raise DataError(f"{path} is {why}; restore what it points to or remove the link")
    found = [p for p in found if is_file(p)]
    if len(found) > 1:
        raise DataError(
            f"{folder} holds both {found[0].name} and {found[1].name} for {subject_id}; remove "
            "the one that is not its prediction"
        )
    return found[0] if found else None


def has_prediction(folder: Path, subject_id: str) -> bool:
    """Whether ``folder`` holds ``<id>.nii.gz`` or ``<id>.nii`` (both: ``find_prediction``
    refuses them when the subject is scored)."""
    return any(is_file(folder / n) for n in (f"{subject_id}.nii.gz", f"{subject_id}.nii"))
