"""The frozen-backbone fast path: backbone features computed once, then only the rest trains.

In QualityNet, attention and head see only globally pooled backbone features. With the
backbones frozen (ImageNet weights, BatchNorm in eval mode) those features are a fixed
function of the image, so each image's (and, for training, its horizontal flip's) pooled
features are computed once; every epoch then trains attention and head on the cached
vectors, which takes seconds on a CPU instead of minutes. This is exactly training with
frozen backbones: the random flip picks the cached flipped view, and the checkpoint is
the whole model (backbones included), as from the ordinary path.

Any model with the :class:`FrozenSplit` methods trains this way: for the multi-level,
multi-scale model (:mod:`qualitynet.trainer.mlms`) the cached row is its levels' feature maps,
flattened, rather than pooled vectors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch
from torch import nn

from qualitynet._cli import progress
from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.trainer.datasets import DatasetIndex
from qualitynet.trainer.torch_data import IqaDataset, ScoredDataset, make_loader

__all__ = ["FrozenSplit", "PooledFeatures", "PooledHead", "SharedFeatures", "cache_pooled_features", "pool_views",
           "scores_from_features"]


class FrozenSplit(Protocol):
    """A network cut into a frozen part whose output is cached and a trainable rest
    (:class:`~qualitynet.trainer.model.QualityNet`, :class:`~qualitynet.trainer.mlms.MlmsIqa`)."""

    def freeze_backbones(self) -> None:
        """Stop gradients into the frozen part."""

    def frozen_modules(self) -> list[nn.Module]:
        """The modules that stay in eval mode while the rest trains."""

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part's output for a batch of inputs, one row per input: ``(N, F)``."""

    def forward_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The unit-scale score ``(N, 1)`` from :meth:`forward_pooled`'s rows."""

    def eval(self) -> nn.Module:
        """``nn.Module.eval``."""


class PooledFeatures(ScoredDataset):
    """``(pooled features, target)`` pairs; with two cached views, ``flip`` picks one at random."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, dataset: IqaDataset) -> None:
        # (N, views, C), or (N, views, crops, C) for a crops view: view 1, when present, is the flipped image
        self.features = features
        self.targets = targets
        self.scale = dataset.scale
        self.flip = dataset.flip
        self.crops = dataset.crops

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        view = 1 if self.flip and torch.rand(()) < 0.5 else 0
        return self.features[item, view], self.targets[item]


class PooledHead(nn.Module):
    """The trainable part of a model, fed cached features (see the module docstring)."""

    def __init__(self, model: FrozenSplit) -> None:
        super().__init__()
        self.model = model
        self.frozen = model.frozen_modules()

    def train(self, mode: bool = True) -> PooledHead:
        super().train(mode)
        for module in self.frozen:
            module.eval()  # frozen: BatchNorm keeps its ImageNet statistics
        return self

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.forward_from_pooled(pooled)


@torch.inference_mode()
def pool_views(pooled: Callable[[torch.Tensor], torch.Tensor], dataset: IqaDataset, batch_size: int, device: str,
               workers: int, quiet: bool, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of ``dataset``'s images through ``pooled`` (a batch of network inputs -> ``(B, C)``).

    Returns:
        The features, ``(N, views, C)``, or ``(N, views, crops, C)`` for a crops view (view 1,
        present when ``dataset.flip`` is set, is the horizontally flipped input), and the
        unit-scale targets ``(N,)``.
    """
    unflipped = IqaDataset(dataset.index, dataset.indices, dataset.preprocess, dataset.scale)
    features, targets = [], []
    for images, target in progress(make_loader(unflipped, batch_size, False, workers), quiet=quiet, desc=desc,
                                   unit="batch", leave=False):
        images = images.to(device)
        views = [images, images.flip(-1)] if dataset.flip else [images]  # a crops view flips each crop
        rows = [pooled(v.flatten(0, 1) if dataset.crops else v).float().cpu() for v in views]
        features.append(torch.stack([p.reshape(len(images), dataset.crops, -1) if dataset.crops else p
                                     for p in rows], dim=1))
        targets.append(target)
    return torch.cat(features), torch.cat(targets)


def _pool(model: FrozenSplit, dataset: IqaDataset, batch_size: int, device: str, workers: int,
          quiet: bool, desc: str) -> PooledFeatures:
    return PooledFeatures(*pool_views(model.forward_pooled, dataset, batch_size, device, workers, quiet, desc),
                          dataset)


