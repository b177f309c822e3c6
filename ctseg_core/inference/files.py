"""Prediction from a file to files: a CT (NIfTI or DICOM folder) in, labels on its own grid out.

Writes, only after the whole prediction succeeded and as one set (``outputs``: each under a
temporary name first, all renamed into place at the end):

- ``OUT.nii.gz``: multilabel uint8 (0..117) on the CT's original grid and affine;
- ``OUT.ctbl`` and ``OUT_itksnap_labels.txt``: names and colours for 3D Slicer and ITK-SNAP;
- with ``split_masks``: ``OUT/segmentations/<structure>.nii.gz``, one 0/1 mask per structure the
  model predicts (empty files for absent ones: the dataset layout, where a missing file would
  mean "not annotated");
- with ``statistics``: ``OUT_statistics.csv``, volume (ml) and mean/std HU per structure found
  (TotalSegmentator's ``--statistics``).

A CT outside what a checkpoint was trained on (``domain``: the phantom's model on a real CT, a
voxel spacing or intensities far from the training CTs') is labelled all the same, with a
warning in the log and in the summary's ``warnings``.

Existing outputs are refused unless ``overwrite``; then they are replaced whole, never halfway:
a failure while writing leaves the earlier set as it was. With ``overwrite`` the earlier
prediction's own outputs that this one does not write (its masks, statistics, label files) are
removed, only where their content is what ctseg writes; the summary's ``warnings`` say what was
removed, and what was left (a file of another content under such a name).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..data.domain import is_phantom_ct
from ..data.volume import hu_problem, load_ct, save_on_original_grid, spacing_of
from ..errors import ConfigError
from ..fileio import (
    cannot_read,
    exists,
    is_dir,
    is_file,
    not_writable,
    output_unseen,
    refuse_replacing_inputs,
)
from ..labels import NUM_LABELS, names_of, value_of
from .domain import domain_warnings
from .label_files import label_file_paths, write_label_files
from .outputs import StagedOutputs, companion_paths, earlier_outputs, stem_of

log = logging.getLogger(__name__)


class _Collect(logging.Handler):
    """Keeps the warnings logged while a CT is read (e.g. which DICOM series was chosen)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def load_ct_noting(ct_path: str | Path, **kwargs) -> tuple:
    """:func:`load_ct` with the warnings logged while reading (which DICOM series was chosen,
    files left out, a resampled series, a NIfTI without orientation): (Volume, [message, ...])."""
    collect = _Collect()
    data_log = logging.getLogger("ctseg_core.data")
    data_log.addHandler(collect)
    try:
        ct = load_ct(ct_path, **kwargs)
    finally:
        data_log.removeHandler(collect)
    # notes already warned about earlier in this process (once per file) are not logged again
    return ct, [*collect.messages, *(n for n in ct.notes if n not in collect.messages)]


def output_paths(
    out_path: str | Path, split_masks: bool = False, statistics: bool = False
) -> list[Path]:
    """Every path :func:`predict_file` writes for ``out_path`` with a model of TotalSegmentator
    names (the masks folder last)."""
    out_path = Path(out_path)
    companions = companion_paths(out_path)
    paths = [out_path, *label_file_paths(out_path)]
    if statistics:
        paths.append(companions["statistics"])
    if split_masks:
        paths.append(companions["masks"])
    return paths


def _check_outputs(out_path: Path, written: list[Path], inputs: list, overwrite: bool) -> None:
    """Refuse, before any work, outputs that are (or hold) an input; existing ones without
    ``overwrite``, and so an earlier prediction's outputs this one would leave beside it; a
    folder where a file goes; a masks folder holding anything else."""
    refuse_replacing_inputs(written, inputs)
    if why := not_writable(out_path.parent):  # found before the model runs, not after
        raise ConfigError(f"--out {out_path}: {why}; choose another --out")
    masks_dir = companion_paths(out_path)["masks"]
    existing = []
    for path in written:
        try:
            if path != masks_dir and is_dir(path):
                raise ConfigError(f"{path} is a folder; a prediction writes a file there")
            if exists(path):
                existing.append(path)
        except OSError as exc:  # e.g. a link into a folder this user may not enter
            raise ConfigError(output_unseen("--out", path, exc)) from exc
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} exists; pass --overwrite to replace it, or choose another --out"
        )
    earlier, _ = earlier_outputs(out_path, written)
    if earlier and not overwrite:
        raise ConfigError(
            f"{earlier[0]} exists, an earlier prediction's, and would not describe this one; "
            "pass --overwrite to replace that prediction (its outputs this one does not write "
            "are removed), or choose another --out"
        )
    if masks_dir in existing:
        _refuse_foreign_masks_dir(masks_dir)


