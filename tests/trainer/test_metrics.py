"""Every metric against scipy or a hand-computed value."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from qualitynet.trainer.metrics import (
    compute_metrics,
    degenerate_reason,
    fit_logistic4,
    format_value,
    json_metrics,
    logistic4,
    quantile_loss,
    within_srocc,
)


def test_metrics_match_scipy_and_hand_values() -> None:
    pred = np.array([1.0, 2.0, 3.5, 3.0, 5.0])
    mos = np.array([1.5, 2.0, 3.0, 4.0, 4.5])
    m = compute_metrics(pred, mos)
    assert m["plcc"] == pytest.approx(stats.pearsonr(pred, mos).statistic)
    assert m["srocc"] == pytest.approx(0.9)  # one swapped pair of 5: 1 - 6*2/(5*24)
    assert m["krocc"] == pytest.approx(0.8)  # 9 concordant, 1 discordant pairs
    error = pred - mos  # [-0.5, 0, 0.5, -1, 0.5]
    assert m["rmse"] == pytest.approx(math.sqrt(1.75 / 5))
    assert m["mae"] == pytest.approx(2.5 / 5)
    assert m["explained_variance"] == pytest.approx(1 - np.var(error) / np.var(mos))
    assert m["n"] == 5


def test_quantile_loss_hand_values() -> None:
    target, pred = np.array([1.0, 2.0]), np.array([2.0, 1.0])  # errors -1, +1
    assert quantile_loss(target, pred, 0.1) == pytest.approx((0.9 * 1 + 0.1 * 1) / 2)
    assert quantile_loss(target, pred, 0.9) == pytest.approx((0.1 * 1 + 0.9 * 1) / 2)
    assert quantile_loss(np.array([3.0]), np.array([1.0]), 0.9) == pytest.approx(1.8)
    m = compute_metrics(np.array([1.0, 2.0, 4.0]), np.array([2.0, 2.0, 3.0]))
    assert m["quantile_loss_q50"] == pytest.approx(0.5 * m["mae"])


def test_logistic_fit_linearises_a_monotone_curve() -> None:
    pred = np.linspace(0, 1, 40)
    mos = logistic4(pred, 5.0, 1.0, 0.4, 0.08)  # monotone, not linear
    m = compute_metrics(pred, mos)
    assert m["srocc"] == pytest.approx(1.0)
    assert m["plcc"] < 0.95
    assert m["plcc_logistic4"] == pytest.approx(1.0, abs=1e-6)


def test_constant_predictions_give_nan_correlations_not_errors() -> None:
    m = compute_metrics(np.full(4, 2.0), np.array([1.0, 2.0, 3.0, 4.0]))
    assert math.isnan(m["plcc"]) and math.isnan(m["srocc"]) and "plcc_logistic4" not in m
    assert m["mae"] == pytest.approx(1.0)


def test_degenerate_predictions_are_named_and_undefined_values_written_as_such() -> None:
    target = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert degenerate_reason(target + 0.1, target, 4.0) is None
    # Differences of float rounding (1e-7 MOS) do not rank: a spread below 1e-4 of the range is constant.
    assert "predictions are constant" in degenerate_reason(3.0 + 1e-7 * np.arange(5), target, 4.0)
    assert "not all finite" in degenerate_reason(np.array([1.0, np.nan, 2.0, 3.0, 4.0]), target, 4.0)
    assert "scores are all equal (3)" in degenerate_reason(target, np.full(5, 3.0), 4.0)
    metrics = compute_metrics(np.full(5, 2.0), target)
    assert json_metrics(metrics)["srocc"] is None and json_metrics(metrics)["mae"] == pytest.approx(1.4)
    assert format_value(metrics["srocc"]) == "undefined" and format_value(0.12345) == "0.1235"


def test_length_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError):
        compute_metrics(np.ones(3), np.ones(4))


def test_logistic_fit_cannot_reverse_a_backward_ranking() -> None:
    """A model that ranks backwards (raw PLCC about -0.92) must not be reported as +0.9."""
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 200)
    pred = -mos + rng.normal(0, 0.5, 200)
    m = compute_metrics(pred, mos)
    assert m["plcc"] == pytest.approx(-0.92, abs=0.02)
    assert m["plcc_logistic4"] < 0  # the unconstrained fit mirrored the curve and reported +0.93
    b1, b2, b3, b4 = fit_logistic4(pred, mos)
    assert b1 >= b2 and b4 > 0


def test_logistic_fit_stays_inside_the_value_range() -> None:
    pred = np.linspace(-3, 3, 50)
    mos = np.clip(3 + 1.5 * pred, 1, 5)  # saturates at the ends
    b1, b2, _, b4 = fit_logistic4(pred, mos, value_range=(1.0, 5.0))
    assert 1.0 <= b2 <= b1 <= 5.0 and b4 > 0
    assert np.corrcoef(logistic4(pred, b1, b2, _, b4), mos)[0, 1] > 0.99


def test_within_srocc_averages_each_references_own_ranking() -> None:
    # photo a: ranked perfectly; photo b: one swapped pair of 4 (SROCC 0.8); photo c: constant scores (0);
    # photo d: two images only, and photo e: one MOS level only, are not rankable and do not count
    mos = [5, 4, 3, 5, 4, 3, 2, 5, 4, 3, 5, 4, 3, 3, 3]
    pred = [0.9, 0.5, 0.1, 4.0, 2.0, 3.0, 1.0, 2.0, 2.0, 2.0, 1.0, 2.0, 1.0, 2.0, 3.0]
    refs = ["a"] * 3 + ["b"] * 4 + ["c"] * 3 + ["d"] * 2 + ["e"] * 3
    result = within_srocc(np.array(pred), np.array(mos, float), refs)
    assert result["within_references"] == 3
    assert result["within_srocc"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)
    assert result["within_srocc_min"] == 0.0
    assert stats.spearmanr(pred[3:7], mos[3:7]).statistic == pytest.approx(0.8)


def test_within_srocc_ignores_how_references_compare_with_each_other() -> None:
    # each photo's levels ranked right, but photo b scored far above photo a: overall SROCC suffers, within does not
    mos = np.array([5.0, 3.0, 1.0, 5.0, 3.0, 1.0])
    pred = np.array([3.0, 2.0, 1.0, 13.0, 12.0, 11.0])
    assert within_srocc(pred, mos, ["a", "a", "a", "b", "b", "b"])["within_srocc"] == pytest.approx(1.0)
    assert compute_metrics(pred, mos)["srocc"] < 0.6


def test_within_srocc_without_rankable_references_is_nan() -> None:
    result = within_srocc(np.array([1.0, 2.0]), np.array([1.0, 2.0]), ["a", "b"])
    assert math.isnan(result["within_srocc"]) and result["within_references"] == 0
    with pytest.raises(ValueError):
        within_srocc(np.array([1.0, 2.0]), np.array([1.0, 2.0]), ["a"])
