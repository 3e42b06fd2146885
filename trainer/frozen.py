"""The frozen-backbone fast path: pooled backbone features computed once, then only the head trains.

In QualityNet, attention and head see only globally pooled backbone features. With the
backbones frozen (ImageNet weights, BatchNorm in eval mode) those features are a fixed
function of the image, so each image's (and, for training, its horizontal flip's) pooled
features are computed once; every epoch then trains attention and head on the cached
vectors, which takes seconds on a CPU instead of minutes. This is exactly training with
frozen backbones: the random flip picks the cached flipped view, and the checkpoint is
the whole model (backbones included), as from the ordinary path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from qualitynet._cli import progress
from qualitynet.trainer.model import QualityNet
from qualitynet.trainer.torch_data import IqaDataset, ScoredDataset, make_loader

__all__ = ["PooledFeatures", "PooledHead", "cache_pooled_features", "pool_views"]


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
    """The trainable part of a QualityNet, fed cached pooled features (see the module docstring)."""

    def __init__(self, model: QualityNet) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> PooledHead:
        super().train(mode)
        for stream in self.model.streams:
            stream.features.eval()  # type: ignore[union-attr]  # frozen: BatchNorm keeps its ImageNet statistics
        return self

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        model = self.model
        return model.mos_mapping(model.forward_head(model.attend_pooled(pooled)))


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


def _pool(model: QualityNet, dataset: IqaDataset, batch_size: int, device: str, workers: int,
          quiet: bool, desc: str) -> PooledFeatures:
    return PooledFeatures(*pool_views(model.forward_pooled, dataset, batch_size, device, workers, quiet, desc),
                          dataset)


def cache_pooled_features(model: QualityNet, parts: dict[str, IqaDataset], batch_size: int, device: str,
                          workers: int, quiet: bool = False) -> tuple[PooledHead, dict[str, ScoredDataset]]:
    """Freeze ``model``'s backbones and compute every split's pooled features once.

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
