"""`ctseg compare A B`: two evaluation folders side by side, structure by structure."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="two evaluations side by side: per-structure B - A and paired tests",
        description="Compare evaluation B with evaluation A (folders written by ctseg evaluate): "
        "per metric and structure the means, the difference B - A, whether B is better or "
        "worse, and a Wilcoxon signed-rank p-value over the subjects scored in both.",
        epilog="exit status: 0 written; 2 bad input (a folder without the split's table, no "
        "subject x structure scored in both)",
    )  # fmt: skip
    p.add_argument("a", type=Path, help="evaluation folder A, the baseline")
    p.add_argument("b", type=Path, help="evaluation folder B, compared with A")
    p.add_argument("--split", default="test", help="the split both evaluated (default test)")
    p.add_argument(
        "--out", type=Path, default=None,
        help="folder for comparison_<split>.csv and source_<split>.json (default "
        "<checkpoints>/comparisons/<A>-vs-<B>-<hash>)",
    )  # fmt: skip
    p.add_argument(
        "--metric", action="append", default=None,
        help="print only this metric (repeatable; the CSV holds every metric)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=run_compare)


def run_compare(args) -> int:
    from .. import settings
    from ..errors import ConfigError
    from ..evaluation.compare import compare_evaluations, comparison_dir
    from ..metrics.specs import METRICS
    from .cmd_predict import _json_safe

    unknown = [m for m in args.metric or [] if m not in METRICS]
    if unknown:
        raise ConfigError(
            f"--metric {unknown[0]} is not a metric; choose from {', '.join(METRICS)}"
        )
    out = args.out or comparison_dir(settings.checkpoints_root(), args.a, args.b)
    result = compare_evaluations(args.a, args.b, args.split, out)
    if args.json:
        rows = _json_safe(result.table.to_dict(orient="records"))
        print(json.dumps({"csv": str(result.csv), "notes": result.warnings, "rows": rows}))
        return 0
    for note in result.warnings:
        print(f"note: {note}", file=sys.stderr)
    table = result.table
    for metric in args.metric or list(METRICS):
        rows = table[table["metric"] == metric]
        if len(rows):
            print(_metric_block(metric, rows))
    print(f"A: {args.a}\nB: {args.b}\nwrote {result.csv}")
    return 0


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.3f}"


def _metric_block(metric: str, rows) -> str:
    """One metric's lines: a header, the overall row, then the structures (B's gains first)."""
    from ..metrics.specs import METRICS

    spec = METRICS[metric]
    direction = "higher" if spec.higher_is_better else "lower"
    distance = spec.value_range is None  # may be inf where missed: those pairs are counted
    lines = [
        f"\n{spec.title}: B - A per structure ({direction} is better)",
        f"{'structure':<32}{'pairs':>6}{'A':>9}{'B':>9}{'B - A':>9}  {'B is':<7}"
        + (f"{'missed A/B':>11}" if distance else "")
        + f"{'p':>8}",
    ]
    for row in rows.to_dict("records"):
        p = row["p_value"]
        missed = f"{row['missed_a']}/{row['missed_b']}" if distance else ""
        lines.append(
            f"{row['structure']:<32}{row['pairs']:>6}{_number(row['mean_a']):>9}"
            f"{_number(row['mean_b']):>9}{_number(row['difference']):>9}  {row['verdict']:<7}"
            + (f"{missed:>11}" if distance else "")
            + (f"{p:>8.4f}" if not math.isnan(p) else f"{'-':>8}")
            + (f" ({row['p_note']})" if row["p_note"] else "")
        )
    return "\n".join(lines)
