"""The baseline every end-to-end figure is compared with: the loop a user writes first.

Open each image with Pillow (a full decode, whatever the record's decode), preprocess it as
the record's view says (a crops view scores the image's crops together and takes their
mean), run PyTorch eager on it alone, next image. It uses the toolkit's own preprocessing,
so its scores are the reference for the runtime's (identical for records that decode in full).

The loop's process keeps the memory it frees (:func:`keep_freed_memory`): with glibc's
defaults each eager pass returned its large buffers to the kernel and faulted fresh pages back
in, which on this project's 2-core VM made the loop 1.7x slower in some processes than in others
(demo model, 2026-11-30: 228-241 ms per 4000x3000 camera JPEG with the defaults, 135-140 ms with
freed memory kept; 1024x768: 145-153 ms vs 83-84 ms). The faster, steady loop is the baseline,
so a ratio against it is never inflated by the allocator. (The same setting in iqa-run's decode
workers changed nothing measurable: 24.3-25.9 vs 24.6-25.3 img/s, 3 alternating runs.)
"""

from __future__ import annotations

import ctypes
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

__all__ = ["NaiveResult", "keep_freed_memory", "naive_loop"]

# glibc's mallopt parameters: freed memory stays in the heap up to these sizes.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


@dataclass
class NaiveResult:
    """Per-file MOS-scale scores of the naive loop and its timing (one image per step)."""

    scores: dict[str, float]
    timing: LatencyStats
    load_seconds: float


def keep_freed_memory() -> bool:
    """Have this process's allocator keep freed blocks of up to 32 MiB instead of returning them to the kernel.

    glibc only (``mallopt``); returns ``False`` where it is not the C library and nothing changes.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def naive_loop(checkpoint_path: str, files: Sequence[str], device: str = "cpu", quiet: bool = True) -> NaiveResult:
    """Score ``files`` one at a time with PyTorch eager; unreadable files are skipped.

    Loading the model and one untimed warm-up inference count as ``load_seconds``. The
    process keeps the memory it frees from here on (:func:`keep_freed_memory`).
    """
    keep_freed_memory()
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
