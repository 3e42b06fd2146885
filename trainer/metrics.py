"""IQA metrics: correlations from scipy.stats, errors, explained variance, quantile loss.

PLCC is reported on raw predictions (``plcc``) and, as VQEG practice does, after a
4-parameter logistic fit of predictions to MOS (``plcc_logistic4``); both are labelled.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import optimize, stats

__all__ = ["QUANTILES", "compute_metrics", "logistic4", "quantile_loss"]

QUANTILES = (0.1, 0.5, 0.9)


def quantile_loss(target: np.ndarray, pred: np.ndarray, q: float) -> float:
    """Mean pinball loss: ``max(q * e, (q - 1) * e)`` with ``e = target - pred``."""
    error = np.asarray(target, np.float64) - np.asarray(pred, np.float64)
    return float(np.mean(np.maximum(q * error, (q - 1.0) * error)))


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG's monotonic 4-parameter logistic: ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    with np.errstate(over="ignore"):  # exp overflow -> inf -> the curve's asymptote, as intended
        return (b1 - b2) / (1.0 + np.exp(-(x - b3) / (np.abs(b4) + 1e-12))) + b2


def _fit_logistic4(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    start = [target.max(), target.min(), float(np.median(pred)), float(np.std(pred)) or 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params, _ = optimize.curve_fit(logistic4, pred, target, p0=start, maxfev=20000)
    return logistic4(pred, *params)


def compute_metrics(pred: np.ndarray, target: np.ndarray, logistic_fit: bool = True) -> dict[str, float]:
    """All IQA metrics of predictions against MOS (same scale).

    Returns:
        ``plcc``, ``srocc``, ``krocc``, ``rmse``, ``mae``, ``explained_variance``,
        ``quantile_loss_q10/q50/q90``, ``n`` and, when ``logistic_fit`` is set and the fit
        converges (at least 5 points), ``plcc_logistic4``. Correlations of constant inputs
        are NaN.
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
            result["plcc_logistic4"] = float(stats.pearsonr(_fit_logistic4(pred, target), target).statistic)
        except (RuntimeError, ValueError, TypeError):
            pass  # the fit did not converge: the raw PLCC stands alone
    return result
