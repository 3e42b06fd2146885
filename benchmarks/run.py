"""``iqa-bench``'s engine: every backend side by side, model-only and end to end.

Model-only: the same real photos, preprocessed once and tiled to each batch size, kept where
each backend wants them; warm-up excluded; at least ``iters`` timed batches per point.
End-to-end: decode + preprocess + inference of a folder through the runtime's pipeline,
against the naive loop (Pillow, preprocess, PyTorch eager, one image at a time). Speed-ups
are computed inside the run, against PyTorch eager FP32 at the same batch size (model-only)
or the naive loop (end to end), so they travel between machines; absolute figures do not.
End to end, the contenders run in alternating rounds (naive, each pipeline, naive, ...): the
speed-up is the median of the rounds' ratios, reported with their range, and a range wider
than :data:`WIDE_SPREAD` of the median is flagged (a busy machine: do not trust the figure).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qualitynet._cli import progress
from qualitynet.agreement import agreement
from qualitynet.artifact import file_sha256
from qualitynet.bench.machine import machine_info
from qualitynet.bench.measure import LatencyStats, time_iterations
from qualitynet.bench.naive import NaiveResult, keep_freed_memory, naive_loop
from qualitynet.bench.subjects import Skipped, SubjectSpec, plan_subjects, runner_threads
from qualitynet.cpus import usable_cpus
from qualitynet.errors import QualityNetError
from qualitynet.export import export_all, load_photos
from qualitynet.export.freshness import stale_reason
from qualitynet.export.targets import TARGETS
from qualitynet.runtime.discovery import iter_folder
from qualitynet.runtime.scorer import Scorer
from qualitynet.trainer.checkpoint import load_checkpoint

__all__ = ["WIDE_SPREAD", "BenchReport", "BenchSettings", "Point", "ensure_artifacts", "measure_model_only",
           "run_bench", "warm_page_cache"]

log = logging.getLogger(__name__)

# An end-to-end speed-up whose rounds span more than this fraction of their median is flagged.
WIDE_SPREAD = 0.2


@dataclass
class BenchSettings:
    """What to measure and how long."""

    batch_sizes: tuple[int, ...] = (1, 8)
    warmup: int = 10
    iters: int = 50
    min_seconds: float = 0.0
    max_seconds: float | None = None
    threads: int = 0
    device: str = "auto"
    images: Path | None = None
    e2e_batch_size: int = 8
    e2e_workers: int | None = None
    e2e_limit: int | None = None
    e2e_rounds: int = 3
    photos: Path | None = None
    quiet: bool = False
    torch_variants: tuple[str, ...] = ()
    cpu_max_batch: int | None = None


@dataclass
class Point:
    """One measured backend/precision/batch size.

    ``latency_*_ms`` are per batch of ``batch_size`` images, host batch in to host scores out
    (for the end-to-end pipeline: the interval between consecutive batches of scores); p90/p99
    are None when too few batches were timed (see :mod:`qualitynet.bench.measure`).
    ``ms_per_image`` is 1000 / throughput. ``device_*_ms`` time the device work alone, where
    the backend can measure it. ``threads`` is the intra-op CPU thread count the backend used.
    End to end, ``speedup`` is the median of ``speedup_rounds`` (one ratio per alternating
    round), ``speedup_spread`` their range over the median, ``wide_spread`` whether that
    exceeds :data:`WIDE_SPREAD`; the timings are the median round's.
    """

    mode: str
    backend: str
    precision: str
    device: str
    batch_size: int
    throughput_img_s: float
    latency_p50_ms: float
    latency_p90_ms: float | None
    latency_p99_ms: float | None
    latency_mean_ms: float
    iterations: int
    peak_rss_mib: float
    peak_device_mib: float | None
    load_seconds: float
    speedup: float = float("nan")
    max_abs_error: float = float("nan")
    srocc: float = float("nan")
    images: int | None = None
    ms_per_image: float = float("nan")
    device_p50_ms: float | None = None
    device_mean_ms: float | None = None
    threads: int | None = None
    speedup_rounds: list[float] = field(default_factory=list)
    speedup_spread: float = float("nan")
    wide_spread: bool = False


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


def _point(mode: str, backend: str, precision: str, device: str, timing: LatencyStats, load_seconds: float,
           threads: int | None) -> Point:
    return Point(mode, backend, precision, device, timing.batch_size, timing.throughput_img_s,
                 timing.p50_ms, timing.p90_ms, timing.p99_ms, timing.mean_ms, timing.iterations,
                 timing.peak_rss_mib, timing.peak_device_mib, load_seconds,
                 ms_per_image=1000.0 / timing.throughput_img_s, device_p50_ms=timing.device_p50_ms,
                 device_mean_ms=timing.device_mean_ms, threads=threads)


def ensure_artifacts(checkpoint_path: Path, onnx: Path | None = None, engine: Path | None = None,
                     out_dir: Path | None = None) -> tuple[dict[str, Path], Path | None]:
    """The FP32/FP16 ONNX models and engine of this checkpoint, exporting what is missing or stale.

    Artifacts are reused only when the checkpoint SHA-256 they record is this checkpoint's.
    Stale artifacts at the default paths are exported again; ones passed explicitly
    (``onnx``, ``engine``) are refused. A stale default plan that cannot be rebuilt here (no
    TensorRT) is left out.

    Raises:
        QualityNetError: an explicitly given artifact was exported from another checkpoint.
    """
    folder = out_dir or checkpoint_path.parent
    stem = checkpoint_path.stem
    fp32 = onnx or TARGETS["onnx"].path(folder, stem)
    fp16 = TARGETS["fp16_onnx"].path(fp32.parent, fp32.name.removesuffix(".onnx"))
    plan = engine or TARGETS["plan"].path(folder, stem)
    digest = file_sha256(checkpoint_path)
    for path in (p for p in (onnx, onnx and fp16, engine) if p is not None and p.is_file()):
        reason = stale_reason(path, digest)
        if reason is not None:
            raise QualityNetError(f"{path}: refused, {reason}; export it again (iqa-export {checkpoint_path}) or "
                                  "leave out --onnx/--engine so that iqa-bench exports it")
    reasons = {path: stale_reason(path, digest) for path in (fp32, fp16)}
    if any(reasons.values()):
        log.info("exporting %s (%s)", checkpoint_path,
                 "; ".join(f"{path.name}: {reason}" for path, reason in reasons.items() if reason))
        result = export_all(checkpoint_path, folder, fp16=True, require_tensorrt=False)
        fp32, fp16 = result.onnx, result.file("fp16_onnx") or fp16
        plan = result.file("plan") or plan
    if plan.is_file() and (reason := stale_reason(plan, digest)) is not None:
        log.warning("%s left out: %s", plan, reason)
        return {"fp32": fp32, "fp16": fp16}, None
    return {"fp32": fp32, "fp16": fp16}, plan if plan.is_file() else None


def measure_model_only(specs: list[SubjectSpec], inputs: np.ndarray, settings: BenchSettings,
                       scale: Any) -> tuple[list[Point], list[Skipped]]:
    """Time every subject at every batch size and compare its scores with the first (the baseline).

    Returns:
        The points, and the points not measured: batch sizes above a subject's ``max_batch``,
        and optional subjects that failed (with the error).
    """
    points: list[Point] = []
    skipped: list[Skipped] = []
    reference: np.ndarray | None = None
    baseline: dict[int, float] = {}
    for spec in progress(specs, quiet=settings.quiet, desc="model-only", unit="backend"):
        log.info("model-only: %s %s on %s", spec.backend, spec.precision, spec.device)
        try:
            subject = spec.open()
        except Exception as exc:  # noqa: BLE001 - optional variants fail in many ways (compiler, capture)
            if not spec.optional:
                raise
            skipped.append(Skipped(spec.backend, spec.precision, spec.device, f"failed: {_error(exc)}"))
            continue
        try:
            for batch_size in settings.batch_sizes:
                if spec.max_batch is not None and batch_size > spec.max_batch:
                    skipped.append(Skipped(spec.backend, spec.precision, spec.device,
                                           f"batch {batch_size}: above this run's limit of {spec.max_batch} "
                                           "for this backend (time budget)"))
                    continue
                batch = inputs[np.arange(batch_size) % len(inputs)]
                try:
                    timing = time_iterations(subject.make_step(batch), batch_size, settings.warmup, settings.iters,
                                             settings.min_seconds, settings.max_seconds)
                    units = np.concatenate([subject.infer(inputs[i:i + batch_size])
                                            for i in range(0, len(inputs), batch_size)])
                except Exception as exc:  # noqa: BLE001 - as above
                    if not spec.optional:
                        raise
                    skipped.append(Skipped(spec.backend, spec.precision, spec.device,
                                           f"batch {batch_size} failed: {_error(exc)}"))
                    continue
                scores = scale.to_mos(units.astype(np.float64))
                point = _point("model-only", spec.backend, spec.precision, spec.device, timing,
                               subject.load_seconds, subject.threads)
                if reference is None:
                    reference = scores
                agreed = agreement(reference, scores)
                point.max_abs_error, point.srocc = agreed.max_abs, agreed.srocc
                baseline.setdefault(batch_size, point.throughput_img_s)
                point.speedup = point.throughput_img_s / baseline[batch_size]
                points.append(point)
        finally:
            subject.close()
    return points, skipped


def _error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


E2E_ORDER = ("page cache warmed first (every file read once), then alternating rounds: in each, the naive loop, "
             "then each pipeline in turn, all reading cached files")


def warm_page_cache(files: list[str]) -> int:
    """Read every file once, so that no end-to-end contender pays for the first disk read.

    Returns:
        The bytes read.
    """
    total = 0
    for path in files:
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
    return total


def _pipeline_run(spec: SubjectSpec, files: list[str], settings: BenchSettings,
                  threads: int) -> tuple[LatencyStats, dict[str, float], float, int | None]:
    """One pass of the runtime's pipeline over ``files``: timing, scores, load seconds and threads."""
    assert spec.model_path is not None
    started = time.perf_counter()
    provider = None if spec.backend == "tensorrt" else spec.device
    with Scorer(spec.model_path, provider=provider, threads=threads,
                batch_size=settings.e2e_batch_size, workers=settings.e2e_workers) as scorer:
        scorer.warm_up()  # like the naive loop's model load and warm-up: reported as load time
        load_seconds = time.perf_counter() - started
        latencies, scores = [], {}
        tick = time.perf_counter()
        for records in scorer.score_batches(files):
            now = time.perf_counter()
            latencies.append((now - tick) * 1000.0)
            tick = now
            scores.update({r.path: r.score for r in records if r.score is not None})
        rss = _rss_mib()
        used_threads = runner_threads(scorer.runner)
    timing = LatencyStats.from_latencies(latencies, settings.e2e_batch_size, rss, None)
    timing.throughput_img_s = len(scores) * 1000.0 / sum(latencies)
    return timing, scores, load_seconds, used_threads


