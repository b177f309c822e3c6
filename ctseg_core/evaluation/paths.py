"""Where an evaluation's tables go, and the record of what they score (``source_<split>.json``).

Every source gets its own folder, so evaluating one checkpoint or predictions folder never
replaces the tables of another: ``<run>/evaluation`` for a run's ``best.pth`` (the run folder
contract), ``<run>/evaluation_<stem>`` for its other checkpoints, ``<run>/evaluation_ensemble_<h>``
for several, and ``<name>-<h>`` under a chosen root for a predictions folder (two folders of the
same name in different places do not meet), ``nnunet_<name>-<h>`` there for an nnU-Net model.
``<h>``: 8 hex digits of the resolved paths.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..fileio import is_dir, is_file


def _digest(paths: Sequence[str | Path]) -> str:
    text = "\n".join(sorted(str(Path(p).resolve()) for p in paths))
    return hashlib.sha1(text.encode()).hexdigest()[:8]


def checkpoint_evaluation_dir(checkpoints: Sequence[str | Path]) -> Path:
    """The evaluation folder of one checkpoint (or an ensemble), inside the first one's run."""
    first = Path(checkpoints[0])
    if len(checkpoints) > 1:
        return first.parent / f"evaluation_ensemble_{_digest(checkpoints)}"
    if first.name == "best.pth":
        return first.parent / "evaluation"
    return first.parent / f"evaluation_{first.stem}"


def folder_evaluation_dir(root: str | Path, predictions: str | Path) -> Path:
    """The evaluation folder of a predictions folder, under ``root``: ``<name>-<digest>``."""
    return Path(root) / f"{Path(predictions).resolve().name}-{_digest([predictions])}"


def model_evaluation_dir(root: str | Path, model: str | Path, name: str) -> Path:
    """The evaluation folder of an nnU-Net model (``nnunet.listing``) under ``root``:
    ``nnunet_<name>-<digest>``, the name's characters other than letters, digits, '.', '_'
    and '-' made '_' (so "TotalSegmentator total (5 parts)" is one plain folder name)."""
    import re

    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
    return Path(root) / f"nnunet_{plain}-{_digest([model])}"


REPORT_FIGURES = ("metrics_distribution", "structure_ranking", "segmentation_visualization")


def report_files_of(out_dir: str | Path, split: str) -> list[Path]:
    """The figures and 3D pages an earlier evaluation of ``split`` left in ``out_dir``: those
    its ``source_<split>.json`` lists, and the split's figure names (folders from before the
    list was kept). Only plain file names inside ``out_dir`` are returned."""
    out_dir = Path(out_dir)
    names = {f"{figure}_{split}.png" for figure in REPORT_FIGURES}
    try:
        listed = json.loads((out_dir / f"source_{split}.json").read_text()).get("report_files")
        names |= {str(n) for n in listed or []}
    except (OSError, ValueError, AttributeError):
        pass
    return [out_dir / n for n in sorted(names) if n == Path(n).name and is_file(out_dir / n)]


def remove_stale_report(previous: Sequence[Path], written: Sequence[Path]) -> None:
    """Delete the files of an earlier report that this evaluation did not write again: figures
    beside new tables would show another source's numbers."""
    keep = {Path(p).name for p in written}
    for path in previous:
        if path.name not in keep:
            path.unlink(missing_ok=True)


