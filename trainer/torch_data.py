"""Torch side of the data: a Dataset over a :class:`DatasetIndex`, and batched prediction.

Images go through :mod:`qualitynet.runtime.preprocess` (:func:`file_to_inputs`), the same
code the lean runtime uses, decode and view included, so training and serving see identical
tensors. With a crops view an item stacks the image's crops, the network scores each crop,
and the image's score is the mean of its crops' scores, as in the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from qualitynet._cli import progress
from qualitynet.artifact import PreprocessCfg, ScoreScale
from qualitynet.cpus import usable_cpus
from qualitynet.runtime.preprocess import file_to_inputs
from qualitynet.trainer.datasets import DatasetIndex

__all__ = ["CropMean", "IqaDataset", "ScoredDataset", "crop_mean", "default_workers", "make_loader", "predict",
           "score_crops"]


def default_workers() -> int:
    """Decode workers for training: leave one usable CPU to the model."""
    return max(0, min(4, usable_cpus() - 1))


class ScoredDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(network input, target in unit scale)`` pairs whose targets lie on ``scale``.

    ``crops`` is 0 when an item is one network input, else the number of crops stacked
    along an item's first axis (an image under a crops view).
    """

    scale: ScoreScale
    crops: int = 0

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
        self.crops = preprocess.inputs_per_image if preprocess.view == "crops" else 0

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = self.indices[item]
        inputs = torch.from_numpy(file_to_inputs(self.index.paths[i], self.preprocess))
        tensor = inputs if self.crops else inputs[0]
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


def score_crops(model: nn.Module, inputs: torch.Tensor, crops: int) -> torch.Tensor:
    """The model's score per network input: ``(B,)`` for single inputs (``crops`` 0), else
    ``(B, crops)`` for a batch of stacked crops ``(B, crops, ...)``."""
    if not crops:
        return model(inputs).reshape(len(inputs))
    return model(inputs.flatten(0, 1)).reshape(len(inputs), crops)


class CropMean(nn.Module):
    """Wraps a model so that a batch of stacked crops ``(B, K, ...)`` scores ``(B,)``: the mean of each
    image's crop scores (what the runtime reports for a crops view)."""

    def __init__(self, model: nn.Module, crops: int) -> None:
        super().__init__()
        self.model = model
        self.crops = crops

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return score_crops(self.model, inputs, self.crops).mean(dim=1)


def crop_mean(scores: np.ndarray) -> np.ndarray:
    """Per-image scores from :func:`predict`'s ``per_crop`` output ``(N, K)``: the mean over the crops."""
    return np.asarray(scores).mean(axis=1)


@torch.inference_mode()
def predict(model: torch.nn.Module, dataset: ScoredDataset, batch_size: int = 16, device: str = "cpu",
            workers: int = 0, quiet: bool = True, desc: str = "predict",
            per_crop: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Predict MOS-scale scores for every image of ``dataset``.

    Args:
        per_crop: return each network input's score, ``(N, K)`` (K = 1 for a whole-image
            view), instead of each image's (the mean of its crops'). A nonlinear MOS mapping
            must be applied per crop, before the mean, as exported models do.

    Returns:
        ``(predictions, targets)``, both on the dataset's MOS scale, in dataset order.
    """
    model.eval()
    preds, targets = [], []
    for images, target in progress(make_loader(dataset, batch_size, False, workers), quiet=quiet,
                                   desc=desc, unit="batch", leave=False):
        preds.append(score_crops(model, images.to(device), dataset.crops).float().cpu().numpy())
        targets.append(target.numpy())
    scores = np.concatenate(preds).reshape(len(dataset), max(1, dataset.crops))
    scale = dataset.scale
    return scale.to_mos(scores if per_crop else crop_mean(scores)), scale.to_mos(np.concatenate(targets))
