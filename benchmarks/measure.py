"""Timing one benchmark point honestly: warm-up excluded, synchronised clocks, percentiles.

Latency is per batch. Every clock read follows a device synchronisation: on CUDA the torch
subject times itself with CUDA events (``Timer.cuda``); ONNX Runtime and TensorRT runners
return host arrays, so their ``infer`` has already waited for the device. Host RSS and
device memory are sampled after every iteration and their peaks reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import psutil

__all__ = ["LatencyStats", "device_memory_used", "time_iterations"]


@dataclass
class LatencyStats:
    """Per-batch latencies of one point and what they imply."""

    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput_img_s: float
    peak_rss_mib: float
    peak_device_mib: float | None

    @classmethod
    def from_latencies(cls, latencies_ms: list[float], batch_size: int, peak_rss: float,
                       peak_device: float | None) -> LatencyStats:
        """Percentiles from the raw latencies; throughput from their total."""
        values = np.asarray(latencies_ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(values, [50, 90, 99])
        return cls(batch_size, len(values), float(p50), float(p90), float(p99), float(values.mean()),
                   batch_size * len(values) * 1000.0 / float(values.sum()), peak_rss, peak_device)


def device_memory_used() -> float | None:
    """MiB in use on CUDA device 0 by every allocator (torch, ONNX Runtime, TensorRT), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def time_iterations(step: Callable[[], float | None], batch_size: int, warmup: int, iters: int,
                    min_seconds: float = 0.0) -> LatencyStats:
    """Run ``step`` ``warmup`` times untimed, then at least ``iters`` times timed.

    Args:
        step: one synchronised inference; returns its own latency in ms when it measured it
            with device events, else ``None`` (then the wall clock around it is used).
        batch_size: images per step, for throughput.
        warmup / iters: untimed and timed repetitions.
        min_seconds: keep iterating past ``iters`` until this much time is spent timing.
    """
    process = psutil.Process()
    for _ in range(warmup):
        step()
    latencies: list[float] = []
    peak_rss, peak_device = 0.0, device_memory_used()
    spent = 0.0
    while len(latencies) < iters or spent < min_seconds:
        start = time.perf_counter()
        measured = step()
        wall = (time.perf_counter() - start) * 1000.0
        latencies.append(measured if measured is not None else wall)
        spent += wall / 1000.0
        peak_rss = max(peak_rss, process.memory_info().rss / 2**20)
        used = device_memory_used()
        if used is not None and peak_device is not None:
            peak_device = max(peak_device, used)
    return LatencyStats.from_latencies(latencies, batch_size, peak_rss, peak_device)