def _median_round(ratios: list[float]) -> int:
    """The round whose ratio is the median (the lower middle one for an even count)."""
    return sorted(range(len(ratios)), key=lambda i: ratios[i])[(len(ratios) - 1) // 2]


def _end_to_end(specs: list[SubjectSpec], checkpoint_path: Path, files: list[str], settings: BenchSettings,
                device: str, threads: int) -> list[Point]:
    log.info("end-to-end: warming the page cache (%.1f MiB)", warm_page_cache(files) / 2**20)
    pipelines = [spec for spec in specs if spec.model_path is not None]
    naive_runs: list[NaiveResult] = []
    runs: list[list[tuple[LatencyStats, dict[str, float], float, int | None]]] = [[] for _ in pipelines]
    rounds = max(1, settings.e2e_rounds)
    for number in range(1, rounds + 1):
        log.info("end-to-end round %d of %d: naive loop over %d files", number, rounds, len(files))
        naive_runs.append(naive_loop(checkpoint_path, files, device, quiet=settings.quiet))
        for spec, spec_runs in zip(pipelines, runs, strict=True):
            log.info("end-to-end round %d of %d: iqa-run pipeline with %s (%s, %s)", number, rounds,
                     spec.model_path.name if spec.model_path else "", spec.backend, spec.device)
            spec_runs.append(_pipeline_run(spec, files, settings, threads))
    naive_rates = [run.timing.throughput_img_s for run in naive_runs]
    naive = naive_runs[_median_round(naive_rates)]
    baseline = _point("end-to-end", "naive-loop torch-eager", "fp32", device, naive.timing, naive_runs[0].load_seconds,
                      None if device.startswith("cuda") else torch.get_num_threads())
    baseline.speedup, baseline.max_abs_error, baseline.srocc, baseline.images = 1.0, 0.0, 1.0, len(files)
    points = [baseline]
    for spec, spec_runs in zip(pipelines, runs, strict=True):
        ratios = [run[0].throughput_img_s / rate for run, rate in zip(spec_runs, naive_rates, strict=True)]
        timing, scores, _, used_threads = spec_runs[_median_round(ratios)]
        point = _point("end-to-end", spec.backend, spec.precision, spec.device, timing, spec_runs[0][2], used_threads)
        common = [f for f in files if f in scores and f in naive.scores]
        agreed = agreement(np.array([naive.scores[f] for f in common]), np.array([scores[f] for f in common]))
        point.max_abs_error, point.srocc = agreed.max_abs, agreed.srocc
        point.speedup = float(np.median(ratios))
        point.speedup_rounds = [round(r, 3) for r in ratios]
        point.speedup_spread = (max(ratios) - min(ratios)) / point.speedup
        point.wide_spread = point.speedup_spread > WIDE_SPREAD
        if point.wide_spread:
            log.warning("end-to-end %s %s: the rounds' speed-ups %s span %.0f %% of their median; the machine is "
                        "too busy for this ratio to be trusted", spec.backend, spec.precision,
                        ", ".join(f"{r:.2f}x" for r in ratios), 100 * point.speedup_spread)
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
    threads = settings.threads or usable_cpus()
    torch.set_num_threads(threads)
    kept = keep_freed_memory()  # before any contender: PyTorch eager would time page faults otherwise
    device = ("cuda" if torch.cuda.is_available() else "cpu") if settings.device == "auto" else settings.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QualityNetError(f"--device {device}: no CUDA device is available here; use --device cpu")
    onnx_paths, plan = ensure_artifacts(checkpoint_path, onnx, engine, out_dir)
    inputs, photo_names = load_photos(settings.photos, checkpoint.preprocess)
    specs, skipped = plan_subjects(checkpoint, onnx_paths, plan, device, threads, inputs[:1],
                                   settings.torch_variants, settings.cpu_max_batch, file_sha256(checkpoint_path))
    report = BenchReport(
        config_name=checkpoint.model_config.name,
        model_files={"checkpoint": str(checkpoint_path), **{k: str(v) for k, v in onnx_paths.items()},
                     **({"tensorrt": str(plan)} if plan else {}),
                     **{f"{spec.backend}-int8": str(spec.model_path) for spec in specs
                        if spec.precision == "int8" and spec.model_path is not None}},
        settings={**{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
                  "threads": threads, "device": device, "photos": len(photo_names),
                  "allocator": "freed memory kept (glibc mallopt)" if kept else "the C library's defaults"},
        machine=machine_info(threads), skipped=skipped)
    report.points, failed = measure_model_only(specs, inputs, settings, checkpoint.score_scale)
    report.skipped += failed
    if settings.images is not None:
        files = list(iter_folder(settings.images))[: settings.e2e_limit]
        if not files:
            raise QualityNetError(f"{settings.images}: no image files found for the end-to-end run")
        report.settings["e2e_order"] = E2E_ORDER
        report.points += _end_to_end(specs, checkpoint_path, files, settings, device, threads)
    return report
