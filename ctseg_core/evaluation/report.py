"""Figures and interactive 3D pages of an evaluation, as the seed notebooks named them.

- ``metrics_distribution_<split>.png``: distribution of Dice, IoU, HD95 and surface Dice;
- ``structure_ranking_<split>.png``: structures ranked by mean Dice;
- ``segmentation_visualization_<split>.png``: CT with reference vs prediction overlays on the
  slices where the worst structures disagree most, worst first;
- ``3d_<subject>.html``: plotly meshes (marching cubes, decimated) of reference and prediction.

Everything is drawn on matplotlib ``Figure`` objects (no pyplot, no global backend) and written
atomically. Memory stays bounded: only a few 2D slices per subject are kept between subjects.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..fileio import atomic_path, atomic_write_text
from ..labels import COLOURS, colour_lut, members, value_of
from ..metrics.specs import METRICS
from ..viz.mesh import bounding_boxes, meshes_figure, structure_meshes

log = logging.getLogger(__name__)

#: CT display window (HU): soft tissue and bone both readable under a colour overlay
DISPLAY_WINDOW_HU = (-400.0, 600.0)
#: name prefix of 3D pages written during an evaluation, until it has finished
STAGED = ".staged-"
#: triangles per 3D page (both panels together): pages of 2.5-4 MB for phantom subjects
MESH_FACE_BUDGET = 60_000


@dataclass
class SliceCase:
    """One axial slice where a structure disagrees: CT, reference and prediction (X, Y)."""

    subject: str
    structure: str
    dice: float
    z: int
    ct_hu: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray
    aspect: float  # y spacing / x spacing, for display


def _save_figure(fig: Figure, target: Path) -> None:
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def worst_slice(reference: np.ndarray, prediction: np.ndarray, label: int) -> int:
    """Axial index z of (X, Y, Z) volumes where ``label`` disagrees most, among the slices that
    hold its reference (a figure of "reference | prediction" should show the reference); only a
    structure predicted right on every reference slice shows its worst false-positive slice.
    Without any disagreement: the slice with the most reference voxels."""
    ref_k, pred_k = reference == label, prediction == label
    ref_count = np.count_nonzero(ref_k, axis=(0, 1))
    disagreement = np.count_nonzero(ref_k ^ pred_k, axis=(0, 1))
    on_reference = np.where(ref_count > 0, disagreement, 0)
    if on_reference.max() > 0:
        return int(on_reference.argmax())
    if disagreement.max() > 0:
        return int(disagreement.argmax())
    return int(ref_count.argmax())


class ReportCollector:
    """Gathers what the report needs subject by subject, then draws it in :meth:`finish`."""

    def __init__(self, out_dir: Path, split: str, mesh_subjects: int = 3, cases_per_subject: int = 2,
                 max_cases: int = 6) -> None:  # fmt: skip
        self.out_dir, self.split = Path(out_dir), split
        self.mesh_subjects, self.cases_per_subject, self.max_cases = (
            mesh_subjects, cases_per_subject, max_cases,
        )  # fmt: skip
        self.cases: list[SliceCase] = []
        self.meshes_written: list[Path] = []
        # plotly.js beside the pages: removed with them if this evaluation brought it and fails
        self.bundle = self.out_dir / "plotly.min.js"
        self.bundle_was_there = self.bundle.is_file()
        #: what the report could not draw (a 3D page that failed to write), for the notes
        self.notes: list[str] = []

    def add_subject(self, subject_id, cached, reference, prediction, rows: list[dict]) -> None:
        """Keep the worst slices of one subject and write its 3D page if still within the quota.

        reference, prediction: canonical (X, Y, Z) labels; ``cached``: the CachedSubject (CT).
        """
        # perfect structures have nothing to show; the worst of the rest come first
        scored = [r for r in rows if not math.isnan(r["dice"]) and r["dice"] < 1.0]
        scored.sort(key=lambda r: (r["dice"], -r["ref_volume_ml"]))
        spacing = cached.spacing_mm
        for row in scored[: self.cases_per_subject]:
            label = value_of(row["structure"])
            z = worst_slice(reference, prediction, label)
            self.cases.append(
                SliceCase(
                    subject_id,
                    row["structure"],
                    float(row["dice"]),
                    z,
                    np.array(cached.ct[z]),
                    reference[:, :, z].copy(),
                    prediction[:, :, z].copy(),
                    spacing[1] / spacing[0],
                )
            )
        self.cases.sort(key=lambda c: c.dice)
        del self.cases[self.max_cases :]
        if len(self.meshes_written) < self.mesh_subjects:
            # written under a staged name: until finish() the folder keeps the previous
            # evaluation's pages whole (an evaluation that fails later must not replace them)
            target = self.out_dir / f"{STAGED}3d_{subject_id}.html"
            names = {value_of(r["structure"]): r["structure"] for r in rows}  # a merge's value
            try:
                write_mesh_html(
                    reference, prediction, spacing, target, title=subject_id,
                    affine=cached.affine, names=names,
                )  # fmt: skip
            except Exception as exc:  # a page of MBs on a full disk: the scores still count
                target.unlink(missing_ok=True)
                if not self.meshes_written and not self.bundle_was_there:
                    self.bundle.unlink(missing_ok=True)  # no page uses it
                self.mesh_subjects = len(self.meshes_written)  # no further pages
                first = (str(exc).strip().splitlines() or [""])[0]
                self.notes.append(
                    f"the 3D page of {subject_id} could not be written ({type(exc).__name__}: "
                    f"{first}); no further 3D pages were drawn"
                )
                return
            self.meshes_written.append(target)

    def finish(self, results: pd.DataFrame, summary: pd.DataFrame) -> list[Path]:
        """Draw the three figures; return every file written by the report."""
        split = self.split
        paths = [
            self.out_dir / f"metrics_distribution_{split}.png",
            self.out_dir / f"structure_ranking_{split}.png",
            self.out_dir / f"segmentation_visualization_{split}.png",
        ]
        try:
            plot_metric_distribution(results, paths[0])
            plot_structure_ranking(summary, paths[1])
            plot_slice_cases(self.cases, paths[2])
        except BaseException:  # no figure of this evaluation beside another's
            for path in paths:
                path.unlink(missing_ok=True)
            raise
        pages = []
        for staged in self.meshes_written:
            page = staged.with_name(staged.name.removeprefix(STAGED))
            os.replace(staged, page)
            pages.append(page)
        return paths + pages

    def discard(self) -> None:
        """Remove the staged 3D pages of an evaluation that failed, and the plotly.js it wrote
        for them (one already there stays: earlier pages use it)."""
        for staged in self.meshes_written:
            staged.unlink(missing_ok=True)
        if not self.bundle_was_there:
            self.bundle.unlink(missing_ok=True)


def plot_metric_distribution(results: pd.DataFrame, target: Path) -> None:
    """Histograms of every metric (finite values) over all subject x structure rows."""
    fig = Figure(figsize=(3 * len(METRICS), 3.2))
    for i, spec in enumerate(METRICS.values()):
        title = spec.title
        ax = fig.add_subplot(1, len(METRICS), i + 1)
        values = results[spec.name].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        if finite.size:
            bins = np.linspace(*spec.value_range, 21) if spec.value_range else 20
            ax.hist(finite, bins=bins, color="#4c78a8", edgecolor="white")
            ax.axvline(
                np.median(finite), color="#e45756", lw=1.5, label=f"median {np.median(finite):.3g}"
            )
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        n_inf = int(np.isinf(values).sum())
        ax.set_title(title + (f" ({n_inf} missed: inf)" if n_inf else ""), fontsize=9)
        ax.set_xlabel(title, fontsize=8)
        ax.set_ylabel("subject x structure pairs" if i == 0 else "")
    fig.suptitle(
        f"Metric distributions ({results['subject'].nunique()} subjects)", fontsize=10, y=1.03
    )
    _save_figure(fig, target)


def plot_structure_ranking(summary: pd.DataFrame, target: Path) -> None:
    """Horizontal bars: mean Dice (+- std) per structure, best at the top."""
    ranked = summary.dropna(subset=["dice_mean"]).sort_values("dice_mean", kind="stable")
    height = max(2.5, 0.18 * len(ranked) + 1)
    fig = Figure(figsize=(7, height))
    ax = fig.add_subplot(1, 1, 1)
    if ranked.empty:
        ax.text(0.5, 0.5, "no structure present in the references", ha="center", va="center")
    else:
        colours = [np.array(COLOURS[members(s)[0]]) / 255 for s in ranked["structure"]]
        y = np.arange(len(ranked))
        ax.barh(y, ranked["dice_mean"], xerr=ranked["dice_std"].fillna(0), color=colours,
                error_kw={"lw": 0.6})  # fmt: skip
        ax.set_yticks(y, [f"{s} (n={n})" for s, n in zip(ranked["structure"], ranked["dice_n"], strict=True)],
                      fontsize=6)  # fmt: skip
        ax.set_xlim(0, 1)
        ax.set_xlabel("mean Dice")
        for threshold in (0.5, 0.7, 0.9):
            ax.axvline(threshold, color="grey", lw=0.5, ls="--")
    ax.set_title("Structures ranked by mean Dice", fontsize=10)
    _save_figure(fig, target)


def _display(slice_xy: np.ndarray) -> np.ndarray:
    """(X, Y) RAS slice -> image rows/cols in radiological view (patient right on the left, anterior up)."""
    return np.swapaxes(slice_xy, 0, 1)[::-1, ::-1]


def zoom_window(case: SliceCase, min_fraction: float = 0.4) -> tuple[slice, slice]:
    """(X, Y) slices around the structure in question: twice its extent, at least 40 % of the
    image side, so small structures are visible and their surroundings still recognisable."""
    label = value_of(case.structure)
    focus = (case.reference == label) | (case.prediction == label)
    if not focus.any():
        return slice(None), slice(None)
    window = []
    for axis, size in enumerate(focus.shape):
        idx = np.flatnonzero(focus.any(axis=1 - axis))
        centre = (idx[0] + idx[-1] + 1) / 2
        half = max(idx[-1] + 1 - idx[0], min_fraction * size / 2)
        lo = int(max(0, min(round(centre - half), size - 2 * half)))
        window.append(slice(lo, int(min(size, lo + round(2 * half)))))
    return window[0], window[1]


def _overlay(ax, case: SliceCase, labels: np.ndarray, title: str, reference: bool) -> None:
    lo, hi = DISPLAY_WINDOW_HU
    wx, wy = zoom_window(case)
    case = SliceCase(case.subject, case.structure, case.dice, case.z, case.ct_hu[wx, wy],
                     case.reference[wx, wy], case.prediction[wx, wy], case.aspect)  # fmt: skip
    labels = labels[wx, wy]
    ax.imshow(_display(case.ct_hu), cmap="gray", vmin=lo, vmax=hi, aspect=case.aspect,
              interpolation="nearest")  # fmt: skip
    rgba = np.zeros((*labels.shape, 4), dtype=np.float32)
    rgba[..., :3] = colour_lut()[labels] / 255.0
    rgba[..., 3] = np.where(labels > 0, 0.45, 0.0)
    ax.imshow(_display(rgba), aspect=case.aspect, interpolation="nearest")
    # Contours of the structure in question: white = reference, yellow = this panel's labels,
    # so a missed or misplaced structure shows where it should have been.
    label = value_of(case.structure)
    contours = [(case.reference == label, "white")]
    if not reference:
        contours.append((labels == label, "yellow"))
    for mask, colour in contours:
        if mask.any():
            ax.contour(_display(mask.astype(np.uint8)), levels=[0.5], colors=colour, linewidths=0.9)
    ax.set_title(title, fontsize=8)
    ax.set_axis_off()


def plot_slice_cases(cases: list[SliceCase], target: Path) -> None:
    """One row per case (worst Dice first): CT + reference overlay, CT + prediction overlay."""
    n = max(1, len(cases))
    fig = Figure(figsize=(8, 4 * n))
    if not cases:
        ax = fig.add_subplot(1, 1, 1)
        ax.text(0.5, 0.5, "no structure present in the references", ha="center", va="center")
        ax.set_axis_off()
    for i, case in enumerate(cases):
        head = f"{case.subject} {case.structure}, axial slice {case.z + 1}"
        ax = fig.add_subplot(n, 2, 2 * i + 1)
        _overlay(ax, case, case.reference, f"{head}: reference (white)", True)
        _overlay(fig.add_subplot(n, 2, 2 * i + 2), case, case.prediction,
                 f"prediction (yellow), Dice {case.dice:.3f}", False)  # fmt: skip
    _save_figure(fig, target)


def write_mesh_html(
    reference: np.ndarray,
    prediction: np.ndarray,
    spacing_mm,
    target: Path,
    title: str = "",
    affine: np.ndarray | None = None,
    max_faces_total: int = MESH_FACE_BUDGET,
    names: dict[int, str] | None = None,
) -> None:
    """Interactive page: reference (left) and prediction (right) meshes of every present structure.

    reference, prediction: canonical (X, Y, Z) labels; spacing_mm: (x, y, z); with ``affine``
    (canonical voxel -> world) the vertices are world mm, else mm on the voxel grid. Meshes come
    from ``viz.mesh`` (cropped marching cubes, one shared face budget per panel, so a page stays
    of a few MB). plotly.js is written once beside the page (``plotly.min.js``) so the page opens
    offline, as the rest of the evaluation folder does. ``names``: value -> name where a value
    is not its structure (a merge scored as one: "lungs", not its first lobe).
    """
    from plotly.offline import get_plotlyjs

    items = []
    for kind, labels in (("reference", reference), ("prediction", prediction)):
        boxes = bounding_boxes(labels)
        meshes = structure_meshes(
            labels, sorted(boxes), spacing_mm, affine, max_faces_total // 2, boxes, layout="xyz"
        )
        items += [
            {**item, "kind": kind, "name": (names or {}).get(item["value"], item["name"])}
            for item in meshes
        ]
    fig = meshes_figure(items, title=title)
    fig.update_layout(height=700)
    bundle = Path(target).parent / "plotly.min.js"
    if not bundle.is_file():
        atomic_write_text(bundle, get_plotlyjs())
    atomic_write_text(target, fig.to_html(include_plotlyjs="directory", full_html=True))
