"""IQA metrics: correlations from scipy.stats, errors, explained variance, quantile loss.

PLCC is reported on raw predictions (``plcc``) and, as VQEG practice does, after a
4-parameter logistic fit of predictions to MOS (``plcc_logistic4``); both are labelled.
The fit (:func:`fit_logistic4`) is constrained to be increasing, and the MOS mapping a
training run stores (:mod:`qualitynet.trainer.mos_mapping`) uses the same function.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import numpy as np
from scipy import optimize, stats

__all__ = ["COLLAPSE_SPREAD", "QUANTILES", "UNDEFINED", "compute_metrics", "degenerate_reason", "fit_logistic4",
           "format_value", "json_metrics", "logistic4", "quantile_loss", "within_srocc"]

QUANTILES = (0.1, 0.5, 0.9)

COLLAPSE_SPREAD = 1e-4
"""Predictions whose standard deviation is below this share of the score range rank nothing:
what differences they have are float rounding, and their correlations are noise."""

UNDEFINED = "undefined"
"""How a metric that has no value (a correlation of constant scores) is written in text."""


def quantile_loss(target: np.ndarray, pred: np.ndarray, q: float) -> float:
    """Mean pinball loss: ``max(q * e, (q - 1) * e)`` with ``e = target - pred``."""
    error = np.asarray(target, np.float64) - np.asarray(pred, np.float64)
    return float(np.mean(np.maximum(q * error, (q - 1.0) * error)))


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG's monotonic 4-parameter logistic: ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    with np.errstate(over="ignore"):  # exp overflow -> inf -> the curve's asymptote, as intended
        return (b1 - b2) / (1.0 + np.exp(-(x - b3) / (np.abs(b4) + 1e-12))) + b2


def fit_logistic4(pred: np.ndarray, target: np.ndarray, value_range: tuple[float, float] | None = None,
                  min_scale: float | None = None) -> tuple[float, float, float, float]:
    """Least-squares fit of :func:`logistic4` to ``target``, constrained to be increasing.

    The fit may only keep or flatten the ranking of ``pred``, never reverse it: the
    asymptotes satisfy ``value_range[0] <= b2 <= b1 <= value_range[1]`` and ``b4 > 0``. A
    model that ranks backwards (a DMOS direction bug) therefore gets an almost flat curve
    whose PLCC keeps the raw PLCC's sign, instead of a mirrored curve that reports +0.9.

    Args:
        pred: raw predictions.
        target: MOS.
        value_range: where both asymptotes must lie; default: the observed MOS range
            widened by its own width on each side.
        min_scale: the smallest ``b4`` allowed (how steep the curve may get); default
            ``1e-3`` times the predictions' standard deviation.

    Returns:
        ``(b1, b2, b3, b4)`` with ``b1 >= b2`` and ``b4 > 0``.

    Raises:
        RuntimeError: the fit did not converge (scipy's own error).
    """
    pred, target = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    lowest, highest = float(target.min()), float(target.max())
    low, high = value_range or (2 * lowest - highest, 2 * highest - lowest)
    width = high - low
    spread = float(np.std(pred)) or 1.0

    # Box bounds on (s_low, s_span) in [0, 1] give b2 = low + width * s_low and
    # b1 = b2 + (high - b2) * s_span: increasing and inside the range by construction.
    def bounded(x: np.ndarray, s_low: float, s_span: float, b3: float, b4: float) -> np.ndarray:
        b2 = low + width * s_low
        return logistic4(x, b2 + (high - b2) * s_span, b2, b3, b4)

    s_low = float(np.clip((lowest - low) / width, 0.01, 0.99))
    b2_start = low + width * s_low
    s_span = float(np.clip((highest - b2_start) / max(high - b2_start, 1e-12), 0.01, 0.99))
    floor = spread * 1e-3 if min_scale is None else min_scale
    start = [s_low, s_span, float(np.median(pred)), max(spread, 2 * floor)]
    bounds = ([0.0, 0.0, -np.inf, floor], [1.0, 1.0, np.inf, np.inf])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (s_low, s_span, b3, b4), _ = optimize.curve_fit(bounded, pred, target, p0=start, bounds=bounds,
                                                        maxfev=20000)
    b2 = low + width * s_low
    return float(b2 + (high - b2) * s_span), float(b2), float(b3), float(b4)


def degenerate_reason(pred: np.ndarray, target: np.ndarray, score_range: float) -> str | None:
    """Why ``pred`` cannot be ranked against ``target``, or None when it can.

    Args:
        pred: predictions.
        target: scores, same scale.
        score_range: the width of the score scale (for a 1-5 MOS, 4).

    Returns:
        A phrase naming the problem (predictions not finite, scores all equal, predictions
        constant to within :data:`COLLAPSE_SPREAD` of the range), or None.
    """
    pred, target = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    if not np.all(np.isfinite(pred)):
        return "the predictions are not all finite (NaN or infinity)"
    if target.size and np.ptp(target) == 0:
        return f"the scores are all equal ({target[0]:g}), so there is nothing to rank"
    spread = float(np.std(pred))
    if spread < COLLAPSE_SPREAD * score_range:
        return f"the predictions are constant (standard deviation {spread:.1e} on a score range of {score_range:g})"
    return None


def format_value(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` decimals, or :data:`UNDEFINED` when it is not a finite number."""
    return f"{value:.{digits}f}" if math.isfinite(value) else UNDEFINED


def json_metrics(metrics: Mapping[str, float]) -> dict[str, float | None]:
    """``metrics`` for strict JSON: an undefined value (NaN, infinity) becomes null."""
    return {key: value if math.isfinite(value) else None for key, value in metrics.items()}


def compute_metrics(pred: np.ndarray, target: np.ndarray, logistic_fit: bool = True) -> dict[str, float]:
    """All IQA metrics of predictions against MOS (same scale).

    Returns:
        ``plcc``, ``srocc``, ``krocc``, ``rmse``, ``mae``, ``explained_variance``,
        ``quantile_loss_q10/q50/q90``, ``n`` and, when ``logistic_fit`` is set and the fit
        converges (at least 5 points), ``plcc_logistic4``. Correlations of constant inputs
        are NaN (undefined): write them with :func:`json_metrics` / :func:`format_value`,
        and see :func:`degenerate_reason` for why.
    """
    pred = np.asarray(pred, np.float64).ravel()
    target = np.asarray(target, np.float64).ravel()
    if pred.shape != target.shape or pred.size < 2:
        raise ValueError(f"need two equal-length arrays of >= 2 values, got {pred.shape} and {target.shape}")
    constant = np.ptp(pred) == 0 or np.ptp(target) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = {
            "n": float(pred.size),
            "plcc": float("nan") if constant else float(stats.pearsonr(pred, target).statistic),
            "srocc": float(stats.spearmanr(pred, target).statistic),
            "krocc": float(stats.kendalltau(pred, target).statistic),
        }
    error = pred - target
    result["rmse"] = float(np.sqrt(np.mean(error**2)))
    result["mae"] = float(np.mean(np.abs(error)))
    result["explained_variance"] = float(1.0 - np.var(error) / np.var(target)) if np.var(target) > 0 else float("nan")
    for q in QUANTILES:
        result[f"quantile_loss_q{round(q * 100)}"] = quantile_loss(target, pred, q)
    if logistic_fit and not constant and pred.size > 4:  # four parameters need five points
        try:
            fitted = logistic4(pred, *fit_logistic4(pred, target))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", stats.NearConstantInputWarning)  # a flat fit of a backward model
                result["plcc_logistic4"] = float(stats.pearsonr(fitted, target).statistic)
        except (RuntimeError, ValueError, TypeError):
            pass  # the fit did not converge: the raw PLCC stands alone
    return result


def within_srocc(pred: np.ndarray, target: np.ndarray, references: list[str]) -> dict[str, float]:
    """How well the model ranks the versions of each reference image: the mean per-reference SROCC.

    Images that share a reference (one source photo or crop, distorted at several levels) are
    ranked against their MOS with ``scipy.stats.spearmanr``, and the correlations are
    averaged over references. A reference counts when it has at least 3 images whose MOS is
    not constant; if the model gives all of them one score, its SROCC counts as 0 (it ranks
    nothing), not as a missing value.

    Returns:
        ``within_srocc`` (NaN when no reference counts), ``within_srocc_min`` (the worst
        reference) and ``within_references`` (how many references were ranked).
    """
    pred, target = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    if not pred.shape == target.shape == (len(references),):
        raise ValueError(f"need equal lengths, got {pred.shape}, {target.shape} and {len(references)} references")
    members: dict[str, list[int]] = {}
    for i, reference in enumerate(references):
        members.setdefault(reference, []).append(i)
    correlations = []
    for rows in members.values():
        if len(rows) < 3 or np.ptp(target[rows]) == 0:
            continue
        constant = np.ptp(pred[rows]) == 0
        correlations.append(0.0 if constant else float(stats.spearmanr(pred[rows], target[rows]).statistic))
    if not correlations:
        return {"within_srocc": float("nan"), "within_srocc_min": float("nan"), "within_references": 0.0}
    return {"within_srocc": float(np.mean(correlations)), "within_srocc_min": float(np.min(correlations)),
            "within_references": float(len(correlations))}
