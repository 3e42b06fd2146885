"""``iqa-bench``'s engine: every backend side by side, model-only and end to end.

Model-only: the same real photos, preprocessed once and tiled to each batch size, kept where
each backend wants them; warm-up excluded; at least ``iters`` timed batches per point.
End-to-end: decode + preprocess + inference of a folder through the runtime's pipeline,
against the naive loop (Pillow, preprocess, PyTorch eager, one image at a time). Speed-ups
are computed inside the run, against PyTorch eager FP32 at the same batch size (model-only)
or the naive loop (end to end), so they travel between machines; absolute figures do not.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from qualitynet._cli import progress
from qualitynet.bench.machine import machine_info
from qualitynet.bench.measure import LatencyStats, time_iterations
from qualitynet.bench.naive import naive_loop
from qualitynet.bench.subjects import Skipped, SubjectSpec, plan_subjects
from qualitynet.errors import QualityNetError
from qualitynet.export import export_all, load_photos
from qualitynet.runtime.discovery import iter_folder
from qualitynet.runtime.scorer import Scorer
from qualitynet.trainer.checkpoint import load_checkpoint

__all__ = ["BenchReport", "BenchSettings", "Point", "run_bench"]

log = logging.getLogger(__name__)


@dataclass
class BenchSettings:
    """What to measure and how long."""

    batch_sizes: tuple[int, ...] = (1, 8)
    warmup: int = 10
    iters: int = 50
    min_seconds: float = 0.0
    threads: int = 0
    device: str = "auto"
    images: Path | None = None
    e2e_batch_size: int = 8
    e2e_workers: int | None = None
    e2e_limit: int | None = None
    photos: Path | None = None
    quiet: bool = False


@dataclass
class Point:
    """One measured backend/precision/batch size."""

    mode: str
    backend: str
    precision: str
    device: str
    batch_size: int
    throughput_img_s: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_mean_ms: float
    iterations: int
    peak_rss_mib: float
    peak_device_mib: float | None
    load_seconds: float
    speedup: float = float("nan")
    max_abs_error: float = float("nan")
    srocc: float = float("nan")
    images: int | None = None


@dataclass
class BenchReport:
    """Everything one ``iqa-bench`` run measured, and on what."""

    config_name: str
    model_files: dict[str, str]
    settings: dict[str, Any]
    machine: dict[str, Any]
    points: list[Point] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    accuracy_reference: str = "torch-eager fp32 on the same photos, MOS scale"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite floats become None)."""
        data = asdict(self)
        for point in data["points"]:
            for key, value in point.items():
                if isinstance(value, float) and not np.isfinite(value):
                    point[key] = None
        return data


def _point(mode: str, spec: SubjectSpec, timing: LatencyStats, load_seconds: float) -> Point:
    return Point(mode, spec.backend, spec.precision, spec.device, timing.batch_size, timing.throughput_img_s,
                 timing.p50_ms, timing.p90_ms, timing.p99_ms, timing.mean_ms, timing.iterations,
                 timing.peak_rss_mib, timing.peak_device_mib, load_seconds)


