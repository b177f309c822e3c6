"""Label files that make a multilabel NIfTI open named and coloured in 3D Slicer and ITK-SNAP.

- 3D Slicer colour table (``.ctbl``): ``# comment`` lines, then one ``index name R G B A`` line
  per label (R, G, B, A integers 0..255; names without spaces).
- ITK-SNAP label description (``.txt``): ``IDX R G B A VIS MSH "LABEL"`` per label, with A the
  opacity 0..1 (float), VIS and MSH 0/1, the label quoted.

Both are written atomically and both have readers that parse them back, so a round trip can be
checked (and files edited by hand can be read). They also tell what a prediction's values mean
when it is scored later: a run learning a merge (``labels.MERGES``) writes the merge's value
under the merge's name (``merges_named``); ``ctseg predict`` lists the structures its model
learns and says so in a comment line (``LEARNED_NOTE``), so an evaluation of its predictions
scores those only (``learned_values``), as it does a checkpoint's.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..fileio import atomic_write_text, is_file
from ..labels import COLOURS, MERGES, NAME_OF, NUM_STRUCTURES, value_of

SLICER_SUFFIX = ".ctbl"
ITKSNAP_SUFFIX = "_itksnap_labels.txt"
#: the comment line of a label file that lists what a model learns (not merely what was found)
LEARNED_NOTE = "# Labels: the structures the model learns (ctseg predict)"


@dataclass(frozen=True)
class LabelEntry:
    """One label of a colour table: value, name, RGB 0..255, opacity 0..1, visible."""

    value: int
    name: str
    rgb: tuple[int, int, int]
    opacity: float = 1.0
    visible: bool = True


def label_entries(
    values: Iterable[int] | None = None, names: Mapping[int, str] | None = None
) -> list[LabelEntry]:
    """Entries for label values (default all 1..117) plus background 0 (transparent black).

    ``names``: value -> name where it is not the structure's (a merge's value, written by a run
    that learns it: ``labels.names_of``); such a value keeps its structure's colour. Raises
    DataError for a value outside 0..117.
    """
    wanted = range(1, NUM_STRUCTURES + 1) if values is None else sorted({int(v) for v in values})
    entries = [LabelEntry(0, "background", (0, 0, 0), 0.0, False)]
    for value in wanted:
        if value == 0:
            continue
        if not 1 <= value <= NUM_STRUCTURES:
            raise DataError(f"label value {value} is outside 1..{NUM_STRUCTURES}")
        rgb = tuple(int(c) for c in COLOURS[NAME_OF[value]])
        entries.append(LabelEntry(value, (names or NAME_OF).get(value, NAME_OF[value]), rgb))
    return entries


def slicer_ctbl_text(entries: list[LabelEntry], learned: bool = False) -> str:
    """Text of a 3D Slicer colour table for ``entries`` (``learned``: with ``LEARNED_NOTE``)."""
    lines = [
        "# Color table file written by ctseg (TotalSegmentator v2 label values)",
        f"# {len(entries)} values",
        *([LEARNED_NOTE] if learned else []),
    ]
    for e in entries:
        alpha = round(255 * e.opacity)
        lines.append(f"{e.value} {e.name} {e.rgb[0]} {e.rgb[1]} {e.rgb[2]} {alpha}")
    return "\n".join(lines) + "\n"


def itksnap_text(entries: list[LabelEntry], learned: bool = False) -> str:
    """Text of an ITK-SNAP label description file for ``entries`` (``learned``: with
    ``LEARNED_NOTE``)."""
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File (written by ctseg)",
        *([LEARNED_NOTE] if learned else []),
        "# File format:",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields:",
        "#    IDX:   Zero-based index",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description",
        "################################################",
    ]
    for e in entries:
        vis = int(e.visible)
        label = "Clear Label" if e.value == 0 else e.name
        lines.append(
            f"{e.value:5d} {e.rgb[0]:5d} {e.rgb[1]:4d} {e.rgb[2]:4d} {e.opacity:8.2f} "
            f'{vis:2d} {vis:2d}    "{label}"'
        )
    return "\n".join(lines) + "\n"


def _content_lines(path: Path) -> list[tuple[int, str]]:
    if not is_file(path):
        raise DataError(f"{path} does not exist; write it with `ctseg export`")
    text = path.read_text(encoding="utf-8", errors="replace")
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def read_slicer_ctbl(path: str | Path) -> list[LabelEntry]:
    """Parse a 3D Slicer colour table; raises DataError naming the line that is malformed."""
    path = Path(path)
    entries = []
    for number, line in _content_lines(path):
        parts = line.split()
        try:
            value, name = int(parts[0]), parts[1]
            r, g, b, a = (int(p) for p in parts[2:6])
        except (ValueError, IndexError):
            raise DataError(
                f"{path.name} line {number}: expected 'index name R G B A', got {line!r}"
            ) from None
        entries.append(LabelEntry(value, name, (r, g, b), a / 255, a > 0))
    return entries


_ITK_LINE = re.compile(
    r'^\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.eE+-]+)\s+(\d)\s+(\d)\s+(".*")\s*$'
)


def read_itksnap_labels(path: str | Path) -> list[LabelEntry]:
    """Parse an ITK-SNAP label description; raises DataError naming the line that is malformed."""
    path = Path(path)
    entries = []
    for number, line in _content_lines(path):
        match = _ITK_LINE.match(line)
        if not match:
            raise DataError(
                f"{path.name} line {number}: expected 'IDX R G B A VIS MSH \"LABEL\"', got {line!r}"
            )
        value, r, g, b = (int(match.group(i)) for i in range(1, 5))
        label = shlex.split(match.group(8))[0]
        name = "background" if value == 0 and label == "Clear Label" else label
        entries.append(
            LabelEntry(value, name, (r, g, b), float(match.group(5)), match.group(6) == "1")
        )
    return entries


def label_file_paths(stem: str | Path) -> tuple[Path, Path]:
    """(Slicer .ctbl, ITK-SNAP .txt) paths beside ``stem``; a ``.nii``/``.nii.gz`` suffix is dropped."""
    stem = Path(stem)
    base = stem.name
    for suffix in (".nii.gz", ".nii"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return stem.with_name(base + SLICER_SUFFIX), stem.with_name(base + ITKSNAP_SUFFIX)


def write_label_files(
    stem: str | Path,
    values: Iterable[int] | None = None,
    names: Mapping[int, str] | None = None,
    learned: bool = False,
) -> tuple[Path, Path]:
    """Write ``<stem>.ctbl`` (3D Slicer) and ``<stem>_itksnap_labels.txt`` (ITK-SNAP), atomically.

    ``values``: label values to list (default all 117 structures); background is always listed;
    ``names``: as :func:`label_entries`; ``learned``: ``values`` are what a model learns, said
    in the files (``LEARNED_NOTE``). Returns the two paths.
    """
    entries = label_entries(values, names)
    slicer_path, itk_path = label_file_paths(stem)
    atomic_write_text(slicer_path, slicer_ctbl_text(entries, learned))
    atomic_write_text(itk_path, itksnap_text(entries, learned))
    return slicer_path, itk_path


def _label_file(labels_path: str | Path) -> tuple[Path, list[LabelEntry]] | None:
    """(path, entries) of the label file beside a prediction: its 3D Slicer table, else its
    ITK-SNAP file; None when neither is there."""
    for path, read in zip(label_file_paths(labels_path), (read_slicer_ctbl, read_itksnap_labels),
                          strict=True):  # fmt: skip
        if is_file(path):  # 3.14's Path.is_file: False behind a closed folder (fileio)
            return path, read(path)
    return None


def label_file_table(labels_path: str | Path) -> tuple[Path, dict[int, str]] | None:
    """(path, value -> name) of the label file beside a prediction (``_label_file``), or None."""
    found = _label_file(labels_path)
    return None if found is None else (found[0], {e.value: e.name for e in found[1]})


def learned_values(labels_path: str | Path) -> frozenset[int] | None:
    """The label values a prediction's model learns, as ``ctseg predict``'s label file beside it
    lists them (``LEARNED_NOTE``); None without such a file (any tool's prediction, or label
    files of what was found, ``ctseg export``'s). Background is not among them."""
    found = _label_file(labels_path)
    if found is None:
        return None
    path, entries = found
    if LEARNED_NOTE not in path.read_text(encoding="utf-8", errors="replace").splitlines():
        return None
    return frozenset(e.value for e in entries if e.value)


def merges_named(labels_path: str | Path) -> list[str]:
    """The merges (``labels.MERGES``) a prediction holds, as the label file written beside it
    says (``write_label_files``: ``ctseg predict`` names a merged run's value by its merge).

    ``labels_path``: a multilabel ``.nii.gz``/``.nii``; its 3D Slicer table is read (else its
    ITK-SNAP file). [] when neither is there (any other tool's prediction: every value is its
    structure). DataError, one line, for a malformed file or a merge named at another value
    than the one ctseg writes it with (its first member's).
    """
    found = _label_file(labels_path)
    if found is None:
        return []
    path, entries = found
    merges = []
    for entry in entries:
        if entry.name not in MERGES:
            continue
        if entry.value != value_of(entry.name):
            raise DataError(
                f"{path} names value {entry.value} {entry.name!r}, which ctseg writes with "
                f"value {value_of(entry.name)}; correct the file or remove it"
            )
        merges.append(entry.name)
    return merges


def unnamed_merge_notes(labels_path: str | Path, rows: Iterable[Mapping]) -> list[str]:
    """One line per merge (``labels.MERGES``) a prediction seems to hold without a label file
    naming it: its value (the first member's) predicted and none of its other members, where
    every member is annotated and the reference has at least two. A merged run's prediction
    copied without its ``.ctbl`` looks so, and scored per value the union counts as the first
    member and the other members as missed.

    ``rows``: the subject's scored rows (``evaluation.tables.subject_rows``: one per
    annotated structure, with ``structure``, ``pred_volume_ml`` and ``ref_volume_ml``). A value
    a label file beside the prediction lists, under any name, is not questioned."""
    found = _label_file(labels_path)
    listed = {entry.value for entry in found[1]} if found is not None else set()
    predicted = {r["structure"]: r["pred_volume_ml"] > 0 for r in rows}
    in_reference = {r["structure"]: r["ref_volume_ml"] > 0 for r in rows}
    notes = []
    for merge, names in MERGES.items():
        value = value_of(merge)
        if value in listed or not all(n in predicted for n in names):
            continue  # named, or not every member annotated (the merge would not be scored)
        if (
            predicted[names[0]]
            and not any(predicted[n] for n in names[1:])
            and sum(in_reference[n] for n in names) >= 2
        ):
            notes.append(
                f"{Path(labels_path).name}: value {value} ({names[0]}) is predicted and no "
                f"other {merge} member, while the reference has "
                f"{sum(in_reference[n] for n in names)}: a merged run's {merge!r} without its "
                f"label file? Scored per value; to score it as {merge}, put "
                f"{label_file_paths(labels_path)[0].name} beside it with the line "
                f"'{value} {merge} 0 0 0 255'"
            )
    return notes