def _remove_earlier(staged: StagedOutputs, out_path: Path, written: list[Path], inputs: list,
                    overwrite: bool) -> list[str]:  # fmt: skip
    """Stage the removal of the earlier prediction's outputs this one does not write (with
    ``overwrite``; ``outputs.earlier_outputs``); the lines saying what was removed and left."""
    ours, notes = earlier_outputs(out_path, written)
    removed = []
    for path in ours:
        try:
            refuse_replacing_inputs([path], inputs)
        except ConfigError:
            notes.append(f"{path} is left as it is: it holds an input of this prediction")
            continue
        if not overwrite:  # appeared while predicting (checked before): not ours to remove
            notes.append(f"{path} appeared while predicting and is left as it is")
            continue
        staged.remove(path)
        removed.append(path.name + ("/" if path.is_dir() else ""))
    if removed:
        notes.insert(0, f"--overwrite: removed {', '.join(removed)} beside {out_path.name}, "
                        "the earlier prediction's, which this one does not write")  # fmt: skip
    return notes


def refuse_assumed_voxel_size(ct_path: Path, alternative: str) -> None:
    """ConfigError for a CT file without a voxel size along an axis: volumes in ml and sizes in
    mm from the 1 mm nibabel assumes would be made up (the labels themselves are not)."""
    from ..data.geometry_notes import assumed_voxel_axes

    if axes := assumed_voxel_axes(ct_path):
        raise ConfigError(
            f"{ct_path} gives no voxel size along {', '.join(axes)} (pixdim 0): volumes in ml "
            f"would be made up; write the real voxel size into the file, or {alternative}"
        )


def _suffix(out_path: Path) -> str:
    return ".nii.gz" if out_path.name.endswith(".nii.gz") else ".nii"


def _refuse_foreign_masks_dir(folder: Path) -> None:
    """--split-masks replaces its folder whole: refuse one holding anything it did not write
    (only ``segmentations/*.nii.gz``), e.g. a subject folder of the dataset with its CT."""
    try:
        if not is_dir(folder):
            raise ConfigError(f"{folder} is a file; --split-masks writes a folder there")
        for entry in folder.iterdir():
            inside = list(entry.iterdir()) if is_dir(entry) else []
            masks_only = all(is_file(e) and e.name.endswith(".nii.gz") for e in inside)
            if entry.name != "segmentations" or not is_dir(entry) or not masks_only:
                raise ConfigError(
                    f"{folder} holds {entry.name}, which a --split-masks output does not; it "
                    "would be replaced whole: choose another --out"
                )
    except OSError as exc:  # what it holds cannot be known: not replaced unseen
        shown = f"--split-masks folder {folder}"
        raise ConfigError(f"{cannot_read(shown, exc)}, or choose another --out") from exc


def _write_masks(labels: np.ndarray, ct, structures: Sequence[str], folder: Path) -> None:
    """One 0/1 uint8 mask per structure into ``folder/segmentations`` (a staged folder)."""
    seg = folder / "segmentations"
    seg.mkdir()
    for name in structures:
        mask = (labels == value_of(name)).astype(np.uint8)
        save_on_original_grid(mask, ct, seg / f"{name}.nii.gz")


