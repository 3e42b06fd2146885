"""The paper's loss: ``lambda1 * MAE + lambda2 * (1 - PLCC)`` over the batch (eqs. 38-40)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MaePlccLoss", "batch_plcc"]


def batch_plcc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Differentiable Pearson correlation of two 1-D tensors.

    ``eps`` sits inside the square roots, so a batch of constant targets (or constant
    predictions) gives a correlation of 0 with finite gradients instead of NaN.
    """
    pred_c = pred - pred.mean()
    target_c = target - target.mean()
    covariance = (pred_c * target_c).mean()
    return covariance / (torch.sqrt((pred_c**2).mean() + eps) * torch.sqrt((target_c**2).mean() + eps))


class MaePlccLoss(nn.Module):
    """``lambda_mae * mean|pred - target| + lambda_plcc * (1 - PLCC(pred, target))``."""

    def __init__(self, lambda_mae: float = 1.0, lambda_plcc: float = 10.0) -> None:
        super().__init__()
        self.lambda_mae = lambda_mae
        self.lambda_plcc = lambda_plcc

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.reshape(-1), target.reshape(-1)
        mae = (pred - target).abs().mean()
        return self.lambda_mae * mae + self.lambda_plcc * (1.0 - batch_plcc(pred, target))
