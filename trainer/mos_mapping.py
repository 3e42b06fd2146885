"""Scores on the dataset's scale: a monotonic map from raw predictions to MOS, fitted on validation.

A network trained with MAE + PLCC ranks well but its raw outputs can sit off the MOS
scale (the PLCC term ignores offset and gain). After training, :func:`fit_mos_mapping`
fits an increasing map from raw predictions to MOS on the validation split only: VQEG's
4-parameter logistic (:func:`~qualitynet.trainer.metrics.fit_logistic4`, asymptotes
inside the MOS range), unless a straight line fits the validation split clearly better
(:data:`BOUNDED_PREFERENCE`). The logistic keeps every score on the dataset's scale; a
line extrapolates: a demo model's line (slope 1.8, fitted on 2 validation photos) put
crops of unseen photos at -2.6 to 10.6 on the 1-5 scale, and its INT8 copy's errors,
magnified there, failed the INT8 gate (mean 0.33 MOS) where the logistic's passed (0.09).
:class:`MosMappingLayer` applies it in torch on the unit scale the network predicts, so
the model's ``forward``, and with it every ONNX / FP16 / TensorRT export, ends with it.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from scipy import stats
from torch import nn

from qualitynet.artifact import MosMapping, ScoreScale
from qualitynet.trainer.metrics import fit_logistic4

__all__ = ["MosMappingLayer", "apply_mos_mapping", "fit_mos_mapping"]

log = logging.getLogger(__name__)

# The logistic's b4 is at least this many standard deviations of the validation predictions,
# and at least this share of the MOS range: a steeper curve is a step fitted to a few
# validation images (or to the near-constant output of an undertrained model), which
# flattens unseen images that fall outside the step onto one score (their ranking lost).
MIN_SCALE = 0.25
MIN_SCALE_OF_RANGE = 0.01
# The line replaces the logistic only when its validation RMSE is lower by more than this
# share: a few validation photos cannot tell closer fits apart, and scores on the scale matter more.
BOUNDED_PREFERENCE = 0.05


class MosMappingLayer(nn.Module):
    """A :class:`~qualitynet.artifact.MosMapping` on the unit scale: ``u -> scale*f(to_mos(u))+shift``.

    Both kinds reduce to ``gain * g(u * slope + offset) + bias`` with ``g`` the identity
    (linear) or the sigmoid (logistic4): four multiply-adds and at most one Sigmoid in
    the exported graph. The constants are plain attributes, not state_dict entries: the
    checkpoint stores the mapping itself.
    """

    def __init__(self, mapping: MosMapping, scale: ScoreScale) -> None:
        super().__init__()
        if mapping.kind not in ("linear", "logistic4"):
            raise ValueError(f"no layer for MOS mapping kind {mapping.kind!r}")
        self.sigmoid = mapping.kind == "logistic4"
        low, width = scale.low, scale.high - scale.low
        if self.sigmoid:  # m = low + u * width; out = ((b1 - b2) * sigmoid((m - b3) / b4) + b2 - low) / width
            b1, b2, b3, b4 = mapping.params
            self.slope, self.offset = width / b4, (low - b3) / b4
            self.gain, self.bias = (b1 - b2) / width, (b2 - low) / width
        else:  # out = (a * (low + u * width) + b - low) / width
            a, b = mapping.params
            self.slope, self.offset, self.gain, self.bias = a, (a * low + b - low) / width, 1.0, 0.0

    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        z = unit * self.slope + self.offset
        return (torch.sigmoid(z) if self.sigmoid else z) * self.gain + self.bias


def apply_mos_mapping(mapping: MosMapping, scale: ScoreScale, pred: np.ndarray) -> np.ndarray:
    """Map raw MOS-scale predictions with the same layer the model's graph uses."""
    if mapping.kind == "identity":
        return np.asarray(pred, np.float64)
    layer = MosMappingLayer(mapping, scale)
    unit = torch.from_numpy(np.asarray(scale.to_unit(np.asarray(pred, np.float64)), np.float64))
    with torch.no_grad():
        return np.asarray(scale.to_mos(layer(unit).numpy()), np.float64)


def fit_mos_mapping(pred: np.ndarray, target: np.ndarray, scale: ScoreScale, fitted_on: str = "val") -> MosMapping:
    """Fit the increasing map from raw predictions to MOS: the logistic, bounded by the scale, unless
    the line's RMSE is lower by more than :data:`BOUNDED_PREFERENCE` (or the logistic does not converge).

    Args:
        pred: raw predictions of the validation split, MOS scale.
        target: its MOS.
        scale: the dataset's MOS range (the logistic's asymptotes stay inside it).
        fitted_on: which split ``pred`` comes from, recorded with the mapping.

    Returns:
        The mapping; ``identity`` when the predictions do not rank the split upwards (no
        increasing map can help) or there are fewer than five points.
    """
    pred, target = np.asarray(pred, np.float64).ravel(), np.asarray(target, np.float64).ravel()
    degenerate = pred.size < 5 or not np.all(np.isfinite(pred)) or np.ptp(pred) == 0 or np.ptp(target) == 0
    if degenerate or stats.pearsonr(pred, target).statistic <= 0:
        log.warning("MOS mapping not fitted: the %s predictions do not rise with MOS; scores stay raw", fitted_on)
        return MosMapping(fitted_on=fitted_on)
    slope, intercept = np.polyfit(pred, target, 1)
    best = line = MosMapping("linear", (float(slope), float(intercept)), fitted_on)

    def rmse(mapping: MosMapping) -> float:
        return float(np.sqrt(np.mean((apply_mos_mapping(mapping, scale, pred) - target) ** 2)))

    try:
        floor = max(MIN_SCALE * float(np.std(pred)), MIN_SCALE_OF_RANGE * (scale.high - scale.low))
        bounded = MosMapping("logistic4", fit_logistic4(pred, target, (scale.low, scale.high), floor), fitted_on)
        if rmse(line) >= (1 - BOUNDED_PREFERENCE) * rmse(bounded):
            best = bounded
    except (RuntimeError, ValueError):
        log.info("the logistic MOS mapping did not converge; using the linear one")
    log.info("MOS mapping: %s %s (%s RMSE %.3f, raw %.3f)", best.kind, np.round(best.params, 4), fitted_on,
             rmse(best), rmse(MosMapping()))
    return best
