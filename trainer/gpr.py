"""Fitting the deep-features model: cached pooled features, one Gaussian process per candidate, the
validation split's choice, and an ordinary checkpoint.

``iqa-train --config deepfeat-lite`` (or ``deepfeat``) lands here from
:func:`~qualitynet.trainer.train.train`. Each candidate backbone runs once over every split
(each input and its flip; each crop under a crops view), pooling all its candidate layers
in that pass (:func:`candidate_features`, :func:`~qualitynet.trainer.frozen.pool_views`). For
each layer, scikit-learn's ``GaussianProcessRegressor`` with ``C * Matern(nu=2.5) + White``
is fitted on the training split by maximising the log marginal likelihood
(:func:`fit_gpr`): one training point per image, the mean of its views' features. The layer
whose predictions rank the validation split best (SROCC, then PLCC) is kept; ``candidates.json``
records every candidate's figures. The run then ends as every ``iqa-train`` run does
(:func:`~qualitynet.trainer.train.score_run`): MOS mapping fitted on validation, test
metrics, ``metrics.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import Checkpoint, save_checkpoint, software_versions
from qualitynet.trainer.datasets import DatasetIndex, check_images, make_split
from qualitynet.trainer.deepfeat import (
    DeepFeatConfig,
    DeepFeatGpr,
    Matern52Mean,
    PooledLayers,
    deepfeat_gpr,
    get_deepfeat_config,
    pooled_layers,
)
from qualitynet.trainer.distributed import World
from qualitynet.trainer.frozen import pool_views
from qualitynet.trainer.metrics import compute_metrics, format_value, json_metrics
from qualitynet.trainer.registry import ModelSpec, factory_reference
from qualitynet.trainer.torch_data import IqaDataset, ScoredDataset, default_workers, predict
from qualitynet.trainer.train import TrainResult, TrainSettings, resolve_device, score_run

__all__ = ["TUNE_POINTS", "GprFit", "ViewFeatures", "candidate_features", "fit_gpr", "gpr_kernel", "train_gpr"]

log = logging.getLogger(__name__)

# The hyper-parameters are tuned on at most this many training images (see fit_gpr).
TUNE_POINTS = 400
# (backbone, its extractor over every candidate layer, each split's features (N, views, [crops,] C))
BackboneFeatures = dict[str, tuple[PooledLayers, dict[str, torch.Tensor]]]


@dataclass
class GprFit:
    """A fitted process, in the terms :class:`~qualitynet.trainer.deepfeat.Matern52Mean` stores.

    Attributes:
        center / inv_scale: ``z = (features - center) * inv_scale`` (centred, scaled, over the length scale).
        points: the training points in ``z`` units, ``(N, C)``.
        weights: ``alpha`` times the constant kernel and the targets' standard deviation.
        offset: the targets' mean.
        kernel: the fitted kernel, as scikit-learn prints it.
        log_marginal_likelihood: at the fitted hyper-parameters.
        process: the fitted ``GaussianProcessRegressor`` (on the scaled features and standardised targets).
    """

    center: np.ndarray
    inv_scale: np.ndarray
    points: np.ndarray
    weights: np.ndarray
    offset: float
    kernel: str
    log_marginal_likelihood: float
    process: Any

    def regressor(self, dtype: torch.dtype = torch.float32) -> Matern52Mean:
        """The predictive mean as a module, its constants stored as ``dtype``."""
        module = Matern52Mean(*self.points.shape).to(dtype)
        module.set_points(*(torch.from_numpy(np.asarray(a, np.float64)).to(dtype)
                            for a in (self.center, self.inv_scale, self.points, self.weights)), self.offset)
        return module


def gpr_kernel(features: int) -> Any:
    """The covariance before fitting: ``ConstantKernel(1) * Matern(sqrt(C), nu=2.5) + WhiteKernel(0.1)``.

    For ``C`` features scaled to unit root-mean-square deviation, ``sqrt(C)`` is the order of
    the distance between two points. Bounds: constant 1e-3-1e3, length 0.01-100 x ``sqrt(C)``,
    noise 1e-6-10 (on standardised targets).
    """
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    root = math.sqrt(features)
    return (ConstantKernel(1.0, (1e-3, 1e3)) * Matern(root, (1e-2 * root, 1e2 * root), nu=2.5)
            + WhiteKernel(0.1, (1e-6, 1e1)))


def fit_gpr(features: np.ndarray, targets: np.ndarray, seed: int = 0, restarts: int = 1,
            tune_points: int = TUNE_POINTS) -> GprFit:
    """Fit ``C * Matern(nu=2.5) + White`` (:func:`gpr_kernel`) to ``(features, targets)``, its
    hyper-parameters by maximising the log marginal likelihood.

    Features are centred and divided by one number, their root-mean-square deviation (not per
    dimension: that would give nearly constant channels, and their rounding in FP16 or INT8
    exports, the weight of informative ones), and targets standardised, before fitting. One
    isotropic length scale, the constant and the noise level are the hyper-parameters; they
    maximise the marginal likelihood of at most ``tune_points`` training images (a seeded
    random subset: each optimiser step costs O(N^3), minutes at N = 1,000 on two CPU cores),
    and the process is then conditioned on every training image.

    Args:
        features: ``(N, C)``, one row per training image.
        targets: ``(N,)``.
        seed: the subset and the optimiser restarts' random starting points.
        restarts: extra optimiser runs from random hyper-parameters.
        tune_points: the subset's size.

    Raises:
        QualityNetError: fewer than 3 points, or features or targets that are not finite.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor

    x = np.asarray(features, np.float64)
    y = np.asarray(targets, np.float64).ravel()
    if len(x) < 3 or not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise QualityNetError(f"a Gaussian process needs at least 3 training images with finite features and "
                              f"scores; got {len(x)}")
    center = x.mean(axis=0)
    spread = np.full(x.shape[1], float(np.sqrt(np.mean((x - center) ** 2))) or 1.0)
    z = (x - center) / spread
    y_mean, y_std = float(y.mean()), float(y.std()) or 1.0
    standard = (y - y_mean) / y_std
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.choice(len(z), tune_points, replace=False)) if len(z) > tune_points else np.arange(len(z))
    tuned = GaussianProcessRegressor(gpr_kernel(x.shape[1]), n_restarts_optimizer=restarts, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        tuned.fit(z[subset], standard[subset])
    for warning in caught:
        log.info("Gaussian process fit: %s", str(warning.message).splitlines()[0])
    process = GaussianProcessRegressor(tuned.kernel_, optimizer=None).fit(z, standard)
    fitted = process.kernel_
    constant, length = float(fitted.k1.k1.constant_value), float(fitted.k1.k2.length_scale)
    return GprFit(center, 1.0 / (spread * length), z / length, process.alpha_ * constant * y_std, y_mean, str(fitted),
                  float(process.log_marginal_likelihood_value_), process)


class ViewFeatures(ScoredDataset):
    """Cached pooled features as :func:`~qualitynet.trainer.torch_data.predict` takes them: an item is
    ``(views, C)``, or ``(crops, views, C)`` under a crops view."""

    def __init__(self, features: torch.Tensor, dataset: IqaDataset) -> None:
        self.features = features.transpose(1, 2) if dataset.crops else features  # (N, views, crops, C) in
        self.targets = _targets(dataset)
        self.scale = dataset.scale
        self.crops = dataset.crops

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[item], self.targets[item]


class _CachedScorer(nn.Module):
    """A :class:`DeepFeatGpr` fed cached features: ``(B, views, C)`` -> ``(B, 1)``."""

    def __init__(self, model: DeepFeatGpr) -> None:
        super().__init__()
        self.model = model

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return self.model.score_views(views)


def _targets(dataset: IqaDataset) -> torch.Tensor:
    return torch.tensor(dataset.scale.to_unit(dataset.index.mos[dataset.indices]), dtype=torch.float32)


def _image_rows(features: torch.Tensor) -> np.ndarray:
    """One training point per image: the mean over its views (and crops), ``(N, C)``."""
    return features.flatten(1, -2).mean(dim=1).double().numpy()


def candidate_features(config: DeepFeatConfig, parts: dict[str, IqaDataset], pretrained: bool, batch_size: int,
                       device: str, workers: int, quiet: bool) -> BackboneFeatures:
    """Every candidate backbone's pooled features of every split, all its candidate layers in one pass."""
    found: BackboneFeatures = {}
    for backbone, layers in config.candidates:
        extractor = pooled_layers(backbone, layers, pretrained).to(device).eval()
        found[backbone] = (extractor, {
            name: pool_views(extractor, dataset, batch_size, device, workers, quiet, f"{backbone} features ({name})")
            [0] for name, dataset in parts.items()})
    return found


def _refuse(settings: TrainSettings, resume: str | Path | None, world: World | None) -> None:
    name = settings.config
    if resume:
        raise QualityNetError(f"--resume: --config {name} is fitted in one step (a Gaussian process, no epochs); "
                              "there is nothing to resume: run iqa-train again")
    if world is not None and world.size > 1:
        raise QualityNetError(f"--config {name} fits a Gaussian process in one process; leave out --nproc / torchrun")
    if not settings.freeze_backbones:
        raise QualityNetError(f"--config {name} regresses the fixed features of a frozen backbone; leave out "
                              "--train-backbones")


def train_gpr(index: DatasetIndex, out_dir: str | Path, settings: TrainSettings, resume: str | Path | None = None,
              world: World | None = None) -> TrainResult:
    """Fit a deep-features + Gaussian-process model (``settings.config`` names a
    :data:`~qualitynet.trainer.deepfeat.DEEPFEAT_CONFIGS` entry) and write the run's files.

    Writes ``split.json``, ``candidates.json`` (every backbone/layer's validation figures
    and fitted kernel), ``model.pt``, ``metrics.json`` and ``test_scatter.png``; the
    returned result counts the fit as epoch 1 of 1.

    Raises:
        QualityNetError: ``resume``, several processes, ``--train-backbones``, or a split too
            small to fit.
    """
    started = time.perf_counter()
    _refuse(settings, resume, world)
    config = get_deepfeat_config(str(settings.config))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    device = resolve_device(settings.device)
    workers = default_workers() if settings.workers < 0 else settings.workers
    split = make_split(index, settings.seed, settings.split_ratios)
    split.save(out / "split.json")
    check_images(index.paths)
    preprocess = settings.preprocess(config)
    parts = {name: IqaDataset(index, index.subset(getattr(split, name)), preprocess, index.score_scale,
                              flip=config.flips) for name in ("train", "val", "test")}
    log.info("%s: %d train / %d val / %d test images; %s on %s", index.name, *(len(parts[n]) for n in parts),
             config.name, device)
    features = candidate_features(config, parts, settings.pretrained, settings.batch_size, device, workers,
                                  settings.quiet)
    targets = _targets(parts["train"]).double().numpy()
    candidates, best = [], None
    for backbone, (extractor, split_features) in features.items():
        for layer, span in extractor.offsets().items():
            fit_started = time.perf_counter()
            fit = fit_gpr(_image_rows(split_features["train"][..., span]), targets, settings.seed)
            model = DeepFeatGpr(extractor.keep(layer), fit.regressor(), config.flips).eval()
            val_set = ViewFeatures(split_features["val"][..., span], parts["val"])
            val = compute_metrics(*predict(_CachedScorer(model), val_set, settings.batch_size), logistic_fit=False)
            row = {"backbone": backbone, "layer": layer, "features": span.stop - span.start,
                   "kernel": fit.kernel, "log_marginal_likelihood": fit.log_marginal_likelihood,
                   "fit_seconds": round(time.perf_counter() - fit_started, 2),
                   **{f"val_{k}": v for k, v in json_metrics(val).items()}}
            candidates.append(row)
            log.info("%s %s: val SROCC %s, PLCC %s (%s)", backbone, layer, format_value(val["srocc"], 3),
                     format_value(val["plcc"], 3), fit.kernel)
            rank = (_finite(val["srocc"]), _finite(val["plcc"]))
            if best is None or rank > best[0]:
                best = (rank, model, span, row, val)
    (out / "candidates.json").write_text(json.dumps(candidates, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    assert best is not None  # every config has a candidate
    _, model, span, chosen, val = best
    model.cpu()
    spec = ModelSpec(config.name, factory_reference(deepfeat_gpr),
                     {"backbone": chosen["backbone"], "layer": chosen["layer"], "train_points": len(targets),
                      "features": chosen["features"], "flips": config.flips})
    kept = Checkpoint(spec, {k: v.detach().cpu() for k, v in model.state_dict().items()}, preprocess,
                      index.score_scale, index.name, {f"val_{k}": v for k, v in val.items()},
                      software_versions())
    save_checkpoint(out / "model.pt", kept)
    log.info("kept %s %s (validation SROCC %s)", chosen["backbone"], chosen["layer"], chosen["val_srocc"])
    chosen_features = features[chosen["backbone"]][1]
    cached = {name: ViewFeatures(chosen_features[name][..., span], parts[name]) for name in ("val", "test")}
    test_metrics, raw_metrics = score_run(out, kept, _CachedScorer(model), dict(cached), settings.batch_size, "cpu",
                                          0, {"best_epoch": 1, "chosen": {k: chosen[k] for k in ("backbone", "layer")}})
    return TrainResult(out, 1, 1, False, test_metrics, time.perf_counter() - started, raw_metrics)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else -math.inf
