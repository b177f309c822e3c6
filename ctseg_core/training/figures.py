"""Training figures: the loss/Dice curves and prediction-vs-reference samples (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..fileio import atomic_path
from ..labels import colour_lut


def _figure(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(*args, **kwargs)  # no pyplot: safe in threads


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")


def save_history_plot(history: list[dict], path: str | Path) -> None:
    """Train/val loss and mean val Dice per epoch -> PNG."""
    fig = _figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_dice = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        values = [np.nan if r.get(key) is None else r[key] for r in history]
        ax_loss.plot(epochs, values, marker="o", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    dice = [np.nan if r.get("val_dice_mean") is None else r["val_dice_mean"] for r in history]
    ax_dice.plot(epochs, dice, marker="o", color="tab:green")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_xlabel("epoch")
    ax_dice.set_ylabel("mean val Dice (present structures)")
    _save(fig, Path(path))


def _overlay(ct: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """ct (H, W) normalised [-1, 1], labels (H, W) -> RGB (H, W, 3) float in [0, 1]."""
    grey = np.clip((ct + 1) / 2, 0, 1)[..., None].repeat(3, axis=2)
    colours = colour_lut()[labels].astype(np.float32) / 255
    mask = (labels > 0)[..., None]
    return np.where(mask, 0.45 * grey + 0.55 * colours, grey)


def save_sample_figure(
    images: np.ndarray,
    references: np.ndarray,
    predictions: np.ndarray,
    path: str | Path,
    title: str,
    aspects: list[float] | None = None,
) -> None:
    """Rows of (CT, reference, prediction) for validation slices -> PNG.

    images (N, H, W) normalised centre slices, references/predictions (N, H, W) label values;
    ``aspects``: per row, the displayed height / width the slice has in mm (its square
    resizing undone), default 1.
    Shown as radiologists view axial CT (as ctseg_core.viz.slices): anterior up, the patient's
    right (high x in RAS+) on the image's left.
    """
    n = len(images)
    fig = _figure(figsize=(7.5, 2.6 * n), layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, 3, squeeze=False))
    for row in range(n):
        panels = (
            np.clip((images[row] + 1) / 2, 0, 1),
            _overlay(images[row], references[row]),
            _overlay(images[row], predictions[row]),
        )
        for col, (panel, name) in enumerate(
            zip(panels, ("CT", "reference", "prediction"), strict=True)
        ):
            ax = axes[row, col]
            rows, cols = panel.shape[1], panel.shape[0]  # displayed: y down the rows, x across
            aspect = (aspects[row] if aspects else 1.0) * cols / rows  # per pixel, for imshow
            ax.imshow(
                np.swapaxes(panel, 0, 1)[::-1, ::-1],
                cmap="gray" if panel.ndim == 2 else None,
                aspect=aspect,
            )
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name)
    fig.suptitle(title)
    _save(fig, Path(path))