def _agreement(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """Max abs error and SROCC (NaN when either list is constant: ranks are undefined)."""
    error = float(np.max(np.abs(reference - candidate)))
    if np.ptp(reference) == 0 or np.ptp(candidate) == 0:
        return error, float("nan")
    return error, float(stats.spearmanr(reference, candidate).statistic)


def _ensure_artifacts(checkpoint_path: Path, onnx: Path | None, engine: Path | None,
                      out_dir: Path | None) -> tuple[dict[str, Path], Path | None]:
    """The FP32/FP16 ONNX models and engine to measure, exporting what is missing."""
    folder = out_dir or checkpoint_path.parent
    stem = checkpoint_path.stem
    fp32 = onnx or folder / f"{stem}.onnx"
    fp16 = fp32.with_name(fp32.name.removesuffix(".onnx") + ".fp16.onnx")
    plan = engine or folder / f"{stem}.plan"
    if not fp32.is_file() or not fp16.is_file():
        log.info("exporting %s (ONNX and FP16 ONNX are missing)", checkpoint_path)
        result = export_all(checkpoint_path, folder, fp16=True, require_tensorrt=False)
        fp32, fp16 = result.onnx, result.fp16_onnx or fp16
        plan = result.plan or plan
    return {"fp32": fp32, "fp16": fp16}, plan if plan.is_file() else None


def _model_only(specs: list[SubjectSpec], inputs: np.ndarray, settings: BenchSettings,
                scale: Any) -> list[Point]:
    points: list[Point] = []
    reference: np.ndarray | None = None
    baseline: dict[int, float] = {}
    for spec in progress(specs, quiet=settings.quiet, desc="model-only", unit="backend"):
        log.info("model-only: %s %s on %s", spec.backend, spec.precision, spec.device)
        subject = spec.open()
        try:
            for batch_size in settings.batch_sizes:
                batch = inputs[np.arange(batch_size) % len(inputs)]
                timing = time_iterations(subject.make_step(batch), batch_size, settings.warmup, settings.iters,
                                         settings.min_seconds)
                scores = scale.to_mos(np.concatenate([subject.infer(inputs[i:i + batch_size])
                                                      for i in range(0, len(inputs), batch_size)]).astype(np.float64))
                point = _point("model-only", spec, timing, subject.load_seconds)
                if reference is None:
                    reference = scores
                point.max_abs_error, point.srocc = _agreement(reference, scores)
                baseline.setdefault(batch_size, point.throughput_img_s)
                point.speedup = point.throughput_img_s / baseline[batch_size]
                points.append(point)
        finally:
            subject.close()
    return points


def _end_to_end(specs: list[SubjectSpec], checkpoint_path: Path, files: list[str], settings: BenchSettings,
                device: str) -> list[Point]:
    log.info("end-to-end: naive loop over %d files", len(files))
    naive = naive_loop(checkpoint_path, files, device, quiet=settings.quiet)
    baseline = Point("end-to-end", "naive-loop torch-eager", "fp32", device, 1, naive.timing.throughput_img_s,
                     naive.timing.p50_ms, naive.timing.p90_ms, naive.timing.p99_ms, naive.timing.mean_ms,
                     naive.timing.iterations, naive.timing.peak_rss_mib, naive.timing.peak_device_mib,
                     naive.load_seconds, speedup=1.0, max_abs_error=0.0, srocc=1.0, images=len(files))
    points = [baseline]
    for spec in specs:
        if spec.model_path is None:
            continue
        log.info("end-to-end: iqa-run pipeline with %s (%s, %s)", spec.model_path.name, spec.backend, spec.device)
        started = time.perf_counter()
        provider = None if spec.backend == "tensorrt" else spec.device
        with Scorer(spec.model_path, provider=provider, threads=settings.threads or None,
                    batch_size=settings.e2e_batch_size, workers=settings.e2e_workers) as scorer:
            scorer.warm_up()  # like the naive loop's model load and warm-up: reported as load time
            load_seconds = time.perf_counter() - started
            latencies, scores, rss = [], {}, 0.0
            tick = time.perf_counter()
            for records in scorer.score_batches(files):
                now = time.perf_counter()
                latencies.append((now - tick) * 1000.0)
                tick = now
                scores.update({r.path: r.score for r in records if r.score is not None})
            rss = _rss_mib()
        timing = LatencyStats.from_latencies(latencies, settings.e2e_batch_size, rss, None)
        timing.throughput_img_s = len(scores) * 1000.0 / sum(latencies)
        point = _point("end-to-end", spec, timing, load_seconds)
        common = [f for f in files if f in scores and f in naive.scores]
        point.max_abs_error, point.srocc = _agreement(np.array([naive.scores[f] for f in common]),
                                                      np.array([scores[f] for f in common]))
        point.speedup = point.throughput_img_s / baseline.throughput_img_s
        point.images = len(scores)
        points.append(point)
    return points


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def run_bench(checkpoint_path: str | Path, settings: BenchSettings, onnx: Path | None = None,
              engine: Path | None = None, out_dir: Path | None = None) -> BenchReport:
    """Measure every backend this machine has against PyTorch eager FP32.

    Args:
        checkpoint_path: the ``model.pt`` whose weights every backend shares.
        settings: batch sizes, repeats, threads, device and the end-to-end folder.
        onnx: an existing FP32 ONNX model (its ``.fp16.onnx`` sibling is used too).
        engine: an existing TensorRT plan.
        out_dir: where missing artifacts are exported (default: next to the checkpoint).

    Returns:
        The report: machine, settings, measured points and skipped points with reasons.
    """
    checkpoint_path = Path(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path)
    threads = settings.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if settings.device == "auto" else settings.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QualityNetError(f"--device {device}: no CUDA device is available here; use --device cpu")
    onnx_paths, plan = _ensure_artifacts(checkpoint_path, onnx, engine, out_dir)
    inputs, photo_names = load_photos(settings.photos, checkpoint.preprocess)
    specs, skipped = plan_subjects(checkpoint, onnx_paths, plan, device, threads, inputs[:1])
    report = BenchReport(
        config_name=checkpoint.model_config.name,
        model_files={"checkpoint": str(checkpoint_path), **{k: str(v) for k, v in onnx_paths.items()},
                     **({"tensorrt": str(plan)} if plan else {})},
        settings={**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
                  "threads": threads, "device": device, "photos": len(photo_names)},
        machine=machine_info(threads), skipped=skipped)
    report.points = _model_only(specs, inputs, settings, checkpoint.score_scale)
    if settings.images is not None:
        files = list(iter_folder(settings.images))[: settings.e2e_limit]
        if not files:
            raise QualityNetError(f"{settings.images}: no image files found for the end-to-end run")
        report.points += _end_to_end(specs, checkpoint_path, files, settings, device)
    return report
