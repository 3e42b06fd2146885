"""Parity checks: does an exported model score real photos as its reference does?

A *score function* (:data:`ScoreFn`) maps an NCHW float32 batch to unit-scale scores
``(N,)``: the runtime's runners (``OrtRunner.infer``, ``TrtRunner.infer``), so the export
checks exactly what ``iqa-run`` computes, or :func:`torch_scorer`. A :class:`Reference`
(PyTorch eager for the FP32 ONNX model; the FP32 ONNX model for the FP16 one and for
TensorRT engines) scores the photos once. The candidate scores them at each batch size (1
and all photos at once, so the dynamic batch axis is exercised), and each run is compared
in the manner of Polygraphy's ``CompareFunc.simple``: a score fails only if it exceeds both
the absolute and the relative bound, and the result reports the tolerance actually needed
with the Spearman rank correlation (SROCC) of the two score lists.

Untrained networks amplify rounding: rounding the input to FP16 moves the paper config's
random-weight scores by ~0.08, more than any FP16 export error. So each check also
measures the reference's *noise floor* (its own response to the smallest input change the
candidate's precision can represent) and widens ``atol`` to ``sensitivity`` times that
floor; for a trained model the floor is far below ``atol`` and changes nothing.

Inputs come from real photos through :mod:`qualitynet.runtime.preprocess`, the one
preprocessing implementation, never from random noise.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qualitynet.agreement import agreement
from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.export.types import Comparison, Tolerance, Verification
from qualitynet.runtime.discovery import expand_photos
from qualitynet.runtime.preprocess import image_to_inputs, load_rgb

if TYPE_CHECKING:
    import torch

__all__ = [
    "MAX_PHOTOS",
    "Reference",
    "ScoreFn",
    "TOLERANCES",
    "compare",
    "load_photos",
    "run_batched",
    "torch_scorer",
    "verify",
]

log = logging.getLogger(__name__)

ScoreFn = Callable[[np.ndarray], np.ndarray]

# Per candidate precision, on the unit scale (1.0 = the model's whole MOS range). FP32 vs
# PyTorch eager only differs in summation order: ~1e-5 expected on a trained model, while
# each real bug tried (BatchNorm in train mode, a missing std division, the score bias off
# by 0.01) moves scores by 1e-2 or more (tests/export/test_export_verify.py). FP16 vs the
# FP32 ONNX model: ~3 significant digits through ~300 layers. Random weights amplify
# rounding far more (measured, FP32 / FP16 max abs: tiny 1.4e-5 / 2.0e-2, paper config
# 9.0e-5 / 0.15); the noise floor (Reference.noise_floor) absorbs that, not these bounds.
TOLERANCES = {
    "fp32": Tolerance(atol=5e-5, rtol=1e-4, min_srocc=0.99),
    "fp16": Tolerance(atol=5e-3, rtol=1e-2, min_srocc=0.95),
}
MAX_PHOTOS = 32
RANK_SPREAD = 10.0  # SROCC is judged only when the reference scores span > 10 x the base atol


def load_photos(photos: str | Path | Sequence[str | Path] | None, cfg: PreprocessCfg,
                limit: int = MAX_PHOTOS) -> tuple[np.ndarray, list[str]]:
    """Preprocess verification photos into one ``(N, 3, H, W)`` float32 array, decoded and viewed
    as ``cfg`` says (a crops view gives each photo's crops, named ``photo#crop``).

    Args:
        photos: a folder, a list of image files, or ``None`` for the photos bundled with
            scikit-image (:func:`qualitynet.trainer.demo_dataset.demo_photo`).
        cfg: the model's preprocessing.
        limit: use at most this many photos (the first in sorted order).

    Returns:
        The batch and the photos' names, in the same order.

    Raises:
        QualityNetError: fewer than 2 photos, or a photo cannot be decoded.
    """
    if photos is None:
        from qualitynet.trainer.demo_dataset import DEMO_SOURCES, demo_photo

        names = list(DEMO_SOURCES[:limit])
        images = [demo_photo(name) for name in names]
    else:
        paths = expand_photos(photos)
        if len(paths) > limit:
            log.info("verifying on the first %d of %d photos in %s", limit, len(paths), photos)
        names = paths[:limit]
        images = [load_rgb(path, cfg) for path in names]
    if len(names) < 2:
        raise QualityNetError(f"{photos}: verification needs at least 2 photos, found {len(names)}")
    per_image = [image_to_inputs(image, cfg) for image in images]
    if cfg.view == "crops":
        names = [f"{name}#{crop}" for name in names for crop in cfg.crops]
    return np.concatenate(per_image), names


def torch_scorer(model: torch.nn.Module) -> ScoreFn:
    """Score with a PyTorch module (in eval mode, as ``Checkpoint.build_model`` returns it)."""
    import torch

    def score(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            scores: np.ndarray = model(torch.from_numpy(batch)).numpy()
        return scores.reshape(-1)

    return score


def run_batched(scorer: ScoreFn, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """Scores of all ``inputs``, fed ``batch_size`` at a time."""
    return np.concatenate([scorer(inputs[i:i + batch_size]) for i in range(0, len(inputs), batch_size)])


class Reference:
    """A trusted model's scores on the verification photos and its noise floors, each computed once.

    Args:
        name: what it is, e.g. ``"torch"`` or ``"model.onnx"``.
        scorer: the trusted model.
        inputs: preprocessed photos, ``(N, 3, H, W)`` float32.
    """

    def __init__(self, name: str, scorer: ScoreFn, inputs: np.ndarray) -> None:
        self.name = name
        self.scorer = scorer
        self.inputs = inputs
        self._floors: dict[str, float] = {}

    @cached_property
    def scores(self) -> np.ndarray:
        """The reference's scores, all photos in one batch."""
        return run_batched(self.scorer, self.inputs, len(self.inputs))

    def noise_floor(self, precision: str) -> float:
        """Largest score change when the input moves by one rounding step at ``precision``.

        ``fp16``: the input rounded to FP16. ``fp32`` (the input's own precision): each
        value moved one unit in the last place, up or down at random (fixed seed).
        """
        if precision not in self._floors:
            if precision == "fp16":
                nudged = self.inputs.astype(np.float16).astype(np.float32)
            else:
                signs = np.random.default_rng(0).choice(np.array([-np.inf, np.inf], np.float32), size=self.inputs.shape)
                nudged = np.nextafter(self.inputs, signs)
            moved = run_batched(self.scorer, nudged, len(nudged))
            self._floors[precision] = float(np.abs(moved.astype(np.float64) - self.scores).max())
        return self._floors[precision]


def compare(reference: np.ndarray, candidate: np.ndarray, tolerance: Tolerance, label: str = "",
            batch_size: int = 0, noise_floor: float = 0.0, rank_spread: float | None = None) -> Comparison:
    """Compare two score lists of the same photos.

    Args:
        reference: the trusted scores.
        candidate: the scores under test, same order.
        tolerance: the bounds (already widened for ``noise_floor`` if wanted).
        label: what is compared, for messages.
        batch_size: the candidate's batch size, for the record.
        noise_floor: the reference's noise floor, for the record.
        rank_spread: SROCC is judged only when the reference scores span more than this
            (default ``RANK_SPREAD * tolerance.atol``); a model that scores every photo
            (nearly) alike is judged by the error bounds alone.

    Returns:
        The comparison (the figures of :func:`qualitynet.agreement.agreement`), truthy when it
        passes. Non-finite scores always fail.
    """
    try:
        agreed = agreement(reference, candidate)
    except QualityNetError as exc:
        raise QualityNetError(f"{label}: {exc}") from None
    mismatches = int(np.count_nonzero((agreed.abs_error > tolerance.atol) & (agreed.rel_error > tolerance.rtol)))
    spread = float(np.ptp(reference))
    ranks_ok = (agreed.srocc >= tolerance.min_srocc
                or spread <= (RANK_SPREAD * tolerance.atol if rank_spread is None else rank_spread)
                or 0 < tolerance.rank_resolution and agreed.flipped_gap <= tolerance.rank_resolution)
    return Comparison(
        label=label,
        batch_size=batch_size,
        tolerance=tolerance,
        noise_floor=noise_floor,
        max_abs=agreed.max_abs,
        max_rel=agreed.max_rel,
        mean_abs=agreed.mean_abs,
        median_abs=agreed.median_abs,
        p90_abs=agreed.p90_abs,
        srocc=agreed.srocc,
        flipped_gap=agreed.flipped_gap,
        mismatches=mismatches,
        passed=bool(agreed.finite and mismatches == 0 and ranks_ok),
    )


def verify(candidate: ScoreFn, reference: Reference, candidate_name: str, precision: str = "fp32",
           tolerance: Tolerance | None = None, batch_sizes: Sequence[int] | None = None) -> Verification:
    """Score the reference's photos with ``candidate`` at each batch size and compare.

    Args:
        candidate: the exported model under test.
        reference: its reference, holding the photos.
        candidate_name: e.g. ``"model.onnx"``.
        precision: the candidate's precision, ``"fp32"`` or ``"fp16"``; picks the default
            tolerance and the noise floor.
        tolerance: override ``TOLERANCES[precision]``.
        batch_sizes: candidate batch sizes; default 1 and all photos at once.

    Returns:
        The verification, truthy when every batch size passes; each result is logged.
    """
    start = time.perf_counter()
    base = tolerance or TOLERANCES[precision]
    floor = reference.noise_floor(precision)
    bounds = base.widened(floor)
    if bounds.atol > base.atol:
        log.info("%s moves its scores by up to %.1e when its input moves by one %s rounding step, so atol is "
                 "widened to %.1e (typical of untrained weights)", reference.name, floor, precision, bounds.atol)
    inputs = reference.inputs
    label = f"{candidate_name} vs {reference.name}"
    comparisons = [
        compare(reference.scores, run_batched(candidate, inputs, size), bounds, label, size, floor,
                rank_spread=RANK_SPREAD * base.atol)
        for size in (batch_sizes or (1, len(inputs)))
    ]
    result = Verification(candidate_name, reference.name, len(inputs), comparisons, time.perf_counter() - start)
    for comparison in comparisons:
        (log.info if comparison else log.error)("%s", comparison.summary())
    return result
