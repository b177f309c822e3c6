"""Prediction commands: predict, evaluate, export, stats."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

from .progress import tqdm_callback

_MODEL_HELP = (
    "an nnU-Net v2 model folder (dataset.json, plans.json, fold_<k>/checkpoint_final.pth; "
    "every fold is averaged) or TotalSegmentator's results folder with Dataset291..295 "
    "(e.g. ~/.totalsegmentator/nnunet/results): predicted as nnUNetPredictor does"
)
_NO_MIRROR_HELP = "--model: no test-time mirroring (nnU-Net mirrors on the axes it allows)"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="label a CT (NIfTI file or DICOM folder) with one or more checkpoints"
    )
    p.add_argument("--ct", required=True, type=Path, help="CT .nii.gz or a DICOM series folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", type=Path, action="append",
        help="model checkpoint (.pth); repeat for an ensemble (scores are averaged)",
    )  # fmt: skip
    source.add_argument("--model", type=Path, help=_MODEL_HELP)
    p.add_argument("--out", required=True, type=Path, help="output multilabel OUT.nii.gz")
    p.add_argument(
        "--split-masks", action="store_true",
        help="also write OUT/segmentations/<structure>.nii.gz (the dataset layout)",
    )  # fmt: skip
    p.add_argument(
        "--statistics", action="store_true",
        help="also write OUT_statistics.csv: volume (ml) and mean/std HU per structure",
    )  # fmt: skip
    p.add_argument("--tta", action="store_true", help="test-time augmentation (left/right safe)")
    p.add_argument("--no-mirroring", action="store_true", help=_NO_MIRROR_HELP)
    p.add_argument(
        "--resample-uneven", action="store_true",
        help="a DICOM series with missing slices or uneven spacing is interpolated onto a "
        "uniform grid (said in the output) instead of refused",
    )  # fmt: skip
    p.add_argument(
        "--batch-slices", type=int, default=8,
        help="axial slices per batch, or patches per batch for a 3D model (default 8)",
    )  # fmt: skip
    p.add_argument(
        "--overlap", type=float, default=0.5,
        help="3D models: the share of a patch neighbouring windows share, 0 to 0.9 (default 0.5)",
    )  # fmt: skip
    p.add_argument(
        "--no-body-crop", action="store_true",
        help="3D models: run the windows over the whole CT, not only the box around the body",
    )  # fmt: skip
    p.add_argument(
        "--device", default="auto", help="auto (a GPU when there is one), cpu, cuda, cuda:1"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (atomically)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_predict)

    p = subparsers.add_parser(
        "evaluate", help="score predictions of a dataset split: CSV tables, figures, 3D pages",
        epilog="exit status: 0 every subject scored; 1 some could not be (each listed with its "
        "reason in OUT/skipped_<split>.csv; the tables hold the others); 2 bad input, or no "
        "subject could be scored",
    )  # fmt: skip
    p.add_argument(
        "--data", required=True, type=Path, help="dataset root (TotalSegmentator layout)"
    )
    p.add_argument("--split", default="test", help="train, val, test or all (default test)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--predictions", type=Path, help="folder of <id>.nii.gz multilabel files (any tool)"
    )
    source.add_argument(
        "--checkpoint", type=Path, action="append", help="checkpoint(s) to predict with"
    )
    source.add_argument("--model", type=Path, help=_MODEL_HELP)
    p.add_argument(
        "--out", type=Path, default=None,
        help="folder for the tables and figures (default with --checkpoint: <run>/evaluation for "
        "best.pth, <run>/evaluation_<stem> for another, <run>/evaluation_ensemble_<hash> for "
        "several)",
    )  # fmt: skip
    p.add_argument("--tolerance-mm", type=float, default=3.0, help="surface Dice tolerance (mm)")
    p.add_argument("--subjects", nargs="+", default=None, help="only these subject ids")
    p.add_argument("--meshes", type=int, default=3, help="3D pages for the first N subjects")
    p.add_argument("--no-report", action="store_true", help="tables only, no figures or 3D pages")
    p.add_argument("--cache", type=Path, default=None, help="preprocessing cache folder")
    p.add_argument("--device", default="auto", help="device for --checkpoint (default auto)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation for --checkpoint")
    p.add_argument("--no-mirroring", action="store_true", help=_NO_MIRROR_HELP)
    p.add_argument(
        "--no-body-crop", action="store_true",
        help="3D --checkpoint: run the windows over each whole CT, not only the box around the "
        "body (each box is recorded in OUT/source_<split>.json)",
    )  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true",
        help="replace the split's evaluation of another source in --out",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the per-structure summary as JSON")
    p.set_defaults(func=run_evaluate)

    p = subparsers.add_parser(
        "export", help="write 3D Slicer (.ctbl) and ITK-SNAP label files for a multilabel NIfTI"
    )
    p.add_argument("--labels", required=True, type=Path, help="multilabel .nii.gz (0..117)")
    p.add_argument("--out", required=True, type=Path, help="folder to write the label files into")
    p.add_argument(
        "--all", action="store_true", help="list all 117 structures, not only those present"
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing label files")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=run_export)

    p = subparsers.add_parser(
        "stats", help="volume (ml) and mean/std HU per structure of a segmentation"
    )
    p.add_argument("--ct", required=True, type=Path, help="CT .nii.gz or DICOM folder")
    p.add_argument("--labels", required=True, type=Path, help="multilabel .nii.gz on the CT")
    p.add_argument(
        "--resample-uneven", action="store_true",
        help="read a DICOM series with missing slices or uneven spacing on a uniform grid",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the table as OUT.csv")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=run_stats)


class _LoggedMessages(logging.Filter):
    """Remembers the messages of the records its handlers print (and lets them all through)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return True


