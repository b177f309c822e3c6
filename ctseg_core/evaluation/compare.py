"""Two evaluations side by side: per-structure differences (B - A) and paired tests over subjects.

The inputs are subject x structure tables (``evaluation_results_<split>.csv``, columns
``tables.RESULT_COLUMNS``); every metric of ``metrics.specs.METRICS`` both tables hold is
compared. A row pairs with the other table's row of the same (subject, structure) when both are
scored: NaN (reference absent, not annotated) pairs with nothing. A distance may be inf (the
structure was missed): such a pair is left out of the means and the mean difference and counted
in ``missed_a`` / ``missed_b``; the signed-rank test keeps it, by rank (inf - finite is a
difference larger than any finite one; both inf is a tie, difference 0). Where A and B missed
as often, the verdict follows the mean difference; where not, the direction of the signed-rank
sum over its pairs, misses included (a structure's: its own test's direction). The row over
all structures holds the mean of the structures' means, and its test pairs the subjects' means
(a structure few subjects have weighs less there). ``p_note`` says why a p-value is NaN, or,
beside a p-value, that the test's signed ranks lean against the verdict.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from ..fileio import atomic_write_json, atomic_write_text, exists, is_dir, is_file
from ..labels import group_of, is_structure
from ..metrics.specs import METRICS
from ..runs.run_folder import RESERVED_NAMES
from .paired_test import rank_direction, rank_sums, signed_rank_p
from .paths import changed_checkpoints

log = logging.getLogger(__name__)

#: the ``structure`` of each metric's row over all structures
OVERALL = "(all structures)"
#: columns of ``comparison_<split>.csv``: one row per metric and structure, B compared with A
COMPARISON_COLUMNS = (
    "metric", "unit", "structure", "group", "pairs", "mean_a", "mean_b", "difference",
    "verdict", "p_value", "p_note", "missed_a", "missed_b",
)  # fmt: skip
KEY = ["subject", "structure"]


def _leaning_note(p: float, note: str, differences: np.ndarray, verdict: str,
                  higher_is_better: bool, unit: str) -> str:  # fmt: skip
    """``note``, or where the test's signed ranks lean against the verdict (a finite ``p``;
    a verdict by the mean difference of the pairs both found, or by the mean of the
    structures' means, can), what they lean to: said beside p, which tests those ranks."""
    above, below = rank_sums(differences)
    if not np.isfinite(p) or verdict not in ("better", "worse") or above == below:
        return note
    if ((above > below) == higher_is_better) == (verdict == "better"):
        return note
    return (
        f"the signed-rank test leans the other way: the ranks of the {unit} where B - A > 0 "
        f"sum to {above:g}, where B - A < 0 to {below:g}"
    )


def _verdict(difference: float, higher_is_better: bool, missed_a: int, missed_b: int,
             ranked: np.ndarray) -> str:  # fmt: skip
    """B against A: "better", "worse" or "same". Where A and B missed as often, by the mean
    difference (of the pairs both found) in the metric's direction. Where they did not, a miss
    being farther than any distance: by the signed-rank direction of the pairs' differences
    ``ranked`` (misses included), and where that ties, by the number missed."""
    if missed_a != missed_b:
        direction = rank_direction(ranked)
        if direction == 0:  # the ranks tie: fewer misses is better
            return "better" if missed_b < missed_a else "worse"
        return "better" if (direction > 0) == higher_is_better else "worse"
    if np.isfinite(difference) and difference != 0:
        return "better" if (difference > 0) == higher_is_better else "worse"
    return "same" if difference == 0 else ""


