"""The things a benchmark compares: PyTorch eager, ONNX Runtime per provider, TensorRT.

Each :class:`SubjectSpec` opens lazily, so one model is resident at a time. An opened
:class:`Subject` scores host batches (for accuracy) and builds a timed step for a batch kept
where the backend wants it (for speed). Points that cannot run here are returned as
:class:`Skipped` with the reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qualitynet.runtime.runner import BaseRunner, runner_for
from qualitynet.trainer.checkpoint import Checkpoint

__all__ = ["ORT_PROVIDERS", "Skipped", "Subject", "SubjectSpec", "plan_subjects"]

# onnxruntime's provider name -> the runtime's --provider value, in order of preference.
ORT_PROVIDERS = {"TensorrtExecutionProvider": "tensorrt", "CUDAExecutionProvider": "cuda",
                 "CPUExecutionProvider": "cpu"}


@dataclass
class Skipped:
    """A point that was asked for and not measured, and why."""

    backend: str
    precision: str
    device: str
    reason: str


@dataclass
class Subject:
    """An opened backend.

    Attributes:
        infer: host float32 NCHW batch -> unit-scale scores ``(N,)``.
        make_step: batch -> a callable running one synchronised inference of it, returning
            its latency in ms when measured with device events, else None.
        load_seconds: time to load the model and run it once (engine load, session
            creation, cuDNN autotuning...), reported apart from the timed runs.
        close: frees the model.
    """

    infer: Callable[[np.ndarray], np.ndarray]
    make_step: Callable[[np.ndarray], Callable[[], float | None]]
    close: Callable[[], None]
    load_seconds: float = 0.0


@dataclass
class SubjectSpec:
    """A backend/precision/device to measure, opened on demand."""

    backend: str
    precision: str
    device: str
    open: Callable[[], Subject]
    model_path: Path | None = None


def _torch_subject(checkpoint: Checkpoint, device: str, fp16: bool) -> Subject:
    model = checkpoint.build_model().to(device)
    if fp16:
        model = model.to(memory_format=torch.channels_last)
    cuda = device.startswith("cuda")

    def forward(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            return model(batch.contiguous(memory_format=torch.channels_last) if fp16 else batch)

    def infer(batch: np.ndarray) -> np.ndarray:
        return forward(torch.from_numpy(batch).to(device)).float().cpu().numpy().reshape(-1)

    def make_step(batch: np.ndarray) -> Callable[[], float | None]:
        on_device = torch.from_numpy(batch).to(device)
        if not cuda:
            return lambda: (forward(on_device), None)[1]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def step() -> float:
            torch.cuda.synchronize()
            start.record()
            forward(on_device)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end))

        return step

    return Subject(infer, make_step, close=lambda: torch.cuda.empty_cache() if cuda else None)


def _runner_subject(runner: BaseRunner) -> Subject:
    runner.activate()

    def make_step(batch: np.ndarray) -> Callable[[], float | None]:
        return lambda: (runner.infer(batch), None)[1]

    return Subject(runner.infer, make_step, runner.deactivate)


def _timed_open(opener: Callable[[], Subject], probe: np.ndarray) -> Callable[[], Subject]:
    def open_subject() -> Subject:
        start = time.perf_counter()
        subject = opener()
        subject.infer(probe)
        subject.load_seconds = time.perf_counter() - start
        return subject

    return open_subject


def _available_ort_providers() -> list[str]:
    import onnxruntime

    return [ORT_PROVIDERS[name] for name in ORT_PROVIDERS if name in onnxruntime.get_available_providers()]


def _tensorrt_missing() -> str | None:
    try:
        import tensorrt
    except ImportError:
        return "TensorRT is not installed (pip install tensorrt-cu12; see README, 'TensorRT')"
    if not hasattr(tensorrt, "Runtime"):  # tensorrt-stubs alone leave an empty namespace package
        return "TensorRT is not installed (only its type stubs are); see README, 'TensorRT'"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def plan_subjects(checkpoint: Checkpoint, onnx_paths: dict[str, Path], plan: Path | None, device: str,
                  threads: int, probe: np.ndarray) -> tuple[list[SubjectSpec], list[Skipped]]:
    """Every point this machine can measure, eager FP32 first (the baseline), and the rest skipped.

    Args:
        checkpoint: the weights every subject shares.
        onnx_paths: ``{"fp32": model.onnx, "fp16": model.fp16.onnx}`` (either may be absent).
        plan: the TensorRT engine, if one was built.
        device: ``cpu`` or ``cuda`` for PyTorch.
        threads: intra-op threads for ONNX Runtime (torch is set by the caller).
        probe: a small host batch used for the first (untimed, load-time) call.
    """
    specs = [SubjectSpec("torch-eager", "fp32", device, _timed_open(
        lambda: _torch_subject(checkpoint, device, fp16=False), probe))]
    skipped = []
    if device.startswith("cuda"):
        specs.append(SubjectSpec("torch-eager", "fp16-autocast", device, _timed_open(
            lambda: _torch_subject(checkpoint, device, fp16=True), probe)))
    else:
        skipped.append(Skipped("torch-eager", "fp16-autocast", "cuda", "no CUDA device"))
    providers = _available_ort_providers()
    for provider in ORT_PROVIDERS.values():
        for precision, path in onnx_paths.items():
            if provider not in providers:
                skipped.append(Skipped("onnxruntime", precision, provider,
                                       f"this onnxruntime build has no {provider} provider (onnxruntime-gpu has)"))
                continue

            def opener(path: Path = path, provider: str = provider) -> Subject:
                return _runner_subject(runner_for(path, provider=provider, threads=threads))

            specs.append(SubjectSpec("onnxruntime", precision, provider, _timed_open(opener, probe), path))
    missing = _tensorrt_missing()
    if missing is None and plan is None:
        missing = "no engine was built (see the export report)"
    if missing is None and plan is not None:
        specs.append(SubjectSpec("tensorrt", "fp16", "cuda", _timed_open(
            lambda: _runner_subject(runner_for(plan)), probe), plan))
    else:
        skipped.append(Skipped("tensorrt", "fp16", "cuda", missing or ""))
    int8_specs, int8_skipped = _int8_subjects(onnx_paths.get("fp32"), threads, probe)
    return specs + int8_specs, skipped + int8_skipped


def _int8_subjects(fp32: Path | None, threads: int, probe: np.ndarray) -> tuple[list[SubjectSpec], list[Skipped]]:
    """INT8 rows, from ``iqa-export --int8``'s files next to ``fp32``: ONNX Runtime on the CPU
    (``model.int8.onnx``) and TensorRT (``model.int8.plan``)."""
    if fp32 is None:
        return [], []
    stem = fp32.name.removesuffix(".onnx")
    cpu_model, plan = fp32.with_name(f"{stem}.int8.onnx"), fp32.with_name(f"{stem}.int8.plan")
    specs, skipped = [], []
    if cpu_model.is_file():
        specs.append(SubjectSpec("onnxruntime", "int8", "cpu", _timed_open(
            lambda: _runner_subject(runner_for(cpu_model, provider="cpu", threads=threads)), probe), cpu_model))
    else:
        skipped.append(Skipped("onnxruntime", "int8", "cpu", f"no {cpu_model.name} (iqa-export --int8 writes it)"))
    missing = _tensorrt_missing() or (None if plan.is_file() else
                                      f"no {plan.name} (iqa-export --int8 builds it where TensorRT and a GPU are)")
    if missing is None:
        specs.append(SubjectSpec("tensorrt", "int8", "cuda", _timed_open(
            lambda: _runner_subject(runner_for(plan)), probe), plan))
    else:
        skipped.append(Skipped("tensorrt", "int8", "cuda", missing))
    return specs, skipped