def _on_terminal(handler: logging.Handler) -> bool:
    """Whether ``handler`` prints to the terminal (the CLI's own, not a file or a capture)."""
    stream = getattr(handler, "stream", None)
    return stream is not None and stream in (sys.stderr, sys.stdout, sys.__stderr__)


def run_predict(args) -> int:
    from ..inference.files import predict_file

    progress, bar = tqdm_callback("predict", unit="slice")
    logged = _LoggedMessages()  # the summary's warnings that the log already printed
    shown = [h for h in logging.getLogger().handlers if _on_terminal(h)]
    for handler in shown:
        handler.addFilter(logged)
    try:
        summary = predict_file(
            args.ct, args.checkpoint or [], args.out, split_masks=args.split_masks,
            tta=not args.no_mirroring if args.model else args.tta, model=args.model,
            batch_slices=args.batch_slices, device=args.device, progress=progress,
            overwrite=args.overwrite, statistics=args.statistics,
            resample_uneven=args.resample_uneven, overlap=args.overlap,
            body_crop=not args.no_body_crop,
        )  # fmt: skip
    finally:
        bar.close()
        for handler in shown:
            handler.removeFilter(logged)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    for warning in summary["warnings"]:
        if not any(warning in message for message in logged.messages):
            print(f"note: {warning}")
    shape = " x ".join(str(s) for s in summary["shape"])
    print(f"wrote {summary['out']} ({shape}, {summary['orientation']}, {summary['seconds']} s)")
    print(f"label files: {', '.join(summary['label_files'])}")
    if summary["tta"] and summary.get("tta_passes"):
        passes = sorted({p for kinds in summary["tta_passes"].values() for p in kinds})
        mirrored = "the left/right mirror (labels swapped)" if "mirror" in passes else ""
        moved = f"{sum(p.startswith('shift') for p in passes)} shifted copies" if any(
            p.startswith("shift") for p in passes) else ""  # fmt: skip
        print(f"test-time passes: {' and '.join(filter(None, [mirrored, moved]))}")
    if summary.get("model"):
        mirroring = "on" if summary["tta"] else "off"
        if not summary["tta"] and not args.no_mirroring:
            mirroring += ": the model allows it on no axis"
        print(f"model: {summary['model']} (nnU-Net, mirroring {mirroring})")
    if summary.get("body_box"):
        spans = zip("xyz", summary["body_box"], strict=True)
        box = ", ".join(f"{a} {lo}-{hi - 1}" for a, (lo, hi) in spans)
        print(f"labelled the box around the body (RAS voxel indices {box}, inclusive; the rest "
              "is background; --no-body-crop for the whole CT)")  # fmt: skip
    if summary["masks_dir"]:
        print(f"masks: {summary['masks_dir']}/segmentations/")
    if summary["statistics"]:
        print(f"statistics: {summary['statistics']}")
    found = summary["structures_found"]
    print(f"structures found: {len(found)}")
    for name, info in sorted(found.items(), key=lambda kv: -kv[1]["volume_ml"]):
        print(f"  {name:<32}{info['volume_ml']:>12.1f} ml")
    return 0


