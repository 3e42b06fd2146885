"""Helpers of the runtime tests: the photos of a folder, and PyTorch eager reference scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from qualitynet.runtime.preprocess import image_to_tensor, load_rgb
from qualitynet.trainer.checkpoint import load_checkpoint

__all__ = ["photo_paths", "torch_unit_scores"]


def photo_paths(folder: Path) -> list[Path]:
    """The photos of a folder, sorted."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png"))


def torch_unit_scores(checkpoint: Path, paths: Sequence[Path | str], fp16_input: bool = False) -> np.ndarray:
    """PyTorch eager scores (unit scale) of files, preprocessed the trainer's way.

    Args:
        checkpoint: the ``.pt``.
        paths: image files.
        fp16_input: round the input tensors to FP16 first (to measure the model's FP16 noise floor).
    """
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model()
    batch = np.stack([image_to_tensor(load_rgb(p), ckpt.preprocess) for p in paths])
    if fp16_input:
        batch = batch.astype(np.float16).astype(np.float32)
    with torch.inference_mode():
        return model(torch.from_numpy(batch)).numpy().reshape(-1)
