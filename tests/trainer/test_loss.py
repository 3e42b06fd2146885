"""The paper's loss: MAE + 10 (1 - PLCC)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from qualitynet.trainer.loss import PLCC_STD_FLOOR, MaePlccLoss, batch_plcc


def test_loss_matches_hand_computation() -> None:
    pred = np.array([0.1, 0.4, 0.35, 0.8, 0.6])
    target = np.array([0.0, 0.5, 0.25, 1.0, 0.75])
    mae = np.mean(np.abs(pred - target))
    plcc = np.corrcoef(pred, target)[0, 1]
    loss = MaePlccLoss()(torch.tensor(pred).view(-1, 1), torch.tensor(target))
    assert abs(loss.item() - (mae + 10 * (1 - plcc))) < 1e-5  # float32 rounding (both spreads above the floor)
    weighted = MaePlccLoss(lambda_mae=2.0, lambda_plcc=0.5)(torch.tensor(pred), torch.tensor(target))
    assert abs(weighted.item() - (2 * mae + 0.5 * (1 - plcc))) < 1e-6


def test_perfect_prediction_has_zero_loss() -> None:
    target = torch.tensor([0.2, 0.9, 0.4, 0.6])
    assert MaePlccLoss()(target.clone(), target).item() < 1e-5  # float32 rounding of 10 (1 - 1)


def test_constant_targets_give_finite_loss_and_gradients() -> None:
    pred = torch.tensor([0.3, 0.5, 0.7], requires_grad=True)
    loss = MaePlccLoss()(pred, torch.full((3,), 0.5))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(pred.grad).all()
    assert abs(loss.item() - (np.mean([0.2, 0.0, 0.2]) + 10.0)) < 1e-5  # PLCC term counts as 0


def test_constant_predictions_give_finite_gradients() -> None:
    pred = torch.full((4,), 0.5, requires_grad=True)
    MaePlccLoss()(pred, torch.tensor([0.1, 0.2, 0.8, 0.9])).backward()
    assert torch.isfinite(pred.grad).all()


def test_batch_plcc_is_pearson() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert abs(batch_plcc(torch.tensor(a), torch.tensor(b)).item() - np.corrcoef(a, b)[0, 1]) < 1e-6


def test_plcc_gradient_is_bounded_for_nearly_constant_predictions() -> None:
    # A batch of 10 whose predictions have collapsed to a spread of 1e-4 (unit scale); the
    # eps-inside-the-root version gave per-prediction gradients of ~1.3e4 here.
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(10, generator=generator)
    n, criterion = len(target), MaePlccLoss()
    bound = criterion.lambda_mae / n + criterion.lambda_plcc * 2 * math.sqrt(n - 1) / (n * PLCC_STD_FLOOR)
    grads = {}
    for spread in (0.15, 1e-2, 1e-4, 0.0):
        pred = (0.5 + spread * torch.randn(n, generator=generator)).requires_grad_()
        criterion(pred, target).backward()
        assert pred.grad is not None and torch.isfinite(pred.grad).all()
        grads[spread] = pred.grad.abs().max().item()
        assert grads[spread] <= bound, (spread, grads[spread], bound)
    assert grads[1e-4] < 20 * grads[0.15]  # same order as a normal step's, not 1000x


def test_floor_leaves_spread_batches_alone_and_pulls_collapsed_ones_along_the_targets() -> None:
    target = torch.tensor([0.1, 0.9, 0.3, 0.6])
    assert batch_plcc(target, target).item() == pytest.approx(1.0, abs=1e-6)
    pred = torch.full((4,), 0.5, requires_grad=True)
    (1 - batch_plcc(pred, target)).backward()
    assert pred.grad is not None
    assert torch.equal(torch.argsort(-pred.grad), torch.argsort(target))  # descent raises high targets most
