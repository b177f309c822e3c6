"""A dataset root in the TotalSegmentator layout: its subjects and their train/val/test split.

Layout: ``root/<id>/ct.nii.gz`` + ``root/<id>/segmentations/<structure>.nii.gz``, optionally
``root/meta.csv`` (';'-separated, UTF-8 with or without BOM, columns ``image_id`` and ``split``).
Nothing here writes into the dataset folder.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, DataError
from ..fileio import cannot_read, dangling_link, is_dir, is_file

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
CT_NAMES = ("ct.nii.gz", "ct.nii")
#: files of a dataset root that are not subjects (TotalSegmentator ships meta.csv and a README)
NOT_SUBJECTS = ("meta.csv", "README.md", "README.txt", "LICENSE", "LICENSE.txt")


#: the fix for a link that leads nowhere (``fileio.dangling_link``)
LINK_FIX = "restore what it points to (a disk not mounted?) or remove the link"


def find_ct(subject_dir: Path, strict: bool = False) -> Path | None:
    """The subject's CT file (ct.nii.gz or ct.nii), or None. ``strict``: DataError when both
    are there (which is the CT? a guess would train on one and let edits to the other pass)."""
    found = [subject_dir / name for name in CT_NAMES if is_file(subject_dir / name)]
    if strict and len(found) > 1:
        raise DataError(
            f"{subject_dir.name}: {subject_dir} holds both {found[0].name} and {found[1].name}; "
            "keep one CT"
        )
    return found[0] if found else None


def read_meta_csv(path: Path) -> dict[str, str]:
    """Map image_id -> split from a meta.csv (';' separator, BOM tolerated, split lower-cased).

    Raises DataError when the columns are missing, a split value is not train/val/test, or a
    subject is listed in two splits (the same row twice is fine). A header alone gives {}.
    """
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # Excel's "CSV" on Windows: cp1252
        raise DataError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at {exc.start}); "
            "save it as UTF-8 (Excel: CSV UTF-8)"
        ) from None
    except OSError as exc:  # a seeded split instead would move subjects between splits
        raise DataError(cannot_read(str(path), exc, path)) from None
    sample = text.splitlines()[0] if text else ""
    delimiter = ";" if ";" in sample else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = [c for c in reader.fieldnames or [] if c is not None]
    if "image_id" not in columns or "split" not in columns:
        raise DataError(
            f"{path} has no 'image_id' and 'split' columns (found {columns}); "
            "write a ';'-separated meta.csv with those columns or remove it"
        )
    rows = list(reader)  # none (a header only): every subject gets a seeded split
    splits: dict[str, str] = {}
    for row in rows:
        image_id, split = (row["image_id"] or "").strip(), (row["split"] or "").strip().lower()
        if not image_id:
            continue
        if split not in SPLITS:
            raise DataError(
                f"{path}: subject {image_id} has split {split!r}; use one of train, val, test"
            )
        if splits.get(image_id, split) != split:  # which one holds? a guess could leak a subject
            raise DataError(
                f"{path} lists subject {image_id} in both {splits[image_id]} and {split}; "
                "keep one row per subject"
            )
        splits[image_id] = split
    return splits


def seeded_split(
    subject_ids: list[str], seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15)
) -> dict[str, str]:
    """Assign whole subjects to train/val/test by a stable hash of (seed, id).

    The subjects are ordered by that hash and cut by count (70 / 15 / 15 %), so the same
    subjects always get the same splits, but adding subjects moves the cuts: a few old ones
    can cross from train to val or from val to test (an older model's test subject may have
    been a newer one's validation subject). Write a meta.csv to keep splits fixed as a dataset
    grows. With 3+ subjects, val and test get at least one.
    """

    def rank(sid: str) -> float:
        digest = hashlib.sha256(f"{seed}:{sid}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    ordered = sorted(subject_ids, key=rank)
    n = len(ordered)
    n_train = round(n * fractions[0])
    n_val = round(n * fractions[1])
    if n >= 3:
        n_val = max(1, n_val)
        n_train = min(n_train, n - n_val - 1)
    splits = {}
    for i, sid in enumerate(ordered):
        splits[sid] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return splits


@dataclass
class DatasetIndex:
    """The subjects of a dataset root and their splits.

    ``problems`` holds one-line messages about things that were skipped (never raised), so a
    dataset with a few bad subjects stays usable.
    """

    root: Path
    subjects: list[str]
    splits: dict[str, str]
    split_source: str  # "meta.csv" or "seeded"
    problems: list[str] = field(default_factory=list)

    def subject_dir(self, subject_id: str) -> Path:
        return self.root / subject_id

    def subjects_in(self, split: str) -> list[str]:
        """Subject ids of one split ('train', 'val', 'test' or 'all'), sorted."""
        if split == "all":
            return list(self.subjects)
        return [s for s in self.subjects if self.splits.get(s) == split]

    def counts(self) -> dict[str, int]:
        return {split: len(self.subjects_in(split)) for split in SPLITS}


def open_dataset(root: str | Path, seed: int = 0) -> DatasetIndex:
    """Index a dataset root: find subjects (folders holding ct.nii.gz) and their splits.

    Raises DataError when the root does not exist or holds no subject. Subjects missing from
    meta.csv fall back to the seeded split; meta.csv ids without a folder are reported.
    """
    root = Path(root).expanduser()
    try:
        children = _root_entries(root)
    except OSError as exc:  # no read permission, a stale mount, a name the filesystem refuses
        raise DataError(cannot_read(f"dataset folder {root}", exc, root)) from None
    problems: list[str] = []
    subjects = []
    for child in children:
        if child.name.startswith(".") or child.name in NOT_SUBJECTS:
            continue
        try:
            skipped = _why_skipped(child)
            unannotated = skipped is None and not is_dir(child / "segmentations")
        except OSError as exc:  # one folder this user cannot read: the others stay usable
            skipped = _unreadable(child, exc)
        if skipped is not None:
            problems.append(skipped)
            continue
        if unannotated:
            problems.append(
                f"{child.name}: no segmentations/ folder; usable for prediction only, "
                "add <id>/segmentations/<structure>.nii.gz to train or evaluate"
            )
        subjects.append(child.name)
    if not subjects:
        raise DataError(
            f"{root} holds no subject folder with a ct.nii.gz; expected the TotalSegmentator "
            "layout <id>/ct.nii.gz + <id>/segmentations/, or run `ctseg demo-data`"
        )
    meta = root / "meta.csv"
    if why := dangling_link(meta):  # a seeded split instead would move subjects between splits
        raise DataError(f"{meta} is {why}, so the splits cannot be read; {LINK_FIX}")
    split_source = "seeded"
    splits = seeded_split(subjects, seed)
    if is_file(meta):
        from_meta = read_meta_csv(meta)
        unknown = sorted(set(from_meta) - set(subjects))
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            problems.append(
                f"meta.csv lists {len(unknown)} ids without a subject folder ({shown}); they are ignored"
            )
        missing = [s for s in subjects if s not in from_meta]
        if not from_meta:
            problems.append("meta.csv lists no subject (a header only); all get a seeded split")
        elif len(missing) == len(subjects):
            problems.append("meta.csv has a split for none of the subjects; all get a seeded split")
        elif missing:
            problems.append(
                f"meta.csv has no split for {len(missing)} subjects; they get a seeded split"
            )
        if len(missing) < len(subjects):  # else every split is the seeded one
            splits.update({s: from_meta[s] for s in subjects if s in from_meta})
            split_source = "meta.csv"
    for problem in problems:
        log.warning("%s: %s", root, problem)
    return DatasetIndex(root, subjects, splits, split_source, problems)


def check_splits(data_root: str, train_split: str, val_split: str, seed: int = 0) -> None:
    """ConfigError unless the dataset at ``data_root`` holds subjects in both splits (splits
    sharing subjects are said when a run starts: ``training.checks.split_overlap_warning``)."""
    if not data_root:
        raise ConfigError(
            "no dataset given; set data_root (--data) to a TotalSegmentator-layout folder"
        )
    index = open_dataset(Path(data_root), seed=seed)
    for split in (train_split, val_split):
        if not index.subjects_in(split):
            fix = (
                "fix the split column of meta.csv or add subjects"
                if index.split_source == "meta.csv"
                else "add subjects (the seeded split needs 3 or more), or a meta.csv with a "
                "split column"
            )
            raise ConfigError(
                f"split {split!r} of {index.root} holds no subject (splits: {index.counts()}); "
                + fix
            )


def _root_entries(root: Path) -> list[Path]:
    """The entries of a dataset folder, sorted; DataError when ``root`` is no such folder.
    Raises OSError when it cannot be looked into."""
    if is_file(root):
        raise DataError(
            f"{root} is a file; give the dataset folder, whose subject folders hold ct.nii.gz"
        )
    if find_ct(root) is not None:
        raise DataError(f"{root} is one subject; give the dataset folder above it ({root.parent})")
    if why := dangling_link(root):
        raise DataError(f"dataset folder {root} is {why}; {LINK_FIX}")
    if not is_dir(root):
        raise DataError(
            f"dataset folder {root} does not exist; give a folder of subjects "
            "(<id>/ct.nii.gz + <id>/segmentations/) or run `ctseg demo-data`"
        )
    return sorted(root.iterdir())


def _unreadable(child: Path, exc: OSError) -> str:
    """The problem line of a subject folder, or a file in it, that cannot be read: the file
    named (and a link's target), the fix for its reason."""
    failed = Path(exc.filename) if isinstance(exc.filename, str) else child
    if not os.access(child, os.R_OK | os.X_OK):  # the folder is closed, not one file in it
        failed = child
    shown = "it" if failed == child else f"its {failed.name}"
    text = cannot_read(shown, exc, failed)
    if failed == child:  # a folder of its own, not a subject: it may also go
        text += " or move it out of the dataset folder"
    return f"{child.name}: skipped, {text}"


def _why_skipped(child: Path) -> str | None:
    """What keeps an entry of a dataset folder from being a subject, said for ``problems``
    (one line: what was skipped and the fix); None for a subject (with or without
    segmentations/). Raises OSError when the entry cannot be looked into (no permission, a
    name the filesystem refuses)."""
    if why := dangling_link(child):
        return f"{child.name}: skipped, {why}; {LINK_FIX}"
    if not is_dir(child):
        return (
            f"{child.name}: skipped, a file where a subject folder is expected "
            "(<id>/ct.nii.gz); move it out of the dataset folder"
        )
    # a CT behind such a link is said even beside another CT (which would be read silently)
    broken = next(((n, w) for n in CT_NAMES if (w := dangling_link(child / n))), None)
    if broken:
        return f"{child.name}: skipped, its {broken[0]} is {broken[1]}; {LINK_FIX}"
    if find_ct(child) is None:
        if any(child.glob("*.nii*")) or is_dir(child / "segmentations"):
            return f"{child.name}: no ct.nii.gz; add the CT or remove the folder"
        if not any(p for p in child.iterdir() if not p.name.startswith(".")):
            return f"{child.name}: skipped, an empty folder; add <id>/ct.nii.gz or remove it"
        return (
            f"{child.name}: skipped, a folder without ct.nii.gz or segmentations/; "
            "add the CT or move the folder out of the dataset folder"
        )
    if why := dangling_link(child / "segmentations"):  # not "unannotated": skipped
        return f"{child.name}: skipped, its segmentations/ is {why}; {LINK_FIX}"
    return None