def _json_safe(records: list[dict]) -> list[dict]:
    """NaN -> null and inf -> "inf", so the output is strict JSON."""

    def clean(v):
        if isinstance(v, float) and math.isnan(v):
            return None
        if isinstance(v, float) and math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return v

    return [{k: clean(v) for k, v in r.items()} for r in records]


def run_evaluate(args) -> int:
    from ..errors import ConfigError
    from ..evaluation.evaluate import evaluate_predictions
    from ..evaluation.tables import summarize_results

    if args.out is None:
        if not args.checkpoint:
            raise ConfigError(
                "--out is required with --predictions or --model; name a folder for the results"
            )
        from ..evaluation.paths import checkpoint_evaluation_dir

        args.out = checkpoint_evaluation_dir(args.checkpoint)
    elif not args.overwrite:
        from ..evaluation.paths import other_source

        source = args.predictions or args.checkpoint or [args.model]
        if held := other_source(args.out, args.split, source):
            raise ConfigError(
                f"--out {args.out} holds {held}; give another --out, or --overwrite to replace it"
            )
    progress, bar = tqdm_callback("evaluate")
    try:
        results = evaluate_predictions(
            args.data, args.split, args.predictions or args.checkpoint, args.out,
            tolerance_mm=args.tolerance_mm, progress=progress, cache_dir=args.cache,
            subjects=args.subjects, report=not args.no_report, mesh_subjects=args.meshes,
            device=args.device, tta=not args.no_mirroring if args.model else args.tta,
            model=args.model, body_crop=not args.no_body_crop,
        )  # fmt: skip
    finally:
        bar.close()
    summary = summarize_results(results)
    boxes = results.attrs.get("body_boxes", {})
    if args.json:
        print(json.dumps(_json_safe(summary.to_dict(orient="records")), indent=2))
        return _report_skipped(results.attrs.get("skipped", {}), args.out, args.split)
    scored = summary.dropna(subset=["dice_mean"])
    n_subjects = results["subject"].nunique()
    print(
        f"evaluated {n_subjects} subjects, {len(scored)} structures present; tables in {args.out}"
    )
    if boxes:
        print(f"3D model: labelled the box around the body in {len(boxes)} CTs (each box in "
              f"source_{args.split}.json; --no-body-crop for whole CTs)")  # fmt: skip
    if len(scored):
        print(f"mean Dice over structures {scored['dice_mean'].mean():.4f}")
        print(_summary_lines(scored))
    return _report_skipped(results.attrs.get("skipped", {}), args.out, args.split)


def _report_skipped(skipped: dict[str, str], out: Path, split: str) -> int:
    """List the subjects an evaluation could not score (stderr); the exit status: 1 for such
    an unfinished result (its tables are written all the same), else 0."""
    if not skipped:
        return 0
    listed = Path(out) / f"skipped_{split}.csv"
    many = "s" if len(skipped) > 1 else ""
    print(f"not scored: {len(skipped)} subject{many} (listed in {listed}):", file=sys.stderr)
    for sid, reason in skipped.items():  # a reason may name its subject already
        print(f"  - {sid}: {reason.removeprefix(f'{sid}: ')}", file=sys.stderr)
    return 1


def _summary_lines(scored) -> str:
    """The per-structure table printed by ``ctseg evaluate``: worst Dice first, every metric."""
    from ..metrics.specs import METRICS

    widths = {name: max(8, len(spec.short) + 2) for name, spec in METRICS.items()}
    head = "".join(f"{spec.short:>{widths[n]}}" for n, spec in METRICS.items())
    lines = [f"{'structure':<32}{'n':>4}{head}{'missed':>8}{'misloc.':>8}"]
    for row in scored.sort_values("dice_mean").to_dict("records"):
        cells = ""
        for name, spec in METRICS.items():
            value = row[f"{name}_mean"]
            # a distance is inf where a structure was missed; its mean is over finite values
            text = "inf" if spec.value_range is None and math.isnan(value) else f"{value:.3f}"
            cells += f"{text:>{widths[name]}}"
        lines.append(
            f"{row['structure']:<32}{row['dice_n']:>4}{cells}{row['missed']:>8}"
            f"{row.get('mislocated', 0):>8}"
        )
    return "\n".join(lines)


