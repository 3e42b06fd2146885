"""Score a dataset with a trained checkpoint and compute every metric (``iqa-eval``).

Metrics are computed on the checkpoint's MOS-mapped scores (what exported models output)
and, labelled as such, on the network's raw output before the mapping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qualitynet.artifact import PreprocessCfg
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.datasets import DatasetIndex, Split, check_images
from qualitynet.trainer.metrics import compute_metrics, degenerate_reason, within_srocc
from qualitynet.trainer.mos_mapping import apply_mos_mapping
from qualitynet.trainer.torch_data import IqaDataset, crop_mean, default_workers, predict
from qualitynet.trainer.train import resolve_device

__all__ = ["Evaluation", "evaluate_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    """Metrics and the per-image predictions behind them (MOS scale of the checkpoint).

    ``metrics`` and ``predictions`` are after the checkpoint's MOS mapping; ``raw_metrics``
    are of the network's output before it (the same when the mapping is the identity).
    With a crops view an image's prediction is the mean of its crops' (mapped) scores, as
    exported models score it; ``view`` says how the images were decoded and seen. Both
    hold the mean within-image SROCC (``within_srocc``: how each reference image's versions
    are ranked; NaN when no reference has several MOS levels, as in KonIQ-10k).
    """

    metrics: dict[str, float]
    predictions: np.ndarray
    targets: np.ndarray
    keys: list[str]
    raw_metrics: dict[str, float]
    mapping: str = "identity"
    view: str = ""
    undefined_because: str | None = None
    """Why the correlations are undefined (constant predictions or scores), or None."""


def evaluate_checkpoint(checkpoint_path: str | Path, index: DatasetIndex, split: str = "all",
                        split_file: str | Path | None = None, batch_size: int = 16, device: str = "auto",
                        workers: int = -1, quiet: bool = False, preprocess: PreprocessCfg | None = None) -> Evaluation:
    """Predict every image of ``index`` (or the run's test split) and compute the metrics.

    Args:
        checkpoint_path: a ``model.pt`` from ``iqa-train``.
        index: the dataset to score.
        split: ``all`` or ``test`` (the test images named in the run's ``split.json``).
        split_file: the ``split.json`` to use; default: next to the checkpoint.
        batch_size / device / workers: as for training.
        quiet: no progress bar.
        preprocess: decode and view the images another way than the checkpoint's record says
            (for comparisons: the model was trained, and is scored everywhere, as the record says).
    """
    checkpoint = load_checkpoint(checkpoint_path)
    if split == "test":
        keys = Split.load(Path(split_file) if split_file else Path(checkpoint_path).parent / "split.json").test
        indices = index.subset(keys)
    else:
        indices = list(range(len(index)))
        keys = [index.key(i) for i in indices]
    check_images([index.paths[i] for i in indices])
    if index.score_scale.low != checkpoint.score_scale.low or index.score_scale.high != checkpoint.score_scale.high:
        log.warning("the model predicts on %s (%g-%g) but %s is on %g-%g: correlations are comparable, "
                    "RMSE/MAE are not", checkpoint.score_scale.name, checkpoint.score_scale.low,
                    checkpoint.score_scale.high, index.name, index.score_scale.low, index.score_scale.high)
    device = resolve_device(device)
    model = checkpoint.build_model(mapped=False).to(device)
    cfg = preprocess or checkpoint.preprocess
    dataset = IqaDataset(index, indices, cfg, checkpoint.score_scale)
    workers = default_workers() if workers < 0 else workers
    raw_crops, target = predict(model, dataset, batch_size, device, workers, quiet=quiet, desc="scoring",
                                per_crop=True)
    pred = crop_mean(apply_mos_mapping(checkpoint.mos_mapping, checkpoint.score_scale, raw_crops))
    raw = crop_mean(raw_crops)
    references = [index.reference(i) for i in indices]
    return Evaluation({**compute_metrics(pred, target), **within_srocc(pred, target, references)}, pred, target,
                      keys, {**compute_metrics(raw, target), **within_srocc(raw, target, references)},
                      checkpoint.mos_mapping.kind, cfg.describe(),
                      degenerate_reason(pred, target, checkpoint.score_scale.high - checkpoint.score_scale.low))