def file_stamp(path: str | Path) -> dict:
    """{"path", "size", "mtime_ns"} of a file as it is now (size and mtime_ns None when it
    cannot be read): what ``changed_checkpoints`` compares with later."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError:
        return {"path": str(path), "size": None, "mtime_ns": None}
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def changed_checkpoints(source: Mapping, side: str = "",
                        folder: str | Path | None = None) -> list[str]:  # fmt: skip
    """A note for each checkpoint an evaluation's ``source_<split>.json`` scored that has
    changed since (a resumed run rewrites best.pth: the tables then describe another model) or
    is no longer where it was and not found beside the evaluation ``folder`` either (a run's
    evaluation moves with it when the run is renamed: the file of that name in the run folder
    is compared then); ``side`` names the evaluation ("A": "A's checkpoint"; "": "the
    checkpoint")."""
    notes, whose = [], f"{side}'s checkpoint" if side else "the checkpoint"
    for stamp in source.get("checkpoint_files") or []:
        if not isinstance(stamp, Mapping) or "path" not in stamp:
            continue
        now, path = file_stamp(stamp["path"]), stamp["path"]
        moved = Path(folder).parent / Path(path).name if folder is not None else None
        if now["size"] is None and moved is not None and is_file(moved):
            now, path = file_stamp(moved), str(moved.resolve())
            now["path"] = stamp["path"]  # the same file if its size and mtime are
        if now["size"] is None:
            notes.append(
                f"{whose} {path} is no longer there (a renamed run?): whether its "
                "tables describe the model now cannot be told"
            )
        elif now != stamp:
            notes.append(
                f"{whose} {path} has changed since it was evaluated "
                f"({source.get('written', 'earlier')}): its tables describe the model as it "
                "was then; evaluate it again"
            )
    return notes


def write_source(
    out_dir: str | Path,
    predictions: str | Path | Sequence[str | Path],
    dataset_root: str | Path,
    split: str,
    subjects: Sequence[str],
    tolerance_mm: float,
    tta: bool,
    report_files: Sequence[Path] = (),
    skipped: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
    *,
    body_crop: bool | None = None,
    body_boxes: Mapping[str, Sequence[Sequence[int]]] | None = None,
    checkpoint_stamps: Sequence[Mapping] | None = None,
) -> None:
    """Record in ``out_dir/source_<split>.json`` what the split's tables there score (atomically).

    predictions: a folder, or the checkpoint paths of the ensemble; ``tta`` is recorded for
    checkpoints only; ``report_files``: the figures and 3D pages written with the tables;
    ``subjects``: those scored; ``skipped``: id -> reason of those that could not be scored
    (recorded as ``[{"subject", "reason"}, ...]``); ``notes``: warnings about what was scored
    (``evaluate.evaluate_predictions``); ``body_crop`` (checkpoints only): whether a 3D
    model labelled only the box around the body, ``body_boxes``: id -> that box per subject,
    ``[[x0, x1], [y0, y1], [z0, z1]]`` canonical (RAS) voxel indices, stop exclusive (only
    subjects with one); ``checkpoint_stamps``: each checkpoint file's ``file_stamp`` as it
    was loaded (default: taken now).
    """
    from ..fileio import atomic_write_json
    from ..runs.run_folder import utc_now

    folder = isinstance(predictions, str | Path) and is_dir(predictions)
    paths = [predictions] if isinstance(predictions, str | Path) else list(predictions)
    record = {
        "predictions_folder" if folder else "checkpoints": (
            str(Path(predictions).resolve()) if folder else [str(Path(p).resolve()) for p in paths]
        ),
        "dataset": str(Path(dataset_root).resolve()),
        "split": split,
        "subjects": list(subjects),
        "skipped": [{"subject": k, "reason": v} for k, v in (skipped or {}).items()],
        "notes": list(notes),
        "tolerance_mm": tolerance_mm,
        "report_files": [Path(p).name for p in report_files],
        "written": utc_now(),
    }
    if not folder:
        record["tta"] = tta
        # to see them change; a model folder is no file to stamp
        record["checkpoint_files"] = list(
            checkpoint_stamps or [file_stamp(p) for p in paths if is_file(p)]
        )
    if body_crop is not None:
        record["body_crop"] = bool(body_crop)
        record["body_boxes"] = {
            k: [list(map(int, r)) for r in v] for k, v in (body_boxes or {}).items()
        }
    atomic_write_json(Path(out_dir) / f"source_{split}.json", record)


def other_source(
    out_dir: str | Path, split: str, predictions: str | Path | Sequence[str | Path]
) -> str | None:
    """What ``out_dir`` holds, when not ``predictions``'s tables of the split: "the <split>
    split's evaluation of <folder or checkpoint paths>" (``write_source``'s record compared by
    resolved paths), "... comparison of <A> and <B>" (``compare_evaluations``'s), or "a
    comparison (comparison_<other>.csv)"; None when it holds none, or those of ``predictions``."""
    try:
        record = json.loads((Path(out_dir) / f"source_{split}.json").read_text())
    except (OSError, ValueError):  # none of this split: a comparison of another is still one
        held = sorted(Path(out_dir).glob("comparison_*.csv")) if is_dir(out_dir) else []
        return f"a comparison ({held[0].name})" if held else None
    if not isinstance(record, dict):
        return None
    folder = isinstance(predictions, str | Path) and is_dir(predictions)
    paths = [predictions] if isinstance(predictions, str | Path) else list(predictions)
    ours = str(Path(predictions).resolve()) if folder else [str(Path(p).resolve()) for p in paths]
    if "a" in record and "b" in record:  # a comparison's: evaluating there would replace it
        return f"the {split} split's comparison of {record['a']} and {record['b']}"
    theirs = record.get("predictions_folder", record.get("checkpoints"))
    if theirs is None or theirs == ours:
        return None
    shown = theirs if isinstance(theirs, str) else ", ".join(map(str, theirs))
    return f"the {split} split's evaluation of {shown}"
