"""The spacing checks of a DICOM series (``dicom.read_dicom_series``): slices along the normal
must lie evenly, or be resampled onto a uniform grid when asked."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import DataError

log = logging.getLogger(__name__)

#: slice positions closer than this (mm) along the normal are the same position
SAME_POSITION_MM = 0.01
#: a gap differing from the series' step by more than this fraction (or SAME_POSITION_MM) is uneven
STEP_TOLERANCE = 0.01
#: a slice further than this fraction of a step (or SAME_POSITION_MM) from the even grid through
#: the first and last slices is uneven: looser than a gap, since positions a scanner adds up in
#: float32 drift by a few hundredths of a mm over 2000 slices (a tenth of a voxel is harmless)
DRIFT_TOLERANCE = 0.1
#: what floating point adds to a position rounded to 0.01 mm (0.625 mm steps stored as 0.62 and
#: 0.63 differ from their median by 0.01 mm, exactly SAME_POSITION_MM)
_ROUNDING_MM = 1e-6


def _gaps_text(positions: np.ndarray, step: float, uneven: np.ndarray) -> str:
    """'a 4 mm gap between the slices at 6 and 10 mm (1 slice missing?)', for up to 3 gaps."""
    texts = []
    for i in np.flatnonzero(uneven)[:3]:
        gap = positions[i + 1] - positions[i]
        missing = round(gap / step) - 1
        guess = ""
        if missing >= 1 and abs(gap - (missing + 1) * step) <= max(
            SAME_POSITION_MM, STEP_TOLERANCE * step
        ):
            guess = f" ({missing} slice{'s' if missing > 1 else ''} missing?)"
        texts.append(
            f"a {gap:.4g} mm gap between the slices at {positions[i]:.4g} and "
            f"{positions[i + 1]:.4g} mm{guess}"
        )
    more = int(uneven.sum()) - len(texts)
    return "; ".join(texts) + (f"; {more} more" if more > 0 else "")


def _drift_text(positions: np.ndarray, grid: np.ndarray, drift: np.ndarray) -> str:
    """'its slices drift off an even grid by up to 0.45 mm (the slice at 100.45 mm along the
    slice normal, where an even 2 mm step puts one at 100.00 mm)'."""
    k = int(np.argmax(drift))
    mean_step = (positions[-1] - positions[0]) / (len(positions) - 1)
    return (
        f"its slices drift off an even grid by up to {drift[k]:.3g} mm (the slice at "
        f"{positions[k]:.2f} mm along the slice normal, where an even {mean_step:.4g} mm step "
        f"puts one at {grid[k]:.2f} mm)"
    )


def _resample(stack: np.ndarray, positions: np.ndarray, count: int) -> np.ndarray:
    """(X, Y, Z) int16 slices at increasing ``positions`` -> (X, Y, count) on a uniform grid
    from the first to the last position, linearly interpolated between neighbouring slices."""
    targets = np.linspace(positions[0], positions[-1], count)
    out = np.empty((*stack.shape[:2], count), dtype=np.int16)
    upper = np.clip(np.searchsorted(positions, targets, side="right"), 1, len(positions) - 1)
    for k, (t, j) in enumerate(zip(targets, upper, strict=True)):
        w = (t - positions[j - 1]) / (positions[j] - positions[j - 1])
        w = min(max(w, 0.0), 1.0)
        mixed = (1 - w) * stack[:, :, j - 1].astype(np.float32) + w * stack[:, :, j]
        out[:, :, k] = np.clip(np.rint(mixed), -32768, 32767)
    return out


def uniform_stack(folder, name, stack, positions, unreadable: int, resample_uneven: bool):
    """The stack and its step (mm; None for one slice) when evenly spaced; else DataError, or
    with ``resample_uneven`` the stack interpolated onto a uniform grid of the median step."""
    if len(positions) < 2:
        return stack, None
    gaps = np.diff(positions)
    step = float(np.median(gaps))
    uneven = np.abs(gaps - step) > max(SAME_POSITION_MM, STEP_TOLERANCE * step) + _ROUNDING_MM
    # gaps each within the tolerance can still add up: every slice must lie on the even grid
    # from the first position to the last, or the volume puts it where it is not
    grid = np.linspace(positions[0], positions[-1], len(positions))
    drift = np.abs(positions - grid)
    if uneven.any() or drift.max() > max(SAME_POSITION_MM, DRIFT_TOLERANCE * step) + _ROUNDING_MM:
        where = (
            _gaps_text(positions, step, uneven)
            if uneven.any()
            else _drift_text(positions, grid, drift)
        )
        left_out = f" ({count_text(unreadable, 'unreadable file')} left out)" if unreadable else ""
        rest = (
            f"the other slices are {step:.4g} mm apart"
            if uneven.any()
            else f"its gaps are {gaps.min():.4g} to {gaps.max():.4g} mm"
        )
        if not resample_uneven:
            raise DataError(
                f"{folder}: {name} is not evenly spaced: {where}; {rest}{left_out}. Give the "
                "complete series, or pass "
                "--resample-uneven (resample_uneven=True) to interpolate it onto a uniform grid"
            )
        count = round((positions[-1] - positions[0]) / step) + 1
        stack = _resample(stack, positions, count)
        log.warning(
            "%s: %s is not evenly spaced: %s%s; resampled, as asked, onto a uniform %.4g mm grid "
            "of %d slices (linear interpolation between neighbouring slices)",
            folder, name, where, left_out, (positions[-1] - positions[0]) / (count - 1), count,
        )  # fmt: skip
    return stack, float(positions[-1] - positions[0]) / (stack.shape[2] - 1)


def count_text(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"