def run_export(args) -> int:
    import numpy as np

    from ..data.volume import load_label_volume
    from ..errors import ConfigError
    from ..evaluation.prediction_labels import prediction_names
    from ..fileio import exists, is_dir
    from ..inference.label_files import (
        label_file_paths,
        write_label_files,
    )
    from ..labels import names_of

    if exists(args.out) and not is_dir(args.out):
        raise ConfigError(f"--out {args.out} is a file; give a folder for the label files")
    if (named := prediction_names(args.labels)).renumbered:  # values of its own, named
        raise ConfigError(f"{named.source} names the values of {args.labels} otherwise than "
                          "TotalSegmentator v2, whose names ctseg export writes")  # fmt: skip
    listed = named.scored is not None and named.source not in label_file_paths(args.labels)
    if listed and args.all:  # a model's own list (dataset.json, ...): it labels those alone
        raise ConfigError(f"{named.source} lists what its model labels; leave --all out")
    existing = [p for p in label_file_paths(args.out / args.labels.name) if exists(p)]
    if existing and not args.overwrite:  # ctseg predict's name merges and what a model learns
        raise ConfigError(f"{existing[0]} exists; add --overwrite to replace it")
    values = None
    if not args.all:
        labels = load_label_volume(args.labels)
        values = [int(v) for v in np.flatnonzero(np.bincount(labels.array.ravel())) if v > 0]
    # a merge its names name keeps its name (lungs, not its first lobe), and a list of what its
    # model learns (ctseg predict's, a dataset.json's) stays that list (evaluate scores by it)
    names = names_of(named.merges)
    learned = named.scored if not args.all else None
    if learned is not None:  # ctseg predict's label file: with what was found (the same)
        values = sorted(learned if listed else learned | set(values))
    paths = write_label_files(args.out / args.labels.name, values, names, learned is not None)
    if args.json:
        print(json.dumps({"label_files": [str(p) for p in paths], "labels": values}))
    else:
        listed = "all 117 structures" if values is None else f"{len(values)} structures"
        listed += ", those its model learns" if learned is not None else ""
        print(f"wrote {paths[0]} and {paths[1]} ({listed})")
    return 0


def run_stats(args) -> int:
    import numpy as np

    from ..data.volume import load_ct
    from ..errors import ConfigError
    from ..evaluation.prediction_labels import read_named_prediction
    from ..fileio import check_output
    from ..inference.files import refuse_assumed_voxel_size
    from ..labels import names_of
    from ..metrics.stats import volume_statistics

    if args.out:
        if args.out.suffix.lower() != ".csv":
            raise ConfigError(f"--out {args.out} must end with .csv (the table is CSV)")
        check_output(args.out, args.overwrite, [args.ct, args.labels])
    refuse_assumed_voxel_size(args.ct, "use a CT that does")
    ct = load_ct(args.ct, resample_uneven=args.resample_uneven)
    notes: list[str] = []  # no affine, another field of view, values it names otherwise
    labels, named = read_named_prediction(  # in v2 values, as any names that came with it say
        args.labels, ct.array.shape, ct.affine, ct.original_shape, ct.original_affine, notes,
        reference="CT",
    )  # fmt: skip
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    names = names_of(named.merges)  # a merged run's label file names the merge (ribs)
    table = volume_statistics(labels, ct.array, ct.spacing_mm, names)
    if np.isin(labels, (0, 1)).all() and len(table) and named.source is None:
        print(
            f"note: {args.labels} holds only 0 and 1, which a multilabel file reads as "
            "spleen (label 1); for one structure's mask use the dataset's multilabel file",
            file=sys.stderr,
        )
    if table.empty:
        print(f"note: {args.labels} labels no structure on this CT", file=sys.stderr)
    if args.out:
        from ..fileio import atomic_write_text

        atomic_write_text(args.out, table.to_csv(index=False))
    if args.json:
        print(json.dumps(_json_safe(table.to_dict(orient="records")), indent=2))
    elif not table.empty:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    return 0
