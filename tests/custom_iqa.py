"""A user's own IQA networks, importable as ``custom_iqa:<name>`` (tests/ is on sys.path).

``tiny_iqa`` is the worked example of the README's "Your own model": three strided
convolutions, global pooling and a linear score, nothing from QualityNet.
"""

from __future__ import annotations

import torch
from torch import nn

from qualitynet.trainer import register_model


class TinyIqa(nn.Module):
    """``(N, 3, H, W)`` -> ``(N,)``: conv features, global average pooling, one linear score."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.score = nn.Linear(4 * width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.features(x)).squeeze(1)


@register_model
def tiny_iqa(width: int = 8) -> TinyIqa:
    """The example network, unit-scale output."""
    return TinyIqa(width)


@register_model(name="tiny_iqa_mos", output="mos", width=4)
def tiny_iqa_mos(width: int = 8) -> TinyIqa:
    """The same network trained to predict MOS itself."""
    return TinyIqa(width)


def three_scores(width: int = 8) -> nn.Module:
    """Wrong: three outputs per image, as a classifier has."""
    return nn.Sequential(TinyIqa(width).features, nn.Linear(4 * width, 3))
