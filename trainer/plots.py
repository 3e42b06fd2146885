"""Training-curve and prediction-scatter figures (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plot_history", "plot_scatter"]


def plot_history(history: Sequence[dict[str, float]], path: Path) -> Path:
    """Train/val loss and val SROCC/PLCC per epoch."""
    epochs = [row["epoch"] for row in history]
    fig, (loss_ax, corr_ax) = plt.subplots(1, 2, figsize=(10, 4))
    loss_ax.plot(epochs, [row["train_loss"] for row in history], "o-", label="train")
    loss_ax.plot(epochs, [row["val_loss"] for row in history], "o-", label="validation")
    loss_ax.set(xlabel="epoch", ylabel="MAE + 10 (1 - PLCC)", title="loss")
    loss_ax.legend()
    corr_ax.plot(epochs, [row["val_srocc"] for row in history], "o-", label="SROCC")
    corr_ax.plot(epochs, [row["val_plcc"] for row in history], "o-", label="PLCC")
    corr_ax.set(xlabel="epoch", ylabel="correlation", title="validation", ylim=(-1, 1))
    corr_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_scatter(pred: np.ndarray, target: np.ndarray, path: Path, title: str) -> Path:
    """Predicted score against MOS, with the identity line."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(target, pred, s=12, alpha=0.6)
    low, high = float(min(target.min(), pred.min())), float(max(target.max(), pred.max()))
    ax.plot([low, high], [low, high], "k--", linewidth=1)
    ax.set(xlabel="MOS", ylabel="predicted", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
