"""The baseline every end-to-end figure is compared with: the loop a user writes first.

Open each image with Pillow (a full decode, whatever the record's decode), preprocess it as
the record's view says (a crops view scores the image's crops together and takes their
mean), run PyTorch eager on it alone, next image. It uses the toolkit's own preprocessing,
so its scores are the reference for the runtime's (identical for records that decode in full).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import psutil
import torch

from qualitynet._cli import progress
from qualitynet.bench.measure import LatencyStats
from qualitynet.errors import QualityNetError
from qualitynet.runtime.preprocess import image_to_inputs, load_rgb
from qualitynet.trainer.checkpoint import load_checkpoint

__all__ = ["NaiveResult", "naive_loop"]


@dataclass
class NaiveResult:
    """Per-file MOS-scale scores of the naive loop and its timing (one image per step)."""

    scores: dict[str, float]
    timing: LatencyStats
    load_seconds: float


def naive_loop(checkpoint_path: str, files: Sequence[str], device: str = "cpu", quiet: bool = True) -> NaiveResult:
    """Score ``files`` one at a time with PyTorch eager; unreadable files are skipped.

    Loading the model and one untimed warm-up inference count as ``load_seconds``.
    """
    started = time.perf_counter()
    checkpoint = load_checkpoint(checkpoint_path)
    model = checkpoint.build_model().to(device)
    with torch.inference_mode():
        size = (1, 3, checkpoint.preprocess.height, checkpoint.preprocess.width)
        model(torch.zeros(size, device=device)).cpu()
    load_seconds = time.perf_counter() - started
    scores: dict[str, float] = {}
    latencies: list[float] = []
    for path in progress(files, quiet=quiet, desc="naive loop", unit="img"):
        tick = time.perf_counter()
        try:
            inputs = image_to_inputs(load_rgb(path), checkpoint.preprocess)  # full decode, the record's view
        except QualityNetError:
            continue
        with torch.inference_mode():
            unit = model(torch.from_numpy(inputs).to(device)).mean().item()  # .item() synchronises
        latencies.append((time.perf_counter() - tick) * 1000.0)
        scores[path] = float(checkpoint.score_scale.to_mos(unit))
    if not latencies:
        raise QualityNetError("the naive loop could not read any of the files")
    rss = psutil.Process().memory_info().rss / 2**20
    return NaiveResult(scores, LatencyStats.from_latencies(latencies, 1, rss, None), load_seconds)
