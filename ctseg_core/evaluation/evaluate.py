"""Evaluation of a dataset split: subject x structure rows of metrics, written as CSV tables.

Predictions come from a folder of ``<id>.nii.gz`` multilabel files written by any tool
(TotalSegmentator ``--ml``, nnU-Net; values 0..117 in TotalSegmentator v2 order unless names
came with them: ``prediction_labels``; ``ctseg predict``'s label files beside them say which
values are merges) or from checkpoints of our own models. A prediction on another grid than its reference is resampled onto
the reference's grid by affine (nearest neighbour), so a file stored in another orientation or
with a different field of view is scored on the same voxels as the reference.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..data.cache import default_cache_dir, open_cached
from ..data.dataset_root import open_dataset
from ..data.domain import is_phantom_root
from ..errors import ConfigError, DataError
from ..fileio import (
    atomic_write_text,
    cache_unusable,
    cannot_read,
    dangling_link,
    folder_error,
    is_dir,
    is_file,
    is_within,
    not_writable,
)
from ..inference.domain import checkpoint_training_data, domain_warnings, split_domain_notes
from ..labels import NUM_LABELS, merged_annotated, value_of
from .paths import file_stamp, remove_stale_report, report_files_of, write_source
from .prediction_files import find_prediction
from .subject_scores import score_subject
from .tables import RESULT_COLUMNS, detection_table, summarize_results

log = logging.getLogger(__name__)

#: columns of ``skipped_<split>.csv``: the subjects an evaluation could not score, and why
SKIPPED_COLUMNS = ("subject", "reason")


def _check_model_structures(
    structures, root: Path, ids, cache_dir, split: str, skipped: dict[str, str]
) -> None:
    """ConfigError when no subject of the split annotates any structure the model predicts.

    A subject that cannot be read is added to ``skipped`` (id -> reason) and left out.
    """
    annotated = np.zeros(NUM_LABELS, dtype=bool)
    unused = {}  # id -> the line of its masks on another grid
    for sid in ids:
        try:
            cached = open_cached(root, sid, cache_dir)
        except DataError as exc:
            skipped[sid] = str(exc)
            continue
        annotated |= merged_annotated(cached.annotated, structures)
        unused.update((sid, line) for line in cached.unused_masks)
    if len(skipped) == len(ids):
        raise _nothing_scored(split, root, ids, skipped)
    covered = [s for s in structures if annotated[value_of(s)]]
    if not covered and unused:  # masks there, on another grid: that is what to fix
        raise _nothing_scored(split, root, ids, {**skipped, **unused})
    if not covered:
        shown = ", ".join(structures[:5]) + (" ..." if len(structures) > 5 else "")
        raise ConfigError(
            f"the checkpoint predicts {len(structures)} structures ({shown}), none of them "
            f"annotated in split {split!r} of {root} ({int(annotated[1:].sum())} other structures "
            "are); evaluate it on a dataset with masks for the structures it was trained on"
        )
    if len(covered) < len(structures):
        log.warning(
            "%d of the checkpoint's %d structures are not annotated in split %r; they are not scored",
            len(structures) - len(covered), len(structures), split,
        )  # fmt: skip


def _nothing_scored(split: str, root: Path, ids, skipped: dict[str, str]) -> DataError:
    """The one-line error of an evaluation in which no subject could be scored (the first
    three reasons, in the split's order)."""
    said = [sid for sid in ids if sid in skipped]  # a reason may name its subject already
    reasons = "; ".join(f"{sid}: {skipped[sid].removeprefix(f'{sid}: ')}" for sid in said[:3])
    more = f"; and {len(said) - 3} more" if len(said) > 3 else ""
    return DataError(
        f"no subject of split {split!r} of {root} could be scored ({len(ids)} tried): "
        f"{reasons}{more}"
    )


def evaluate_predictions(
    dataset_root: str | Path,
    split: str,
    predictions: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    tolerance_mm: float = 3.0,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    cache_dir: str | Path | None = None,
    subjects: Sequence[str] | None = None,
    report: bool = True,
    mesh_subjects: int = 3,
    device: str = "auto",
    tta: bool = False,
    model: str | Path | None = None,
    body_crop: bool = True,
) -> pd.DataFrame:
    """Score predictions of a dataset split against its references; write tables and figures.

    predictions: a folder of ``<id>.nii.gz`` multilabel files, or a list of checkpoint paths
    (an ensemble, predicted here). subjects: restrict to these ids of the split. Returns the
    subject x structure table (columns ``RESULT_COLUMNS``; annotated structures only; for
    checkpoints only the structures the model predicts). Writes into ``out_dir`` atomically:
    ``evaluation_results_<split>.csv``, ``summary_<split>.csv``, ``detection_<split>.csv``,
    ``source_<split>.json`` (what was scored: ``paths.write_source``) and, with
    ``report``, the figures and ``3d_<subject>.html`` for the first ``mesh_subjects``.
    ``paths`` names a folder per source. ``model``: an nnU-Net model folder (or
    TotalSegmentator's results folder) predicts instead (``predictions`` is then ignored;
    ``tta`` is its mirroring); the structures scored are those both the model (by
    TotalSegmentator v2 name) and the references have. ``body_crop``: 3D checkpoints label only
    the box around the body (``inference.Predictor``, as ``ctseg predict``); each subject's box
    is recorded in ``source_<split>.json`` and ``results.attrs["body_boxes"]`` (id -> [start,
    stop) RAS voxel indices per axis, as ``predict_file``'s ``body_box``).

    A subject that cannot be scored (no prediction file in the folder, an unreadable or wrong
    prediction, a CT or mask that cannot be read: any DataError) is left out with a warning; the
    others are scored. The left-out ones are listed with their reason in
    ``skipped_<split>.csv`` (columns ``SKIPPED_COLUMNS``; header only when none), in
    ``source_<split>.json`` and in ``results.attrs["skipped"]`` (id -> reason, in split order).
    ``results.attrs["notes"]`` and ``source_<split>.json``'s ``notes``: warnings about what
    was scored (a folder's prediction that looks merged without its label file:
    ``subject_scores.score_subject``; subjects unlike a checkpoint's training CTs: ``split_domain_notes``).
    DataError when no subject could be scored, or no structure is annotated in those that could
    (nothing is written then); ConfigError for a
    ``tolerance_mm`` that is not a finite number >= 0, before any subject is read.
    """
    if why := dangling_link(out_dir):
        raise ConfigError(f"--out {out_dir} is {why}; restore what it points to or remove it")
    if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
        raise ConfigError(f"--out {out_dir} is a file; give a folder for the tables and figures")
    if why := not_writable(out_dir):  # before the scoring, not after it
        raise ConfigError(f"--out {out_dir}: {why}; give a folder this user may write to")
    if not (np.isfinite(tolerance_mm) and tolerance_mm >= 0):  # before any subject is scored
        raise ConfigError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    index = open_dataset(dataset_root)
    ids = index.subjects_in(split)
    if subjects is not None:
        unknown = sorted(set(subjects) - set(ids))
        if unknown:
            where = ", ".join(
                f"{s} in {index.splits.get(s) or 'no split'}"
                if s in index.subjects
                else f"{s} not in the dataset"
                for s in unknown
            )
            raise DataError(
                f"subjects {unknown} are not in split {split!r} of {index.root} ({where}); "
                "choose their split, or --split all"
            )
        ids = [s for s in ids if s in set(subjects)]
    if not ids:
        raise DataError(
            f"split {split!r} of {index.root} holds no subjects; splits: {index.counts()}"
        )

    predictor, folder, model_labels, stamps = None, None, None, None
    skipped: dict[str, str] = {}  # subject id -> why it was not scored
    notes: list[str] = []  # what looks wrong in what was scored (score_subject)
    boxes: dict[str, list[list[int]]] = {}  # subject id -> the box a 3D checkpoint labelled
    if model is not None:
        from ..inference.predictor import settings_for_3d
        from ..nnunet.model import NnunetPredictor

        predictor = NnunetPredictor(model, device=device, tta=tta)
        predictions = [Path(model)]
        if not predictor.structures:
            raise ConfigError(
                f"{model} predicts no TotalSegmentator v2 structure "
                f"({sorted(predictor.other_labels.values())[:5]}); nothing to score"
            )
        if unused := settings_for_3d(0.5, body_crop):
            predictor.notes.append(
                f"{unused}: for ctseg's 3D checkpoints only; {model} runs as nnU-Net's "
                "predictor runs it (the whole CT): not used"
            )
    elif isinstance(predictions, str | Path) and is_dir(predictions):
        folder = Path(predictions)
        if exc := folder_error(folder):  # said once, not per subject
            raise DataError(cannot_read(f"predictions folder {folder}", exc, folder))
        for sid in ids:
            try:
                if find_prediction(folder, sid) is None:
                    masks = is_dir(folder / sid) and any((folder / sid).glob("*.nii*"))
                    skipped[sid] = f"no prediction {sid}.nii.gz in {folder}" + (
                        f" ({sid}/ holds one mask per structure: write one multilabel file per "
                        "subject, e.g. TotalSegmentator --ml)" if masks else "")  # fmt: skip
            except DataError as exc:  # two files for it
                skipped[sid] = str(exc)
            except OSError as exc:  # its file alone (a link into a closed folder): skipped
                failed = exc.filename or str(folder / f"{sid}.nii.gz")
                skipped[sid] = f"{sid}: {cannot_read(str(failed), exc, failed)}"
        if len(skipped) == len(ids):
            raise _nothing_scored(split, index.root, ids, skipped)
    else:
        checkpoints = [predictions] if isinstance(predictions, str | Path) else list(predictions)
        nifti = [p for p in checkpoints if str(p).endswith((".nii.gz", ".nii"))]
        if nifti:
            raise DataError(
                f"{nifti[0]} is one prediction; give the folder that holds the <id>.nii.gz "
                "predictions of the split"
            )
        missing = [p for p in checkpoints if not is_file(p)]
        if missing:
            raise DataError(
                f"{missing[0]} is neither a folder of <id>.nii.gz predictions nor a checkpoint "
                "file; check the path"
            )
        from ..inference.predictor import Predictor

        predictor = Predictor(checkpoints, device=device, tta=tta, body_crop=body_crop)
        # the files as they were loaded (a run may rewrite best.pth while this one scores)
        stamps = [file_stamp(c) for c in checkpoints]
        records = [checkpoint_training_data(c) for c in checkpoints]  # once, not per subject
    if predictor is not None:  # a model or checkpoints: scored on what they predict
        for note in predictor.notes:  # settings they do not use (no body crop of a 2D model)
            notes.append(note)
            log.warning("%s", note)
        model_labels = np.zeros(NUM_LABELS, dtype=bool)
        model_labels[[value_of(s) for s in predictor.structures]] = True
        _check_model_structures(predictor.structures, index.root, ids, cache_dir, split, skipped)

    outside: dict[str, list[str]] = {}  # id -> domain warnings (checkpoints only)
    phantom = is_phantom_root(index.root)
    out_dir = Path(out_dir)
    previous = report_files_of(out_dir, split)  # an earlier evaluation's figures, if any
    rows: list[dict] = []
    from .report import ReportCollector

    collector = ReportCollector(out_dir, split, mesh_subjects=mesh_subjects) if report else None
    try:
        for done, sid in enumerate(ids, start=1):
            if sid in skipped:
                log.warning("skipping %s: %s", sid, skipped[sid])
            else:
                try:
                    subject, cached, reference, prediction, subject_notes = score_subject(
                        sid, index.root, cache_dir, folder, predictor, model_labels,
                        tolerance_mm, boxes,
                    )  # fmt: skip
                except DataError as exc:
                    skipped[sid] = str(exc)
                    log.warning("skipping %s: %s", sid, exc)
                except OSError as exc:  # a subject's file this user may not read: the rest count
                    if (
                        exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS)
                        or not exc.filename
                    ):
                        raise
                    cache = cache_dir or default_cache_dir()
                    if is_within(exc.filename, cache):  # every subject alike: said once
                        raise ConfigError(cache_unusable(cache, exc)) from None
                    skipped[sid] = f"{sid}: {cannot_read(exc.filename, exc, exc.filename)}"
                    log.warning("skipping %s: %s", sid, skipped[sid])
                else:
                    rows.extend(subject)
                    notes.extend(subject_notes)
                    if stamps is not None:  # checkpoints: is the subject like their CTs?
                        outside[sid] = domain_warnings(checkpoints, cached.ct, cached.spacing_mm,
                                                       input_is_phantom=phantom, what=sid,
                                                       records=records)  # fmt: skip
                    if collector is not None:
                        collector.add_subject(sid, cached, reference, prediction, subject)
            if progress:
                progress(done, len(ids), sid)
        if len(skipped) == len(ids):
            raise _nothing_scored(split, index.root, ids, skipped)
        if not rows:  # every scored subject lacks every mask file of what is predicted
            raise DataError(
                f"no structure is annotated in the scored subjects of split {split!r} of "
                f"{index.root} (their segmentations/ folders hold none of the predicted "
                "structures); nothing to score"
            )
    except BaseException:
        if collector is not None:
            collector.discard()
        raise
    skipped = {sid: skipped[sid] for sid in ids if sid in skipped}  # in the split's order
    with_rows = {row["subject"] for row in rows}
    for sid in [s for s in ids if s not in skipped and s not in with_rows]:
        notes.append(
            f"{sid}: none of the structures scored here is annotated in it (no mask file): "
            "it has no row in the tables"
        )
        log.warning("%s", notes[-1])
    for note in split_domain_notes(outside, len(ids) - len(skipped)):
        log.warning("%s", note)
        notes.append(note)
    results = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    atomic_write_text(out_dir / f"evaluation_results_{split}.csv", results.to_csv(index=False))
    summary = summarize_results(results)
    atomic_write_text(out_dir / f"summary_{split}.csv", summary.to_csv(index=False))
    atomic_write_text(
        out_dir / f"detection_{split}.csv", detection_table(results).to_csv(index=False)
    )
    table = pd.DataFrame(list(skipped.items()), columns=list(SKIPPED_COLUMNS))
    atomic_write_text(out_dir / f"skipped_{split}.csv", table.to_csv(index=False))
    written = []
    if collector is not None:
        notes.extend(collector.notes)
        try:
            written = collector.finish(results, summary)
        except Exception as exc:  # the figures; the tables stand (a partial result beats none)
            collector.discard()
            first = (str(exc).strip().splitlines() or [""])[0]
            notes.append(
                f"the report's figures could not be drawn ({type(exc).__name__}: {first}); the "
                "tables are complete"
            )
            log.warning("%s", notes[-1])
        except BaseException:
            collector.discard()
            raise
    scored_ids = [sid for sid in ids if sid not in skipped]
    boxes = {sid: boxes[sid] for sid in scored_ids if sid in boxes}
    write_source(
        out_dir, predictions, index.root, split, scored_ids, tolerance_mm, tta, written, skipped,
        notes, body_crop=body_crop if folder is None and model is None else None,
        body_boxes=boxes, checkpoint_stamps=stamps,
    )  # fmt: skip
    remove_stale_report(previous, written)
    results.attrs["skipped"] = skipped
    results.attrs["notes"] = notes
    results.attrs["body_boxes"] = boxes
    return results