def _paired(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Rows (subject, structure, a, b) of the pairs scored (not NaN) in both tables."""
    left = a.loc[a[metric].notna(), [*KEY, metric]].rename(columns={metric: "a"})
    right = b.loc[b[metric].notna(), [*KEY, metric]].rename(columns={metric: "b"})
    return left.merge(right, on=KEY, how="inner")


def _mean(values: pd.Series) -> float:
    """The mean, its sum correctly rounded (``math.fsum``): the same values in any order give
    the same mean, so two tables of equal values compare "same"; NaN for none."""
    return math.fsum(values) / len(values) if len(values) else np.nan


def _metric_rows(pairs: pd.DataFrame, metric: str) -> list[dict]:
    """The rows of one metric: its overall row, then one per structure, B's best gain first.

    Differences are taken to a tick (1e-3 mm for distances, 1e-9 for scores) before they are
    ranked or judged: float32 distances on a voxel grid that are equal in voxel steps differ in
    their last bits, which would rank equal differences apart (another p-value) and call equal
    means better or worse."""
    spec = METRICS[metric]
    sign = 1.0 if spec.higher_is_better else -1.0
    tick = 1e-3 if spec.unit == "mm" else 1e-9

    def ticked(d):  # inf and NaN kept
        with np.errstate(invalid="ignore"):
            return np.round(np.asarray(d, dtype=float) / tick) * tick

    va, vb = pairs["a"].to_numpy(float), pairs["b"].to_numpy(float)
    with np.errstate(invalid="ignore"):
        pairs = pairs.assign(d=ticked(vb - va), finite=np.isfinite(va) & np.isfinite(vb))
    rows = []
    for structure, part in pairs.groupby("structure", sort=False):
        done = part[part["finite"]]
        mean_a, mean_b = _mean(done["a"]), _mean(done["b"])
        difference = float(ticked(mean_b - mean_a))
        missed_a, missed_b = int(np.isinf(part["a"]).sum()), int(np.isinf(part["b"]).sum())
        d = part["d"].to_numpy()
        p, note = signed_rank_p(d)
        verdict = _verdict(difference, spec.higher_is_better, missed_a, missed_b, d)
        rows.append({
            "metric": metric, "unit": spec.unit, "structure": structure,
            "group": group_of(structure) if is_structure(structure) else "", "pairs": len(part), "mean_a": mean_a,
            "mean_b": mean_b, "difference": difference, "verdict": verdict,
            "p_value": p, "p_note": _leaning_note(p, note, d, verdict, spec.higher_is_better, "pairs"),
            "missed_a": missed_a, "missed_b": missed_b,
        })  # fmt: skip
    rows.sort(key=lambda r: -sign * r["difference"] if np.isfinite(r["difference"]) else np.inf)
    # over all structures: the mean of the structures' means; the test pairs each subject's
    # mean over its structures scored (finite) in both
    per_subject = pairs[pairs["finite"]].groupby("subject", sort=False)[["a", "b"]].agg(_mean)
    by_subject = ticked(per_subject["b"] - per_subject["a"])
    p, note = signed_rank_p(by_subject, "subjects")
    table = pd.DataFrame(rows)
    mean_a, mean_b = _mean(table["mean_a"].dropna()), _mean(table["mean_b"].dropna())
    difference = float(ticked(mean_b - mean_a))
    missed_a, missed_b = int(table["missed_a"].sum()), int(table["missed_b"].sum())
    verdict = _verdict(difference, spec.higher_is_better, missed_a, missed_b,
                       pairs["d"].to_numpy())  # fmt: skip
    overall = {
        "metric": metric, "unit": spec.unit, "structure": OVERALL, "group": "",
        "pairs": len(per_subject), "mean_a": mean_a, "mean_b": mean_b,
        "difference": difference,
        "verdict": verdict, "p_value": p,
        # the mean of the structures' means weighs a structure few subjects have as much as
        # one all have, the test weighs the subjects alike: they can lean apart
        "p_note": _leaning_note(p, note, by_subject, verdict, spec.higher_is_better,
                                "subjects' means"),
        "missed_a": missed_a, "missed_b": missed_b,
    }  # fmt: skip
    return [overall, *rows]


def _check_table(results: pd.DataFrame, name: str) -> list[str]:
    """The metrics ``results`` holds; DataError for missing keys or a repeated pair."""
    missing = [c for c in KEY if c not in results.columns]
    if missing:
        raise DataError(f"{name} has no column {missing[0]!r}; give an evaluation_results table")
    repeated = results[results.duplicated(KEY)]
    if len(repeated):
        subject, structure = repeated.iloc[0][KEY]
        raise DataError(
            f"{name} scores ({subject}, {structure}) twice; write it again with ctseg evaluate"
        )
    return [m for m in METRICS if m in results.columns]


def compare_results(
    a: pd.DataFrame, b: pd.DataFrame, names: Sequence[str] = ("A", "B")
) -> pd.DataFrame:
    """Compare two subject x structure tables, B against A, for every metric both hold.

    Returns ``COMPARISON_COLUMNS``, per metric (in ``METRICS`` order) an ``OVERALL`` row, then
    one row per structure with a pair, B's largest gain first (in the metric's direction;
    NaN differences last). pairs: subjects paired for the structure (for ``OVERALL``: subjects
    with a finite pair); mean_a, mean_b, difference (mean_b - mean_a): over finite pairs (for
    ``OVERALL``: means of the structures' means); verdict: B "better", "worse" or "same";
    p_value: Wilcoxon signed-rank over the pairs (``OVERALL``: over the subjects' means),
    NaN with the reason in p_note (beside a p-value, p_note says where the test leans against
    the verdict); missed_*: pairs with a distance of inf.
    ``attrs``: "subjects" (paired), "only_a", "only_b" (subjects in one table only),
    "structures_only_a", "structures_only_b" (structures scored in one table only: a merged
    run's "lungs" against a model's lobes, a structure one model does not predict).
    DataError when no (subject, structure) is scored in both.
    """
    held_b = _check_table(b, names[1])
    metrics = [m for m in _check_table(a, names[0]) if m in held_b]
    if not metrics:
        raise DataError(f"{names[0]} and {names[1]} hold no metric column in common")
    a, b = (t.assign(**{m: pd.to_numeric(t[m], errors="coerce") for m in metrics}) for t in (a, b))
    rows: list[dict] = []
    for metric in metrics:
        pairs = _paired(a, b, metric)
        if len(pairs):
            rows += _metric_rows(pairs, metric)
    if not rows:
        raise DataError(
            f"no subject x structure is scored in both {names[0]} ({a['subject'].nunique()} "
            f"subjects) and {names[1]} ({b['subject'].nunique()} subjects); compare evaluations "
            "of the same subjects and structures"
        )
    table = pd.DataFrame(rows, columns=list(COMPARISON_COLUMNS))
    subjects_a, subjects_b = set(a["subject"]), set(b["subject"])
    table.attrs["subjects"] = sorted(subjects_a & subjects_b)
    table.attrs["only_a"] = sorted(subjects_a - subjects_b)
    table.attrs["only_b"] = sorted(subjects_b - subjects_a)
    scored_a, scored_b = (set(t.loc[t[metrics].notna().any(axis=1), "structure"]) for t in (a, b))
    table.attrs["structures_only_a"] = sorted(scored_a - scored_b)
    table.attrs["structures_only_b"] = sorted(scored_b - scored_a)
    return table


# ---------------------------------------------------------------- evaluation folders


@dataclass(frozen=True)
class EvaluationFolder:
    """An evaluation on disk: its label (path under the checkpoints root), folder and splits."""

    label: str
    path: Path
    splits: tuple[str, ...]


def evaluation_splits(folder: str | Path) -> tuple[str, ...]:
    """The splits of which ``folder`` holds an ``evaluation_results_<split>.csv``."""
    prefix = "evaluation_results_"
    names = sorted(p.name for p in Path(folder).glob(f"{prefix}*.csv") if is_file(p))
    return tuple(n[len(prefix) : -len(".csv")] for n in names)


def list_evaluations(checkpoints_root: str | Path) -> list[EvaluationFolder]:
    """Every evaluation under the root: run folders' ``evaluation*/`` and ``evaluations/*/``
    (those holding at least one results table), by label. Folders this user may not look into
    are left out (a private run in a shared folder), and all of a root it may not read (the
    pages say why: ``runs.listing.root_problem``)."""
    root = Path(checkpoints_root)
    try:
        entries = list(root.iterdir()) if is_dir(root) else []
    except OSError:
        return []
    found = []
    globs = [(e, "evaluation*") for e in entries if e.name not in RESERVED_NAMES]
    for folder, pattern in [*globs, (root / "evaluations", "*")]:
        try:  # one this user may not read (3.10-3.12's glob raises for a link into one)
            for path in (p for p in folder.glob(pattern) if is_dir(p)):
                if splits := evaluation_splits(path):
                    label = path.relative_to(root).as_posix()
                    found.append(EvaluationFolder(label, path, splits))
        except OSError:
            continue
    return sorted(found, key=lambda e: e.label)


def _short_name(folder: Path) -> str:
    """A folder's name in a comparison's: the run for ``<run>/evaluation``, ``<run>_<stem>``
    for ``<run>/evaluation_<stem>``, else the folder's own name (at most 60 characters)."""
    if folder.name == "evaluation":
        name = folder.parent.name
    elif folder.name.startswith("evaluation_"):
        name = f"{folder.parent.name}_{folder.name[len('evaluation_') :]}"
    else:
        name = folder.name
    return name[:60]


def comparison_dir(root: str | Path, folder_a: str | Path, folder_b: str | Path) -> Path:
    """``<root>/comparisons/<A>-vs-<B>-<h>``: ``<h>``, 8 hex digits of both resolved paths in
    order (B against A is another comparison than A against B)."""
    a, b = Path(folder_a).resolve(), Path(folder_b).resolve()
    digest = hashlib.sha1(f"{a}\n{b}".encode()).hexdigest()[:8]
    return Path(root) / "comparisons" / f"{_short_name(a)}-vs-{_short_name(b)}-{digest}"


def read_results(folder: str | Path, split: str) -> pd.DataFrame:
    """``folder/evaluation_results_<split>.csv`` (ids and names as text; inf kept).

    DataError naming the folder and the splits it does hold when the table is missing.
    """
    folder = Path(folder)
    path = folder / f"evaluation_results_{split}.csv"
    if not is_dir(folder):
        raise DataError(f"{folder} is not a folder; give an evaluation folder (ctseg evaluate)")
    if not is_file(path):
        held = evaluation_splits(folder)
        inside = [
            str(e) for e in sorted(folder.glob("evaluation*")) if is_dir(e) and evaluation_splits(e)
        ]
        if held:
            fix = (
                f"it holds split(s) {', '.join(held)}: choose one with --split, or evaluate {split}"
            )
        elif inside:  # a run folder: its checkpoints' evaluations lie in it
            fix = f"give an evaluation folder in it: {', '.join(inside)}"
        elif is_file(folder / "config.json"):
            fix = (
                "it is a run folder: evaluate its checkpoint first (ctseg evaluate --checkpoint "
                f"{folder / 'best.pth'})"
            )
        else:
            fix = "it holds no evaluation_results_<split>.csv: give a folder ctseg evaluate wrote"
        raise DataError(f"{path.name} is not in {folder}; {fix}")
    try:
        # only an empty cell is missing: a subject named "NA" stays a name; inf stays inf
        return pd.read_csv(
            path, dtype={"subject": str, "structure": str, "group": str},
            keep_default_na=False, na_values=[""],
        )  # fmt: skip
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read as CSV ({exc}); evaluate again") from exc


def _source(folder: Path, split: str) -> dict:
    """The evaluation's ``source_<split>.json``, or {} when there is none to read."""
    try:
        record = json.loads((folder / f"source_{split}.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


@dataclass
class Comparison:
    """A written comparison: the table (``COMPARISON_COLUMNS``), where it went, and notes."""

    table: pd.DataFrame
    out_dir: Path
    csv: Path
    warnings: list[str] = field(default_factory=list)


def compare_evaluations(
    folder_a: str | Path, folder_b: str | Path, split: str, out_dir: str | Path
) -> Comparison:
    """Compare the ``split`` tables of two evaluation folders (B against A) and write
    ``out_dir/comparison_<split>.csv`` and ``out_dir/source_<split>.json`` (both inputs, the
    subjects paired and unpaired, notes), atomically.

    Notes (logged, returned, recorded): the two evaluations scored different datasets or used
    another surface tolerance, some subjects are in one only, or an evaluation recorded
    warnings of its own (its ``source_<split>.json`` ``notes``: the first, and how many more).
    ConfigError for the same folder twice, or an ``out_dir`` that is a file or holds an
    evaluation (A or B itself: its record would be replaced); DataError for a missing or
    unreadable table or no pair in common.
    """
    from ..runs.run_folder import utc_now

    a, b, out_dir = Path(folder_a), Path(folder_b), Path(out_dir)
    if a.resolve() == b.resolve():
        raise ConfigError(f"A and B are the same evaluation ({a}); choose two different ones")
    if exists(out_dir) and not is_dir(out_dir):
        raise ConfigError(f"--out {out_dir} is a file; give a folder for the comparison")
    held = sorted(out_dir.glob("evaluation_results_*.csv")) if is_dir(out_dir) else []
    if held:  # its source_<split>.json would be replaced: an evaluation's record, A's or B's
        raise ConfigError(
            f"--out {out_dir} holds an evaluation ({held[0].name}); give another folder for "
            "the comparison"
        )
    table = compare_results(read_results(a, split), read_results(b, split), (str(a), str(b)))
    source_a, source_b = _source(a, split), _source(b, split)
    notes = []
    for key, what in (("dataset", "datasets"), ("tolerance_mm", "surface tolerances (mm)")):
        if key in source_a and key in source_b and source_a[key] != source_b[key]:
            notes.append(f"A and B scored different {what}: {source_a[key]} and {source_b[key]}")
    for what, key in (("subject", "only_{}"), ("structure", "structures_only_{}")):
        for side in ("A", "B"):
            only = table.attrs[key.format(side.lower())]
            if only:
                shown = ", ".join(only[:5]) + (" ..." if len(only) > 5 else "")
                many = len(only) > 1
                notes.append(
                    f"{len(only)} {what}{'s' if many else ''} "
                    f"{'scored ' if what == 'structure' else ''}only in {side} "
                    f"{'are' if many else 'is'} left out: {shown}"
                )
    for side, source, folder in (("A", source_a, a), ("B", source_b, b)):  # what each warned of
        notes += changed_checkpoints(source, side, folder)  # rewritten since it was scored
        warned = [str(n) for n in source.get("notes") or []]
        if warned:
            more = f" (and {len(warned) - 1} more)" if len(warned) > 1 else ""
            notes.append(f"{side}'s evaluation warned: {warned[0]}{more}")
    for note in notes:  # info, not warning: the caller shows them (the CLI prints "note:")
        log.info("comparison: %s", note)
    csv = out_dir / f"comparison_{split}.csv"
    atomic_write_text(csv, table.to_csv(index=False))
    record = {
        "a": str(a.resolve()), "b": str(b.resolve()), "split": split,
        "a_source": source_a, "b_source": source_b,
        "subjects": table.attrs["subjects"], "only_a": table.attrs["only_a"],
        "only_b": table.attrs["only_b"], "structures_only_a": table.attrs["structures_only_a"],
        "structures_only_b": table.attrs["structures_only_b"], "notes": notes, "written": utc_now(),
    }  # fmt: skip
    atomic_write_json(out_dir / f"source_{split}.json", record)
    return Comparison(table, out_dir, csv, notes)
