"""iqa-bench on the tiny config with tiny iteration counts: every figure present and sane."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from qualitynet.bench import run as bench_run
from qualitynet.bench.cli import main
from qualitynet.bench.compare import compare
from qualitynet.bench.measure import LatencyStats
from qualitynet.bench.naive import keep_freed_memory
from qualitynet.bench.report import format_speedup, format_table
from qualitynet.bench.run import BenchReport, BenchSettings, run_bench
from qualitynet.export import load_photos
from qualitynet.runtime.scorer import Scorer
from qualitynet.trainer.checkpoint import load_checkpoint

LATENCY_FIELDS = ("latency_p50_ms", "latency_p90_ms", "latency_p99_ms", "latency_mean_ms")


@pytest.fixture(scope="module")
def bench_dir(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    (folder / "model.pt").write_bytes(tiny_checkpoint.read_bytes())
    return folder


# What the end-to-end run did, in order: ("warm", files) when it warmed the page cache, ("naive", files),
# ("pipeline fp32", files) for a pipeline run.
E2E_CALLS: list[tuple[str, list[str]]] = []


@pytest.fixture(scope="module")
def report(bench_dir: Path, photo_dir: Path) -> BenchReport:
    settings = BenchSettings(batch_sizes=(1, 4), warmup=1, iters=3, images=photo_dir, e2e_batch_size=4,
                             e2e_workers=1, quiet=True, device="cpu", e2e_rounds=2)
    warm, naive, pipeline = bench_run.warm_page_cache, bench_run.naive_loop, bench_run._pipeline_run

    def record_warm(files: list[str]) -> int:
        E2E_CALLS.append(("warm", list(files)))
        return warm(files)

    def record_naive(checkpoint: Path, files: list[str], *args: Any, **kwargs: Any) -> Any:
        E2E_CALLS.append(("naive", list(files)))
        return naive(str(checkpoint), files, *args, **kwargs)

    def record_pipeline(spec: Any, files: list[str], *args: Any) -> Any:
        E2E_CALLS.append((f"pipeline {spec.precision}", list(files)))
        return pipeline(spec, files, *args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bench_run, "warm_page_cache", record_warm)
        patch.setattr(bench_run, "naive_loop", record_naive)
        patch.setattr(bench_run, "_pipeline_run", record_pipeline)
        return run_bench(bench_dir / "model.pt", settings)


def test_every_point_is_present_and_sane(report: BenchReport) -> None:
    model_only = [p for p in report.points if p.mode == "model-only"]
    assert {(p.backend, p.precision, p.batch_size) for p in model_only} == {
        (backend, precision, bs) for backend, precision in
        (("torch-eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16")) for bs in (1, 4)}
    for point in report.points:
        assert point.throughput_img_s > 0 and point.peak_rss_mib > 0 and point.load_seconds >= 0
        assert point.latency_p50_ms > 0 and point.latency_mean_ms > 0
        assert point.latency_p90_ms is None and point.latency_p99_ms is None  # 3-8 batches: too few for tails
        assert point.speedup > 0
    assert all(p.iterations >= 3 for p in model_only)
    eager = [p for p in model_only if p.backend == "torch-eager"]
    assert all(p.speedup == 1.0 for p in eager)


def test_accuracy_agreement_comes_from_real_outputs(report: BenchReport, bench_dir: Path) -> None:
    checkpoint = load_checkpoint(bench_dir / "model.pt")
    inputs, _ = load_photos(None, checkpoint.preprocess)
    with torch.inference_mode():
        eager = checkpoint.score_scale.to_mos(checkpoint.build_model()(torch.from_numpy(inputs)).numpy().ravel())
    with Scorer(bench_dir / "model.fp16.onnx", workers=0) as scorer:
        fp16 = scorer.score_arrays(inputs)
    assert np.ptp(eager) > 0.05  # the scores really differ from photo to photo
    point = next(p for p in report.points if p.backend == "onnxruntime" and p.precision == "fp16"
                 and p.batch_size == 4 and p.mode == "model-only")
    assert point.max_abs_error == pytest.approx(float(np.max(np.abs(fp16 - eager))), abs=1e-4)
    # FP16 rounding of an untrained model whose scores span ~6 MOS: 0.04-0.06 MOS measured; a broken one is far off
    assert 0 < point.max_abs_error < 0.1 and point.srocc > 0.95
    fp32 = next(p for p in report.points if p.backend == "onnxruntime" and p.precision == "fp32" and p.batch_size == 1)
    assert fp32.max_abs_error < 1e-3 and fp32.srocc > 0.99


def test_end_to_end_against_the_naive_loop(report: BenchReport) -> None:
    e2e = [p for p in report.points if p.mode == "end-to-end"]
    assert e2e[0].backend == "naive-loop torch-eager" and e2e[0].speedup == 1.0
    assert {p.precision for p in e2e[1:]} == {"fp32", "fp16"}
    for point in e2e:
        assert point.images == 8
    fp32 = next(p for p in e2e if p.precision == "fp32" and p.backend == "onnxruntime")
    assert fp32.max_abs_error < 1e-3 and fp32.srocc > 0.99


def test_the_page_cache_is_warmed_before_the_naive_loop_reads_the_files(report: BenchReport) -> None:
    round_calls = ["naive", "pipeline fp32", "pipeline fp16"]
    assert [name for name, _ in E2E_CALLS] == ["warm", *round_calls, *round_calls], "contenders alternate"
    assert all(files == E2E_CALLS[0][1] for _, files in E2E_CALLS) and len(E2E_CALLS[0][1]) == 8
    assert "page cache warmed" in report.settings["e2e_order"]
    assert "page cache warmed" in format_table(report)


def test_end_to_end_speedup_is_the_median_of_the_rounds_and_a_wide_range_is_flagged(report: BenchReport) -> None:
    pipeline = next(p for p in report.points if p.mode == "end-to-end" and p.backend == "onnxruntime")
    assert len(pipeline.speedup_rounds) == 2 and all(r > 0 for r in pipeline.speedup_rounds)
    assert pipeline.speedup == pytest.approx(float(np.median(pipeline.speedup_rounds)), abs=1e-3)
    rounds = pipeline.speedup_rounds
    assert pipeline.speedup_spread == pytest.approx((max(rounds) - min(rounds)) / pipeline.speedup, abs=1e-2)
    assert pipeline.wide_spread == (pipeline.speedup_spread > bench_run.WIDE_SPREAD)
    steady = dataclasses.replace(pipeline, speedup=2.0, speedup_rounds=[1.9, 2.0, 2.1], wide_spread=False)
    busy = dataclasses.replace(pipeline, speedup=2.0, speedup_rounds=[1.2, 2.0, 3.0], wide_spread=True)
    assert format_speedup(steady) == "2.00x [1.90-2.10]" and format_speedup(busy) == "2.00x [1.20-3.00] WIDE"
    assert "median of the 2 rounds' ratios" in format_table(report)


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "mallopt"), reason="the C library has no mallopt (not glibc)")
def test_the_benchmark_process_keeps_freed_memory_and_says_so(report: BenchReport) -> None:
    assert keep_freed_memory()  # glibc accepted both thresholds (mallopt returns 0 for a value it refuses)
    assert report.settings["allocator"] == "freed memory kept (glibc mallopt)"


def test_one_thread_count_reaches_every_backend_and_is_reported(report: BenchReport) -> None:
    cores = len(os.sched_getaffinity(0))  # --threads 0 means every core this process may use
    assert report.settings["threads"] == cores
    for point in report.points:
        # torch (eager, the naive loop), model-only ONNX Runtime and the end-to-end scorer alike
        assert point.threads == cores, (point.mode, point.backend, point.precision)


def test_latency_is_per_batch_and_per_image_with_units(report: BenchReport) -> None:
    for point in report.points:
        assert point.ms_per_image == pytest.approx(1000.0 / point.throughput_img_s)
    naive = next(p for p in report.points if p.backend == "naive-loop torch-eager")
    assert naive.batch_size == 1 and naive.ms_per_image == pytest.approx(naive.latency_mean_ms)
    pipeline = next(p for p in report.points if p.mode == "end-to-end" and p.backend == "onnxruntime")
    assert pipeline.batch_size == 4 and pipeline.iterations == 2  # 8 files, batches of 4
    text = format_table(report)
    assert "ms/img" in text and "p50 ms/batch" in text and "p99 ms/batch" in text
    assert "p90 needs 20 and p99 200 timed batches" in text


@pytest.mark.parametrize(("samples", "p90_shown", "p99_shown"), [(19, False, False), (20, True, False),
                                                                   (50, True, False), (200, True, True)])
def test_percentiles_need_enough_samples(samples: int, p90_shown: bool, p99_shown: bool) -> None:
    stats = LatencyStats.from_latencies([float(i) for i in range(1, samples + 1)], 8, 1.0, None)
    assert (stats.p90_ms is not None, stats.p99_ms is not None) == (p90_shown, p99_shown)
    assert stats.p50_ms == pytest.approx((samples + 1) / 2)
    if p99_shown:
        assert stats.p99_ms is not None and stats.p99_ms < samples  # not merely the maximum


def test_machine_and_skipped_sections(report: BenchReport) -> None:
    machine = report.machine
    assert machine["cpu_model"] and machine["cpu_cores"] >= 1
    assert machine["threads"]["torch_intra_op"] == machine["threads"]["onnxruntime_intra_op"]
    assert {"torch", "onnxruntime", "qualitynet"} <= set(machine["versions"])
    reasons = {(s.backend, s.precision): s.reason for s in report.skipped}
    if not torch.cuda.is_available():
        assert machine["gpu"] is None
        assert reasons[("torch-eager", "fp16-autocast")] == "no CUDA device"
        assert "TensorRT" in reasons[("tensorrt", "fp16")] or "CUDA" in reasons[("tensorrt", "fp16")]


def test_cli_writes_table_json_markdown_and_plot(bench_dir: Path, tmp_path: Path) -> None:
    args = [str(bench_dir / "model.pt"), "--batch-sizes", "1,2", "--warmup", "1", "--iters", "2", "--device", "cpu",
            "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"), "--quiet"]
    result = CliRunner().invoke(main, args + ["--markdown"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("| mode | backend | precision |")
    data = json.loads((tmp_path / "b.json").read_text())
    for point in data["points"]:
        assert {"backend", "precision", "batch_size", "throughput_img_s", *LATENCY_FIELDS} <= set(point)
        assert not any(isinstance(v, float) and math.isnan(v) for v in point.values())
        assert point["latency_p99_ms"] is None and point["latency_p50_ms"] > 0
    assert data["machine"]["versions"]["torch"] and data["settings"]["batch_sizes"] == [1, 2]
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_cli_bad_input(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [str(tmp_path / "missing.pt")])
    assert result.exit_code == 1 and "checkpoint not found" in result.output
    result = CliRunner().invoke(main, [str(tmp_path / "missing.pt"), "--batch-sizes", "1,x"])
    assert result.exit_code == 2
    result = CliRunner().invoke(main, [str(tmp_path / "missing.pt"), "--torch-variants", "cudagraph,jit"])
    assert result.exit_code == 2 and "unknown jit" in result.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_points(bench_dir: Path) -> None:
    report = run_bench(bench_dir / "model.pt", BenchSettings(batch_sizes=(1, 8), warmup=2, iters=5, quiet=True))
    precisions = {(p.backend, p.precision) for p in report.points}
    assert ("torch-eager", "fp16-autocast") in precisions
    assert report.machine["gpu"]["compute_capability"]
    assert all(p.peak_device_mib and p.peak_device_mib > 0 for p in report.points)


def test_compare_results_puts_old_and_new_side_by_side(tmp_path: Path) -> None:
    old = {"points": [{"mode": "model-only", "backend": "torch-eager", "precision": "fp32", "device": "cpu",
                       "batch_size": 8, "throughput_img_s": 400.0, "latency_p50_ms": 20.0, "speedup": 1.0}]}
    new = {"points": [{**old["points"][0], "throughput_img_s": 500.0, "ms_per_image": 2.0, "latency_p50_ms": 16.0},
                      {**old["points"][0], "backend": "onnxruntime", "throughput_img_s": 900.0, "speedup": 1.8}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    (tmp_path / "new.json").write_text(json.dumps(new))
    table = compare(tmp_path / "old.json", tmp_path / "new.json").splitlines()
    assert table[2] == ("| model-only | torch-eager | fp32 | 8 | 400.0 → 500.0 | 2.50 → 2.00 | 20.00 → 16.00 "
                        "| 1.00x → 1.00x |")
    assert table[3].startswith("| model-only | onnxruntime | fp32 | 8 | - → 900.0 |") and "- → 1.80x" in table[3]


def test_a_plan_the_lean_runtime_can_run_is_not_skipped_for_want_of_tensorrt(tmp_path: Path) -> None:
    """The benchmark asks the runtime's own TensorRT status which runtime loads a plan: a version-compatible plan
    of the lean runtime's release is held back here only by the missing GPU; a plain one needs the full TensorRT."""
    from qualitynet.artifact import ArtifactMeta, PreprocessCfg, ScoreScale
    from qualitynet.bench.subjects import tensorrt_missing
    from qualitynet.runtime.trt_compat import tensorrt_status

    lean = tensorrt_status().lean
    if lean is None or tensorrt_status().full is not None:
        pytest.skip("checks a machine with TensorRT's lean runtime and no full TensorRT")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    meta = ArtifactMeta("tiny", PreprocessCfg(), ScoreScale(), versions={"tensorrt": lean.__version__},
                        compute_capability="8.6", version_compatible=True)
    meta.write_sidecar(plan)
    assert tensorrt_missing(plan) == (None if torch.cuda.is_available() else "no CUDA device")
    dataclasses.replace(meta, version_compatible=False).write_sidecar(plan)
    assert "built without --version-compatible" in str(tensorrt_missing(plan))