def predict_file(
    ct_path: str | Path,
    checkpoints: Sequence[str | Path],
    out_path: str | Path,
    split_masks: bool = False,
    batch_slices: int = 8,
    tta: bool = False,
    device: str = "auto",
    progress: Callable[[int, int, str], None] | None = None,
    overwrite: bool = False,
    memory_limit_bytes: int | None = None,
    statistics: bool = False,
    resample_uneven: bool = False,
    overlap: float = 0.5,
    model: str | Path | None = None,
    body_crop: bool = True,
) -> dict:
    """Predict a CT file or DICOM series folder and write the results beside ``out_path``.

    Returns a JSON-ready summary: paths written, grid (shape, spacing and orientation of the
    file's own axes), the structures found with voxel counts and ml, warnings met while
    reading (e.g. a DICOM folder with several series: the largest is read), ``body_box`` (the
    canonical CT's voxels a 3D model labelled, or None), seconds. Raises ConfigError for an
    ``out_path`` that is not .nii/.nii.gz or exists without ``overwrite``; CtsegError for a CT
    too large for memory (before reading it when its header tells the size). A DICOM series
    with missing slices or uneven spacing is refused unless ``resample_uneven`` (then the
    warnings say so).
    ``overlap``: the share of a patch neighbouring windows share (volumetric models);
    ``body_crop``: they label only the box around the body (``Predictor``).
    ``model``: an nnU-Net model folder (or TotalSegmentator's results folder) instead of
    ``checkpoints`` (``nnunet.model``; ``tta`` is then its mirroring). A model with labels
    outside TotalSegmentator's writes its own values and ``OUT_labels.json`` (value -> name)
    instead of the Slicer / ITK-SNAP files; ``split_masks`` and ``statistics`` need v2 names.
    """
    from .predictor import Predictor, settings_for_3d

    ct_path, out_path = Path(ct_path), Path(out_path)
    if not out_path.name.endswith((".nii.gz", ".nii")):
        raise ConfigError(f"--out {out_path} must end with .nii.gz or .nii")
    written = output_paths(out_path, split_masks, statistics)
    inputs = [ct_path, *checkpoints] if model is None else [ct_path, model]
    if model is None:  # a model folder's labels tell its files: checked once it is read
        _check_outputs(out_path, written, inputs, overwrite)
    if statistics:
        refuse_assumed_voxel_size(ct_path, "predict without --statistics")
    start = time.perf_counter()
    if model is not None:
        from ..nnunet.model import NnunetPredictor

        predictor = NnunetPredictor(model, device=device, tta=tta)
        if unused := settings_for_3d(overlap, body_crop):  # said beside the result
            predictor.notes.append(
                f"{unused}: for ctseg's 3D checkpoints only; {model} runs as nnU-Net's "
                "predictor runs it (overlap 0.5, the whole CT): not used"
            )
        checkpoints = []
        if predictor.other_labels:
            if split_masks or statistics:
                raise ConfigError(
                    f"{model} predicts labels outside TotalSegmentator's "
                    f"({sorted(predictor.other_labels.values())[:3]}); --split-masks and "
                    "--statistics need TotalSegmentator v2 names"
                )
            names_path = companion_paths(out_path)["names"]
            _check_outputs(out_path, [out_path, names_path], inputs, overwrite)
            return _predict_own_labels(predictor, ct_path, out_path, resample_uneven, progress,
                                       start, inputs, overwrite)  # fmt: skip
        _check_outputs(out_path, written, inputs, overwrite)
    else:
        predictor = Predictor(checkpoints, device=device, batch_slices=batch_slices, tta=tta,
                              overlap=overlap, body_crop=body_crop)  # fmt: skip
    if ct_path.is_file():
        try:
            header = nib.load(str(ct_path)).header
            header_shape, zooms = header.get_data_shape()[:3], header.get_zooms()[:3]
        except Exception:  # unreadable files get their one-line error from load_ct below
            header_shape = zooms = None
        if header_shape and len(header_shape) == 3:
            spacing = zooms if len(zooms) == 3 and all(z > 0 for z in zooms) else None
            predictor.check_memory(header_shape, memory_limit_bytes, spacing)
    ct, read_warnings = load_ct_noting(ct_path, resample_uneven=resample_uneven)
    ckpts = [checkpoints] if isinstance(checkpoints, str | Path) else list(checkpoints)
    domain = []
    if ckpts:  # the domain of ctseg's own runs; an nnU-Net model states none
        domain = domain_warnings(ckpts, ct.array.transpose(2, 0, 1), ct.spacing_mm,
                                 input_is_phantom=is_phantom_ct(ct_path), what=str(ct_path))  # fmt: skip
    for message in domain:
        log.warning(message)
    labels = predictor.predict(ct, progress=progress, memory_limit_bytes=memory_limit_bytes)

    values = [value_of(s) for s in predictor.structures]
    names = names_of(predictor.structures)  # a merge's value named by the merge
    companions = companion_paths(out_path)
    slicer, itk = label_file_paths(out_path)
    stats_path = companions["statistics"] if statistics else None
    with StagedOutputs(out_path) as staged:
        if split_masks:
            _write_masks(labels, ct, predictor.structures, staged.folder(companions["masks"]))
        save_on_original_grid(labels, ct, staged.file(out_path, _suffix(out_path)))
        # write_label_files names its two files after a stem: a temporary one, staged
        temporary = out_path.with_name(f".tmp-{stem_of(out_path)}.{staged.token}")
        for path, target in zip(label_file_paths(temporary), (slicer, itk), strict=True):
            staged.add(path, target)
        write_label_files(temporary, values, names, learned=True)
        if statistics:
            from ..fileio import atomic_write_text
            from ..metrics.stats import volume_statistics

            table = volume_statistics(labels, ct.array, ct.spacing_mm, names)
            atomic_write_text(staged.file(stats_path), table.to_csv(index=False))
        replaced = _remove_earlier(staged, out_path, written, inputs, overwrite)
        staged.commit()

    counts = np.bincount(labels.ravel(), minlength=NUM_LABELS)
    voxel_ml = float(np.prod(ct.spacing_mm)) / 1000.0
    found = {
        names[k]: {"voxels": int(counts[k]), "volume_ml": round(counts[k] * voxel_ml, 3)}
        for k in values
        if counts[k]
    }
    # the canonical (RAS) CT's voxels a 3D model labelled, [first, end) per axis; None: all
    last_box = getattr(predictor, "last_box", None)
    box = None if last_box is None else [[int(s.start), int(s.stop)] for s in last_box]
    return {
        "ct": str(ct_path),
        "out": str(out_path),
        "label_files": [str(slicer), str(itk)],
        "masks_dir": str(companions["masks"]) if split_masks else None,
        "statistics": str(stats_path) if stats_path else None,
        "shape": [int(s) for s in ct.original_shape],
        # the file's own axes, as "shape" and "orientation" (ct.spacing_mm is RAS order)
        "spacing_mm": [round(float(s), 4) for s in spacing_of(ct.original_affine)],
        "orientation": ct.orientation,
        "checkpoints": [str(p) for p in ckpts],
        "model": str(model) if model is not None else None,
        # an nnU-Net model mirrors only on the axes it allows (an exported run: none)
        "tta": predictor.mirrors if model is not None else bool(tta),
        # each checkpoint's test-time passes: the left/right mirror, or shifted copies
        "tta_passes": None
        if model is not None
        else {str(m.path): predictor.strategy.augmentations(m)[1:] for m in predictor.members},
        "body_box": box,
        "structures_found": found,
        "warnings": [
            *read_warnings,
            *filter(None, [hu_problem(ct.array, str(ct_path))]),
            *getattr(predictor, "notes", []),
            *domain,
            *replaced,
        ],
        "seconds": round(time.perf_counter() - start, 2),
    }


