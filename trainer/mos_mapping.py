"""Scores on the dataset's scale: a monotonic map from raw predictions to MOS, fitted on validation.

A network trained with MAE + PLCC ranks well but its raw outputs can sit off the MOS
scale (the PLCC term ignores offset and gain). After training, :func:`fit_mos_mapping`
fits an increasing map from raw predictions to MOS on the validation split only: VQEG's
4-parameter logistic (:func:`~qualitynet.trainer.metrics.fit_logistic4`, asymptotes
inside the MOS range) or a straight line, whichever has the lower validation RMSE.
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
    """Fit the increasing map from raw predictions to MOS with the lower RMSE.

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
    candidates = [MosMapping("linear", (float(slope), float(intercept)), fitted_on)]
    try:
        floor = max(MIN_SCALE * float(np.std(pred)), MIN_SCALE_OF_RANGE * (scale.high - scale.low))
        params = fit_logistic4(pred, target, (scale.low, scale.high), floor)
        candidates.append(MosMapping("logistic4", params, fitted_on))
    except (RuntimeError, ValueError):
        log.info("the logistic MOS mapping did not converge; using the linear one")

    def rmse(mapping: MosMapping) -> float:
        return float(np.sqrt(np.mean((apply_mos_mapping(mapping, scale, pred) - target) ** 2)))

    best = min(candidates, key=rmse)
    log.info("MOS mapping: %s %s (%s RMSE %.3f, raw %.3f)", best.kind, np.round(best.params, 4), fitted_on,
             rmse(best), rmse(MosMapping()))
    return best
