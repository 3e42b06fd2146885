"""The one definition of agreement between two score lists (export checks, iqa-bench, scripts)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qualitynet.agreement import agreement
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
