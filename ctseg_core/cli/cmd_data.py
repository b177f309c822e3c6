"""Data commands: info, demo-data, prepare."""

from __future__ import annotations

import json
from pathlib import Path

from .progress import tqdm_callback


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="describe a dataset: subjects, splits, grids, structures, problems"
    )
    p.add_argument(
        "--data", required=True, type=Path, help="dataset root (TotalSegmentator layout)"
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="cache folder (default $CTSEG_CACHE or the user cache dir)",
    )
    p.add_argument("--workers", type=int, default=None, help="parallel subjects (default: cores)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_info)

    p = subparsers.add_parser(
        "demo-data", help="write the synthetic phantom dataset (TotalSegmentator layout)"
    )
    p.add_argument(
        "--out", required=True, type=Path,
        help="folder to create: absent, empty, or an earlier phantom of the same subjects",
    )  # fmt: skip
    p.add_argument(
        "--replace", action="store_true",
        help="regenerate an earlier phantom at --out with other --subjects/--seed/--size",
    )  # fmt: skip
    p.add_argument("--subjects", type=int, default=12, help="number of subjects (default 12)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--size",
        type=int,
        nargs=3,
        default=(160, 160, 64),
        metavar=("X", "Y", "Z"),
        help="nominal voxel grid",
    )
    p.set_defaults(func=run_demo_data)

    p = subparsers.add_parser(
        "prepare", help="build the preprocessing cache (int16 CT + uint8 labels, memory-mapped)"
    )
    p.add_argument("--data", required=True, type=Path, help="dataset root")
    p.add_argument("--cache", type=Path, default=None, help="cache folder")
    p.add_argument("--workers", type=int, default=None, help="parallel subjects (default: cores)")
    p.add_argument("--json", action="store_true", help="print built/reused/failed as JSON")
    p.set_defaults(func=run_prepare)


def run_info(args) -> int:
    from ..data.summary import summarize_dataset

    progress, bar = tqdm_callback("reading")
    try:
        summary = summarize_dataset(args.data, args.cache, workers=args.workers, progress=progress)
    finally:
        bar.close()
    status = 1 if summary["failed"] else 0  # with --json too: a script sees the failure
    if args.json:
        print(json.dumps(summary, indent=2))
        return status
    source = {"seeded": "a seeded split by subject"}.get(summary["split_source"], "meta.csv")
    print(f"dataset {summary['root']}  (splits from {source})")
    print("subjects: " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items()))
    print(
        f"{'id':<10}{'split':<7}{'shape (x y z)':<18}{'spacing mm':<22}{'orient':<8}{'present':>8}{'not annot.':>11}"
    )
    for s in summary["subjects"]:
        shape = " ".join(str(v) for v in s["shape_xyz"])
        spacing = " ".join(f"{v:.2f}" for v in s["spacing_mm"])
        print(
            f"{s['id']:<10}{s['split'] or '-':<7}{shape:<18}{spacing:<22}{s['orientation']:<8}{s['present']:>8}{s['not_annotated']:>11}"
        )
    covered = {k: v for k, v in summary["coverage"].items() if v}
    print(
        f"structures present in at least one subject: {len(covered)} of {len(summary['coverage'])}"
    )
    for name, n in sorted(covered.items(), key=lambda kv: -kv[1]):
        total = sum(s["voxel_counts"].get(name, 0) for s in summary["subjects"])
        print(f"  {name:<32}{n:>4} subjects {total:>12} voxels")
    if summary["problems"]:
        print(f"problems ({len(summary['problems'])}):")
        for problem in summary["problems"]:
            print(f"  - {problem}")
    return status


def run_demo_data(args) -> int:
    from ..data.phantom.dataset import make_phantom_dataset

    progress, bar = tqdm_callback("phantom")
    try:
        ids = make_phantom_dataset(
            args.out,
            n_subjects=args.subjects,
            seed=args.seed,
            shape=tuple(args.size),
            progress=progress,
            replace=args.replace,
        )
    finally:
        bar.close()
    print(f"wrote {len(ids)} phantom subjects to {args.out}")
    return 0


def run_prepare(args) -> int:
    from ..data.cache import default_cache_dir
    from ..data.prepare import prepare_dataset

    progress, bar = tqdm_callback("prepare")
    try:
        report = prepare_dataset(args.data, args.cache, workers=args.workers, progress=progress)
    finally:
        bar.close()
    if args.json:
        print(
            json.dumps(
                {
                    "built": report.built,
                    "reused": report.reused,
                    "failed": report.failed,
                    "cache": str(args.cache or default_cache_dir()),
                }
            )
        )
    else:
        print(
            f"prepared {len(report.built)} subjects, {len(report.reused)} already cached, {len(report.failed)} failed"
        )
        for error in report.failed.values():
            print(f"  - {error}")
    return 1 if report.failed else 0
