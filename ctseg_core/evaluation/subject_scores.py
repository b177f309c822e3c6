"""One subject of an evaluation: its reference, its prediction (a folder's file read onto the
reference's grid, or a checkpoint's labels) and their subject x structure rows."""

from __future__ import annotations

import logging

import numpy as np

from ..data.cache import open_cached
from ..errors import DataError
from ..labels import NUM_LABELS, member_values, merge_lut, merged_annotated, names_of
from .prediction_files import find_prediction
from .prediction_labels import prediction_names, read_named_prediction
from .tables import subject_rows

log = logging.getLogger(__name__)


def score_subject(sid, root, cache_dir, folder, predictor, model_labels, tolerance_mm, boxes):
    """(rows, cached, reference, prediction, notes) of one subject; DataError when it cannot be
    scored. ``boxes`` (id -> [start, stop) RAS voxel indices per axis) gains the box around the
    body that a 3D checkpoint labelled (``Predictor.last_box``).

    A folder's prediction is read in v2 values, or by the names that came with it
    (``prediction_labels``: its label file, ``<id>_labels.json``, its header's label table or the
    folder's dataset.json). A merge the predictor learns (``labels.MERGES``), or a folder's
    prediction holds (so named; its members predicted apart count as it, with a note), is
    scored against the union of its members' references, and only where every member is
    annotated. A folder's prediction whose names list what its model labels is scored on those
    structures only, as a checkpoint is. ``notes``: warnings, also logged, about a folder's
    prediction (members counted as their merge, ``unnamed_merge_notes``; names that are no v2
    structure)."""
    from ..inference.label_files import unnamed_merge_notes

    cached = open_cached(root, sid, cache_dir)
    path = find_prediction(folder, sid) if folder is not None else None
    named = prediction_names(path) if path is not None else None
    structures = predictor.structures if predictor is not None else named.merges
    annotated = merged_annotated(cached.annotated, structures)
    if named is not None and named.scored is not None:
        model_labels = np.isin(np.arange(NUM_LABELS), list(named.scored))
    if model_labels is not None:
        annotated &= model_labels
        annotated[0] = True
    lut = merge_lut(structures)
    reference = lut[np.asarray(cached.labels_xyz())]
    notes = cached.unused_masks  # structures of this subject not scored: their mask is unusable
    if cached.overlap_note:  # a structure scored against less than its mask file holds
        notes.append(f"{cached.overlap_note}, in the references scored here too")
    if folder is not None:
        prediction, _ = read_named_prediction(
            path, reference.shape, cached.affine,
            cached.original_shape, cached.original_affine, notes, named=named,
        )  # fmt: skip
        # a merge its names name: members predicted apart (a per-member prediction beside a
        # merged run's label file) are part of it, as in the reference
        merged = lut[prediction]
        moved = sorted(int(v) for v in np.unique(prediction[merged != prediction]))
        if moved:
            into = [n for n in structures if set(member_values(n)) & set(moved)]
            notes.append(
                f"{path.name}: values {', '.join(map(str, moved))} are members of "
                f"{', '.join(into)}, which {named.source.name} names: scored as part of it"
            )
            prediction = merged
    else:
        prediction = predictor.predict(cached.ct_volume())
    box = getattr(predictor, "last_box", None)  # a 3D model's box around the body, if it used one
    if box is not None:
        boxes[sid] = [[int(s.start), int(s.stop)] for s in box]
    rows = subject_rows(
        sid, reference, prediction, cached.spacing_mm, annotated, tolerance_mm,
        names_of(structures),
    )  # fmt: skip
    if not rows and cached.unused_masks:  # nothing to score: its masks are on another grid
        raise DataError(cached.unused_masks[0])
    notes += unnamed_merge_notes(path, rows) if folder is not None else []
    for note in notes:
        log.warning("%s", note)
    return rows, cached, reference, prediction, notes
