"""How closely two score lists of the same photos agree: the one definition shared by the
export's parity checks and INT8 gates, ``iqa-bench`` and the benchmark scripts.

The errors are per photo, absolute and relative to the reference; the ranks are compared by
Spearman's rank correlation (SROCC, ``scipy.stats.spearmanr``, imported when used) and by the
largest gap the reference puts between two photos whose order the candidate reverses
(:func:`largest_flipped_gap`): SROCC weighs the swap of two photos the reference scores 0.001
apart like that of two it scores a whole MOS point apart, the gap tells them apart. A score
that is not finite is infinitely wrong, and SROCC and the gap are undefined (NaN) when either
list is constant or not finite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qualitynet.errors import QualityNetError

__all__ = ["Agreement", "agreement", "largest_flipped_gap"]


@dataclass(frozen=True)
class Agreement:
    """Two score lists compared photo by photo.

    Attributes:
        abs_error: ``|candidate - reference|`` per photo (float64; infinite for a non-finite candidate).
        rel_error: ``abs_error`` over ``|reference|`` (its magnitude floored at float32's smallest normal).
        srocc: Spearman rank correlation of the two lists (NaN when undefined).
        flipped_gap: :func:`largest_flipped_gap` of the two lists (NaN when SROCC is).
    """

    abs_error: np.ndarray
    rel_error: np.ndarray
    srocc: float
    flipped_gap: float

    @property
    def finite(self) -> bool:
        """Every candidate score is a finite number."""
        return bool(np.isfinite(self.abs_error).all())

    @property
    def max_abs(self) -> float:
        """The largest absolute error: the ``atol`` a comparison needs."""
        return float(self.abs_error.max())

    @property
    def mean_abs(self) -> float:
        """The mean absolute error."""
        return float(self.abs_error.mean())

    @property
    def median_abs(self) -> float:
        """The median absolute error."""
        return float(np.median(self.abs_error))

    @property
    def p90_abs(self) -> float:
        """The 90th percentile of the absolute error (infinite when a score is not finite)."""
        return float(np.quantile(self.abs_error, 0.9)) if self.finite else float("inf")

    @property
    def max_rel(self) -> float:
        """The largest relative error: the ``rtol`` a comparison needs."""
        return float(self.rel_error.max())


def agreement(reference: np.ndarray, candidate: np.ndarray) -> Agreement:
    """Compare ``candidate`` with ``reference``, both the scores of the same photos in the same order.

    Raises:
        QualityNetError: the lists differ in length.
    """
    reference = np.asarray(reference, np.float64).reshape(-1)
    candidate = np.asarray(candidate, np.float64).reshape(-1)
    if reference.shape != candidate.shape:
        raise QualityNetError(f"{candidate.size} scores for {reference.size} photos")
    finite = bool(np.isfinite(candidate).all())
    abs_error = np.abs(candidate - reference) if finite else np.full_like(reference, np.inf)
    rel_error = abs_error / np.maximum(np.abs(reference), np.finfo(np.float32).tiny)
    ranked = finite and reference.size > 1 and np.ptp(reference) > 0 and np.ptp(candidate) > 0
    if ranked:
        from scipy import stats

        srocc = float(stats.spearmanr(reference, candidate).statistic)
        flipped_gap = largest_flipped_gap(reference, candidate)
    else:
        srocc = flipped_gap = float("nan")
    return Agreement(abs_error, rel_error, srocc, flipped_gap)


def largest_flipped_gap(reference: np.ndarray, candidate: np.ndarray) -> float:
    """The largest ``reference[j] - reference[i]`` over the pairs the candidate orders the other way
    (``reference[i] < reference[j]`` and ``candidate[i] > candidate[j]``); 0 when it keeps every order.

    In O(n log n): with the photos sorted by reference score, the pair that gives photo ``j``
    its largest gap is the first photo before it whose candidate score exceeds ``j``'s, found
    by a binary search on the running maximum of the candidate scores.
    """
    order = np.argsort(reference, kind="stable")
    ranked, scored = np.asarray(reference)[order], np.asarray(candidate)[order]
    running_max = np.maximum.accumulate(scored)
    first_above = np.searchsorted(running_max, scored, side="right")  # first i with candidate[i] > candidate[j]
    flipped = first_above < np.arange(len(scored))
    if not flipped.any():
        return 0.0
    return float((ranked[flipped] - ranked[first_above[flipped]]).max())
