"""The one definition of agreement between two score lists (export checks, iqa-bench, scripts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qualitynet.agreement import agreement, largest_flipped_gap
from qualitynet.errors import QualityNetError


def test_errors_and_ranks_of_two_lists() -> None:
    reference = np.array([0.1, 0.4, 0.2, 0.8])
    agreed = agreement(reference, reference + np.array([0.0, 0.01, -0.02, 0.0]))
    assert agreed.max_abs == pytest.approx(0.02) and agreed.mean_abs == pytest.approx(0.0075)
    assert agreed.max_rel == pytest.approx(0.1) and agreed.srocc == pytest.approx(1.0)
    assert agreement(reference, 1 - reference).srocc == pytest.approx(-1.0)


def test_a_non_finite_score_is_infinitely_wrong_and_ranks_are_undefined() -> None:
    agreed = agreement(np.array([0.1, 0.2, 0.3]), np.array([0.1, np.nan, 0.3]))
    assert not agreed.finite and agreed.max_abs == math.inf and agreed.p90_abs == math.inf
    assert math.isnan(agreed.srocc)
    assert math.isnan(agreement(np.array([0.5, 0.5]), np.array([0.1, 0.2])).srocc)  # a constant list has no ranks


def test_lists_of_different_lengths_are_refused() -> None:
    with pytest.raises(QualityNetError, match="2 scores for 3 photos"):
        agreement(np.zeros(3), np.zeros(2))


def test_largest_flipped_gap_is_the_widest_pair_the_candidate_reverses() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):  # against every pair, with ties on either side
        size = int(rng.integers(2, 25))
        reference = np.round(rng.random(size), 1 + trial % 3)
        candidate = np.round(reference + rng.normal(0, 0.05 * (trial % 4), size), 2)
        widest = max((reference[j] - reference[i] for i in range(size) for j in range(size)
                      if reference[i] < reference[j] and candidate[i] > candidate[j]), default=0.0)
        assert largest_flipped_gap(reference, candidate) == pytest.approx(widest)
    reference = np.array([0.1, 0.2, 0.3, 0.9])
    assert agreement(reference, reference[[1, 0, 2, 3]]).flipped_gap == pytest.approx(0.1)
    assert agreement(reference, reference[::-1]).flipped_gap == pytest.approx(0.8)
    assert agreement(reference, reference * 2).flipped_gap == 0.0
    assert math.isnan(agreement(np.array([0.5, 0.5]), np.array([0.1, 0.2])).flipped_gap)
