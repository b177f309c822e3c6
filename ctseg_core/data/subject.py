"""One subject: its CT and all structure masks combined into a single uint8 label volume.

Mask files: ``<id>/segmentations/<structure>.nii.gz`` named as in ``ctseg_core.labels``.
A missing file means "not annotated" (excluded from metrics), an empty one "absent".
Where masks overlap, the structure with the higher label value wins (TotalSegmentator's own
multilabel export does the same by writing labels in order); the overlapping voxel count is
reported so that a user sees it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError, GridMismatch
from ..fileio import is_dir
from ..labels import LABEL_OF, NAME_OF, NUM_LABELS, NUM_STRUCTURES
from .dataset_root import find_ct
from .masks import load_mask
from .volume import Volume, load_ct

log = logging.getLogger(__name__)

#: the words of a subject's problem line for voxels that two or more masks claim
OVERLAP_SAID = "voxels belong to more than one mask"

MASK_SUFFIXES = (".nii.gz", ".nii")
#: other image formats a mask may have been exported as (said as ignored, not read)
IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".mgz", ".mgh", ".img", ".hdr",
                  ".npy", ".npz", ".tif", ".tiff", ".gz", ".zip")  # fmt: skip


def mask_files(subject_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Structure name -> mask path for known names, and the names of the other image files (an
    unknown structure, another suffix or case: ``colon.NII.GZ``, ``liver.nrrd``; hidden files,
    a README or a subfolder left out); DataError for two files of one structure
    (``liver.nii.gz`` and ``liver.nii``)."""
    seg_dir = subject_dir / "segmentations"
    known: dict[str, Path] = {}
    unknown: list[str] = []
    if not is_dir(seg_dir):
        return known, unknown
    for path in sorted(seg_dir.iterdir(), key=lambda p: p.name):  # names: Path order is slow
        if path.name.startswith("."):  # .DS_Store, ._liver.nii.gz
            continue
        name = next((path.name[: -len(s)] for s in MASK_SUFFIXES if path.name.endswith(s)), None)
        if name is None:  # colon.NII.GZ, liver.nrrd, spleen.nii.gz.bak: said, not a mask; a
            # README.txt is no image a user could take for one
            lower = path.name.lower()
            if is_dir(path):  # segmentations/segmentations/: masks one folder too deep
                if next(path.rglob("*.nii*"), None) is not None:
                    unknown.append(f"{path.name}/ (holding masks: put them in segmentations/)")
            elif ".nii" in lower or lower.endswith(IMAGE_SUFFIXES):
                unknown.append(path.name)
            continue
        if name in known:  # liver.nii.gz beside a corrected liver.nii: which one is the mask?
            raise DataError(
                f"{subject_dir.name}: {seg_dir} holds both {known[name].name} and {path.name}; "
                "keep one file per structure"
            )
        if name in LABEL_OF:
            known[name] = path
        else:
            unknown.append(path.name)
    return known, unknown


@dataclass
class SubjectData:
    """A subject loaded in canonical orientation.

    labels: (X, Y, Z) uint8, 0 = background, k = structure k (on the CT's grid).
    annotated: (118,) bool, index k true when structure k has a mask file (index 0 always true).
    mask_voxels: (118,) int64 voxel count of each mask file as read (before overlap resolution).
    unused_masks: [one line] saying the masks left out, on another grid than the CT (their
    structures then count as not annotated: the subject's other masks are sound), or [].
    """

    subject_id: str
    ct: Volume
    labels: np.ndarray
    annotated: np.ndarray
    mask_voxels: np.ndarray
    overlap_voxels: int = 0
    problems: list[str] = field(default_factory=list)
    unused_masks: list[str] = field(default_factory=list)

    @property
    def not_annotated(self) -> list[str]:
        return [NAME_OF[k] for k in range(1, NUM_STRUCTURES + 1) if not self.annotated[k]]

    @property
    def absent(self) -> list[str]:
        """Annotated structures whose mask is empty."""
        return [
            NAME_OF[k]
            for k in range(1, NUM_STRUCTURES + 1)
            if self.annotated[k] and self.mask_voxels[k] == 0
        ]

    @property
    def present(self) -> list[str]:
        return [NAME_OF[k] for k in range(1, NUM_STRUCTURES + 1) if self.mask_voxels[k] > 0]


