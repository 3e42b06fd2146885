"""Torch side of the data: a Dataset over a :class:`DatasetIndex`, and batched prediction.

Images go through :mod:`qualitynet.runtime.preprocess`, the same code the lean runtime
uses, so training and serving see identical tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from qualitynet._cli import progress
from qualitynet.artifact import PreprocessCfg, ScoreScale
from qualitynet.cpus import usable_cpus
from qualitynet.runtime.preprocess import image_to_tensor, load_rgb
from qualitynet.trainer.datasets import DatasetIndex

__all__ = ["IqaDataset", "ScoredDataset", "default_workers", "make_loader", "predict"]


def default_workers() -> int:
    """Decode workers for training: leave one usable CPU to the model."""
    return max(0, min(4, usable_cpus() - 1))


class ScoredDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(network input, target in unit scale)`` pairs whose targets lie on ``scale``."""

    scale: ScoreScale

    def __len__(self) -> int:
        raise NotImplementedError


class IqaDataset(ScoredDataset):
    """``(image tensor, target in unit scale)`` pairs; ``flip`` adds random horizontal flips."""

    def __init__(self, index: DatasetIndex, indices: Sequence[int], preprocess: PreprocessCfg,
                 scale: ScoreScale, flip: bool = False) -> None:
        self.index = index
        self.indices = list(indices)
        self.preprocess = preprocess
        self.scale = scale
        self.flip = flip

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.indices[item]
        tensor = torch.from_numpy(image_to_tensor(load_rgb(self.index.paths[i]), self.preprocess))
        if self.flip and torch.rand(()) < 0.5:
            tensor = tensor.flip(-1)
        target = torch.tensor(self.scale.to_unit(float(self.index.mos[i])), dtype=torch.float32)
        return tensor, target


def make_loader(dataset: ScoredDataset, batch_size: int, shuffle: bool, workers: int,
                seed: int = 0) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    """A DataLoader that never yields a training batch of one (BatchNorm cannot use it)."""
    drop_last = shuffle and len(dataset) % batch_size == 1
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      drop_last=drop_last, generator=generator, persistent_workers=False)


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: ScoredDataset, batch_size: int = 16, device: str = "cpu",
            workers: int = 0, quiet: bool = True, desc: str = "predict") -> tuple[np.ndarray, np.ndarray]:
    """Predict MOS-scale scores for every image of ``dataset``.

    Returns:
        ``(predictions, targets)``, both on the dataset's MOS scale, in dataset order.
    """
    model.eval()
    preds, targets = [], []
    for images, target in progress(make_loader(dataset, batch_size, False, workers), quiet=quiet,
                                   desc=desc, unit="batch", leave=False):
        preds.append(model(images.to(device)).float().cpu().numpy().ravel())
        targets.append(target.numpy())
    return dataset.scale.to_mos(np.concatenate(preds)), dataset.scale.to_mos(np.concatenate(targets))
