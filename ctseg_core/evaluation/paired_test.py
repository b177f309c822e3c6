"""The Wilcoxon signed-rank test of paired differences, as ``compare`` runs it: misses (inf)
ranked above every finite difference, both missed (NaN) a tie, and too few pairs said."""

from __future__ import annotations

import warnings

import numpy as np

#: fewer paired subjects than this: no p-value (5 pairs all one way give p = 0.0625 at best)
MIN_PAIRS = 5


def signed_rank_p(differences: np.ndarray, unit: str = "pairs") -> tuple[float, str]:
    """Two-sided p of the Wilcoxon signed-rank test of paired differences, and why it is NaN.

    differences: (n,) B - A, one per pair; NaN means both missed (a tie, taken as 0); +-inf
    ranks above every finite difference. (NaN, reason) with fewer than ``MIN_PAIRS`` of them,
    when none differs, or when fewer than ``MIN_PAIRS`` differ (``unit`` names them in the
    reason); else (p, ""). Zero differences are dropped (scipy's "wilcox"), so it is the pairs
    that differ that must reach ``MIN_PAIRS``: 2 of them give p = 0.5 at best.
    """
    from scipy.stats import wilcoxon

    d = rankable(differences)
    if d.size < MIN_PAIRS:
        return float("nan"), f"fewer than {MIN_PAIRS} {unit}"
    differ = int(np.count_nonzero(d))
    if not differ:
        return float("nan"), f"no difference in any of the {unit}"
    if differ < MIN_PAIRS:
        return float("nan"), f"fewer than {MIN_PAIRS} {unit} differ: {differ} of {d.size}"
    with warnings.catch_warnings():  # scipy's notes on ties and small samples
        warnings.simplefilter("ignore")
        return float(wilcoxon(d).pvalue), ""


def rankable(differences: np.ndarray) -> np.ndarray:
    """Paired differences with NaN (both missed) as 0 and +-inf as a finite value above every
    finite |difference| (ranks only: any such value will do)."""
    raw = np.asarray(differences, dtype=np.float64)
    d = np.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0)
    infinite = np.isinf(raw)
    if infinite.any():
        d[infinite] = np.sign(raw[infinite]) * (2 * np.abs(d).max() + 1)
    return d


def rank_sums(differences: np.ndarray) -> tuple[float, float]:
    """(sum of the ranks of the positive, of the negative) paired differences (``rankable``;
    zeros dropped), as the signed-rank test ranks them."""
    from scipy.stats import rankdata

    d = rankable(differences)
    d = d[d != 0]
    ranks = rankdata(np.abs(d)) if d.size else np.zeros(0)
    return float(ranks[d > 0].sum()), float(ranks[d < 0].sum())


def rank_direction(differences: np.ndarray) -> float:
    """The sign of the signed-rank sum of paired differences: which way the test of the same
    pairs leans, misses included."""
    above, below = rank_sums(differences)
    return float(np.sign(above - below))