def load_subject(subject_dir: str | Path, *, allow_nan_ct: bool = False) -> SubjectData:
    """Load a subject folder: CT (int16 HU) and the combined uint8 label volume, canonical.

    Raises DataError (one line naming the file) for an unreadable CT or mask, or a subject
    without CT. A mask on another grid is left out, its structure not annotated, and said in
    ``unused_masks`` and ``problems`` (warned); unknown mask file names, masks of values other
    than 0 and 1 and a CT read without orientation are reported in ``problems``.
    """
    subject_dir = Path(subject_dir)
    ct_path = find_ct(subject_dir, strict=True)
    if ct_path is None:
        raise DataError(f"{subject_dir.name}: no ct.nii.gz in {subject_dir}; add the CT file")
    ct = load_ct(ct_path, allow_nan=allow_nan_ct)
    labels = np.zeros(ct.array.shape, dtype=np.uint8)
    annotated = np.zeros(NUM_LABELS, dtype=bool)
    annotated[0] = True
    mask_voxels = np.zeros(NUM_LABELS, dtype=np.int64)
    problems: list[str] = list(ct.notes)  # what was assumed reading the CT (no orientation)
    files, unknown = mask_files(subject_dir)
    if not is_dir(subject_dir / "segmentations"):
        problems.append(f"{subject_dir.name}: no segmentations/ folder (nothing annotated)")
    if unknown:
        shown = ", ".join(unknown[:4]) + (" ..." if len(unknown) > 4 else "")
        problems.append(
            f"{subject_dir.name}/segmentations: {len(unknown)} "
            f"file{'s' if len(unknown) > 1 else ''} ignored, not named as a "
            f"known structure's mask ({shown}); name masks <structure>.nii.gz with "
            "TotalSegmentator v2 names"
        )
    overlap = 0
    pairs: dict[tuple[str, str], int] = {}  # (lower, higher) structure -> voxels of both
    unused: list[tuple[str, str]] = []  # (structure, why) of each mask on another grid
    for name in sorted(files, key=LABEL_OF.__getitem__):
        value = LABEL_OF[name]
        try:
            mask = load_mask(files[name], ct, problems)  # notes masks of values other than 0/1
        except GridMismatch as exc:  # one mask: the subject's others are sound
            unused.append((name, str(exc)))
            continue
        annotated[value] = True
        count = int(np.count_nonzero(mask))
        mask_voxels[value] = count
        if count:
            under = labels[mask]
            for lower, n in zip(*np.unique(under[under > 0], return_counts=True), strict=True):
                pairs[(NAME_OF[int(lower)], name)] = int(n)
            overlap += int(np.count_nonzero(under))
            labels[mask] = value
    if overlap:
        # a structure wholly under another (it then has no voxel in the labels) is named too
        shown = ", ".join(
            f"{a} / {b} {n}" for (a, b), n in sorted(pairs.items(), key=lambda kv: -kv[1])[:4]
        ) + (" ..." if len(pairs) > 4 else "")
        problems.append(
            f"{subject_dir.name}: {overlap} {OVERLAP_SAID} ({shown}); "
            "the higher label value was kept"
        )
    said = _unused_line(subject_dir.name, unused)
    if said:
        log.warning("%s", said[0])
    for problem in problems:
        log.info(problem)
    return SubjectData(subject_dir.name, ct, labels, annotated, mask_voxels, overlap,
                       problems + said, said)  # fmt: skip


def _unused_line(subject_id: str, unused: list[tuple[str, str]]) -> list[str]:
    """[one line] for the masks left out of a subject ((structure, why) each), or []: one
    line however many, as masks exported at another resolution are all on another grid."""
    if not unused:
        return []
    (name, why), count = unused[0], len(unused)
    if count == 1:
        return [f"{subject_id}: {why} ({name} counts as not annotated until then)"]
    names = ", ".join(n for n, _ in unused[:3]) + (" ..." if count > 3 else "")
    return [
        f"{subject_id}: {count} masks are on another grid than the CT ({names}), counted as not "
        f"annotated until they are resampled onto it; the first: {why}"
    ]