def _predict_own_labels(predictor, ct_path: Path, out_path: Path, resample_uneven: bool,
                        progress, start: float, inputs: list, overwrite: bool) -> dict:  # fmt: skip
    """An nnU-Net model with its own labels: ``OUT.nii.gz`` in its values, ``OUT_labels.json``
    (value -> name); with ``overwrite`` an earlier prediction's .ctbl / ITK-SNAP files, which
    would name its values otherwise, are removed (``_remove_earlier``)."""
    from ..fileio import atomic_write_json

    ct, read_warnings = load_ct_noting(ct_path, resample_uneven=resample_uneven)
    labels = predictor.predict(ct, progress=progress, own_values=True)
    names_path = companion_paths(out_path)["names"]
    value_names = {str(v): n for v, n in sorted(predictor.value_names.items())}
    with StagedOutputs(out_path) as staged:
        save_on_original_grid(labels, ct, staged.file(out_path, _suffix(out_path)))
        atomic_write_json(staged.file(names_path), value_names)
        replaced = _remove_earlier(staged, out_path, [out_path, names_path], inputs, overwrite)
        staged.commit()
    counts = np.bincount(labels.ravel(), minlength=max(predictor.value_names) + 1)
    voxel_ml = float(np.prod(ct.spacing_mm)) / 1000.0
    found = {
        name: {"voxels": int(counts[v]), "volume_ml": round(counts[v] * voxel_ml, 3)}
        for v, name in predictor.value_names.items()
        if counts[v]
    }
    return {
        "ct": str(ct_path), "out": str(out_path), "label_files": [str(names_path)],
        "masks_dir": None, "statistics": None, "shape": [int(s) for s in ct.original_shape],
        "spacing_mm": [round(float(s), 4) for s in spacing_of(ct.original_affine)],
        "orientation": ct.orientation,
        "checkpoints": [], "model": str(predictor.path), "tta": predictor.mirrors,
        "structures_found": found, "warnings": [*read_warnings, *predictor.notes, *replaced],
        "seconds": round(time.perf_counter() - start, 2),
    }  # fmt: skip
