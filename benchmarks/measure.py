"""Timing one benchmark point honestly: warm-up excluded, one span for every backend, percentiles.

Every backend is timed over the same span: the wall clock around a step that takes the host
float32 batch and returns host scores (``np.ndarray``), so host-to-device copies, FP16 casts
and the device-to-host copy are inside it for every backend alike, and reading the clock after
the step needs no further synchronisation. Where a backend can also time its device work alone
(PyTorch on CUDA, with CUDA events around ``forward``), the step returns that too, and it is
reported as a second, labelled figure (``device_*_ms``), never in place of the wall clock.

Latency is per batch of ``batch_size`` images. A percentile is reported only when at least
``MIN_TAIL_SAMPLES`` samples lie beyond it (p90 from 20 samples, p99 from 200); with fewer it
would only restate the maximum. Host RSS and device memory are sampled after every iteration
and their peaks reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import psutil

__all__ = ["MIN_TAIL_SAMPLES", "LatencyStats", "Step", "device_memory_used", "percentile_or_none",
           "time_iterations"]

# One synchronised inference of a fixed host batch: (host scores, device-only ms or None).
Step = Callable[[], tuple[np.ndarray, float | None]]

MIN_TAIL_SAMPLES = 2


def percentile_or_none(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile, or None when fewer than ``MIN_TAIL_SAMPLES`` samples lie beyond it."""
    if not values or (q > 50 and len(values) * (100.0 - q) / 100.0 < MIN_TAIL_SAMPLES):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


@dataclass
class LatencyStats:
    """Per-batch latencies of one point (host batch in to host scores out) and what they imply."""

    batch_size: int
    iterations: int
    p50_ms: float
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float
    throughput_img_s: float
    peak_rss_mib: float
    peak_device_mib: float | None
    device_p50_ms: float | None = None
    device_mean_ms: float | None = None

    @classmethod
    def from_latencies(cls, latencies_ms: list[float], batch_size: int, peak_rss: float,
                       peak_device: float | None, device_ms: list[float] | None = None) -> LatencyStats:
        """Percentiles from the raw latencies; throughput from their total.

        Args:
            latencies_ms: wall-clock milliseconds per batch.
            batch_size: images per batch.
            peak_rss / peak_device: MiB.
            device_ms: device-only milliseconds per batch, when the backend measured them.
        """
        values = np.asarray(latencies_ms, dtype=np.float64)
        device = device_ms or None
        return cls(batch_size, len(values), float(np.percentile(values, 50)), percentile_or_none(latencies_ms, 90),
                   percentile_or_none(latencies_ms, 99), float(values.mean()),
                   batch_size * len(values) * 1000.0 / float(values.sum()), peak_rss, peak_device,
                   percentile_or_none(device, 50) if device else None,
                   float(np.mean(device)) if device else None)


def device_memory_used() -> float | None:
    """MiB in use on CUDA device 0 by every allocator (torch, ONNX Runtime, TensorRT), or None."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return (total - free) / 2**20


def time_iterations(step: Step, batch_size: int, warmup: int, iters: int, min_seconds: float = 0.0,
                    max_seconds: float | None = None) -> LatencyStats:
    """Run ``step`` ``warmup`` times untimed, then at least ``iters`` times timed.

    Args:
        step: one inference of a host batch returning host scores (and device-only ms when
            the backend measured them); the wall clock around it is the latency.
        batch_size: images per step, for throughput.
        warmup / iters: untimed and timed repetitions.
        min_seconds: keep iterating past ``iters`` until this much time is spent timing.
        max_seconds: stop before ``iters`` once this much time is spent (at least 3 timed
            steps), to bound slow points; fewer samples then show fewer percentiles.
    """
    process = psutil.Process()
    for _ in range(warmup):
        step()
    latencies: list[float] = []
    device_ms: list[float] = []
    peak_rss, peak_device = 0.0, device_memory_used()
    spent = 0.0
    while len(latencies) < iters or spent < min_seconds:
        if max_seconds is not None and spent >= max_seconds and len(latencies) >= 3:
            break
        start = time.perf_counter()
        _, on_device = step()
        wall = (time.perf_counter() - start) * 1000.0
        latencies.append(wall)
        if on_device is not None:
            device_ms.append(on_device)
        spent += wall / 1000.0
        peak_rss = max(peak_rss, process.memory_info().rss / 2**20)
        used = device_memory_used()
        if used is not None and peak_device is not None:
            peak_device = max(peak_device, used)
    return LatencyStats.from_latencies(latencies, batch_size, peak_rss, peak_device,
                                       device_ms if len(device_ms) == len(latencies) else None)