def cache_pooled_features(model: FrozenSplit, parts: dict[str, IqaDataset], batch_size: int, device: str,
                          workers: int, quiet: bool = False) -> tuple[PooledHead, dict[str, ScoredDataset]]:
    """Freeze ``model``'s backbones and compute every split's frozen features (pooled, for QualityNet) once.

    Args:
        model: the model to train (its backbones are frozen in place).
        parts: the splits; those with ``flip`` set (training) also cache the flipped view.
        batch_size / device / workers: for the one pass through the backbones.
        quiet: no progress bars.

    Returns:
        The trainable module over cached features and the cached splits, under the same names.
    """
    model.freeze_backbones()
    model.eval()
    cached: dict[str, ScoredDataset] = {
        name: _pool(model, dataset, batch_size, device, workers, quiet, f"backbone features ({name})")
        for name, dataset in parts.items()}
    return PooledHead(model), cached


class SharedFeatures:
    """One pass of frozen backbones over a whole dataset, served to many :func:`~qualitynet.trainer.train.train` runs.

    For comparisons that train one recipe's head on many splits or settings: the features
    of every image of ``index`` (and of its flip) are computed on the first run, from that
    run's model, and every run then gets the rows of its own splits, as
    :func:`cache_pooled_features` would have computed them. Valid only while every run's
    backbones are the same (pretrained weights, frozen): use it through :meth:`serving`.

    Args:
        index: the dataset every run trains on (runs may split it differently).
        preprocess: the view the runs train with.
        features: features computed before, ``(N, views, C)`` or ``(N, views, crops, C)`` in
            ``index`` order (view 1, when present, the flipped image; without it, training sees
            no flips); None computes them, flips included.
    """

    def __init__(self, index: DatasetIndex, preprocess: PreprocessCfg, features: torch.Tensor | None = None) -> None:
        self.index = index
        self.preprocess = preprocess
        self.features = features

    def __call__(self, model: FrozenSplit, parts: dict[str, IqaDataset], batch_size: int, device: str,
                 workers: int, quiet: bool = False) -> tuple[PooledHead, dict[str, ScoredDataset]]:
        """:func:`cache_pooled_features`' contract, served from the shared pass."""
        for name, dataset in parts.items():
            if dataset.index is not self.index or dataset.preprocess != self.preprocess:
                raise QualityNetError(f"the shared features are of {self.index.name} seen as "
                                      f"{self.preprocess.describe()}; the {name} split is of {dataset.index.name} "
                                      f"seen as {dataset.preprocess.describe()}")
        model.freeze_backbones()
        model.eval()
        if self.features is None:
            everything = IqaDataset(self.index, range(len(self.index)), self.preprocess, self.index.score_scale,
                                    flip=True)
            self.features = pool_views(model.forward_pooled, everything, batch_size, device, workers, quiet,
                                       "backbone features (all splits)")[0]
        cached: dict[str, ScoredDataset] = {}
        for name, dataset in parts.items():
            rows = torch.as_tensor(dataset.indices)
            if dataset.flip and self.features.shape[1] == 1:  # features given without a flipped view
                dataset = IqaDataset(dataset.index, dataset.indices, dataset.preprocess, dataset.scale)
            views = self.features[rows] if dataset.flip else self.features[rows, :1]
            targets = torch.tensor(self.index.score_scale.to_unit(self.index.mos[dataset.indices]),
                                   dtype=torch.float32)
            cached[name] = PooledFeatures(views, targets, dataset)
        return PooledHead(model), cached

    @contextlib.contextmanager
    def serving(self) -> Iterator[SharedFeatures]:
        """Within the block, training with frozen backbones takes its features from this pass."""
        original = globals()["cache_pooled_features"]
        globals()["cache_pooled_features"] = self
        try:
            yield self
        finally:
            globals()["cache_pooled_features"] = original


def scores_from_features(model: FrozenSplit, features: torch.Tensor) -> np.ndarray:
    """Each image's score from its frozen features, ``(N, K, C)``: the mean of its K inputs' scores.

    ``model`` is a trained checkpoint's model (:meth:`~qualitynet.trainer.checkpoint.Checkpoint.build_model`);
    its score mapping applies to each input, as in the exported graph.
    """
    head = PooledHead(model).eval()
    with torch.inference_mode():
        return head(features.flatten(0, 1)).float().numpy().reshape(len(features), -1).mean(axis=1)
