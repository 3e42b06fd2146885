"""The things a benchmark compares: PyTorch eager, ONNX Runtime per provider, TensorRT.

Each :class:`SubjectSpec` opens lazily, so one model is resident at a time. An opened
:class:`Subject` scores host batches (for accuracy) and builds a timed step for a batch kept
where the backend wants it (for speed). Points that cannot run here are returned as
:class:`Skipped` with the reason.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

from qualitynet.artifact import ArtifactMeta
from qualitynet.bench.measure import Step
from qualitynet.errors import QualityNetError
from qualitynet.export.freshness import stale_reason
from qualitynet.export.onnx import read_meta
from qualitynet.export.targets import TARGETS
from qualitynet.runtime.ort_runner import PROVIDERS, OrtRunner
from qualitynet.runtime.runner import BaseRunner, runner_for
from qualitynet.runtime.trt_compat import tensorrt_status
from qualitynet.trainer.checkpoint import Checkpoint

__all__ = ["TORCH_VARIANTS", "Skipped", "Subject", "SubjectSpec", "plan_subjects", "runner_threads",
           "tensorrt_missing"]


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
        make_step: host batch -> a :data:`~qualitynet.bench.measure.Step`: one synchronised
            inference that reads the host batch and returns host scores, plus the device-only
            milliseconds where the backend can measure them (else None).
        load_seconds: time to load the model and run it once (engine load, session
            creation, cuDNN autotuning...), reported apart from the timed runs.
        close: frees the model.
        threads: the intra-op CPU threads the backend really uses (None where it does not
            compute on the CPU).
    """

    infer: Callable[[np.ndarray], np.ndarray]
    make_step: Callable[[np.ndarray], Step]
    close: Callable[[], None]
    load_seconds: float = 0.0
    threads: int | None = None


@dataclass
class SubjectSpec:
    """A backend/precision/device to measure, opened on demand.

    ``optional`` subjects (CUDA graphs, ``torch.compile``) are recorded as skipped with the
    error when they fail to open or run, instead of stopping the benchmark. Batch sizes above
    ``max_batch`` are skipped (to bound slow CPU points on a GPU machine).
    """

    backend: str
    precision: str
    device: str
    open: Callable[[], Subject]
    model_path: Path | None = None
    optional: bool = False
    max_batch: int | None = None


# --torch-variants names -> backend label.
TORCH_VARIANTS = {"cudagraph": "torch-cudagraph", "compile": "torch-compile"}


class _TorchModel:
    """PyTorch inference over the same span as the runners: host batch in, host scores out.

    ``mode`` is ``eager``, ``cudagraph`` (one CUDA graph captured per batch shape, replayed)
    or ``compile`` (``torch.compile``). On CUDA, CUDA events around the model alone give the
    device-only time; ``cudnn.benchmark`` is on, as ONNX Runtime's CUDA provider searches
    cuDNN algorithms too. TF32 is off: the ``fp32`` rows are IEEE FP32, the reference every
    other backend's accuracy is measured against (PyTorch's default runs cuDNN convolutions in
    TF32 on Ampere and newer).
    """

    def __init__(self, checkpoint: Checkpoint, device: str, fp16: bool, mode: str = "eager") -> None:
        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        self.device, self.fp16, self.mode = device, fp16, mode
        self.layout = torch.channels_last if fp16 else torch.contiguous_format
        model = checkpoint.build_model().to(device).eval().to(memory_format=self.layout)
        self.model = torch.compile(model) if mode == "compile" else model
        self.graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        # Autocast's weight cache must be off while a CUDA graph is captured (PyTorch's CUDA graphs notes).
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16,
                                                    cache_enabled=self.mode != "cudagraph"):
            return self.model(batch.contiguous(memory_format=self.layout))

    def _graph(self, shape: tuple[int, ...]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        if shape not in self.graphs:
            static_in = torch.zeros(shape, device=self.device).contiguous(memory_format=self.layout)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self.graphs[shape] = (graph, static_in, static_out)
        return self.graphs[shape]

    def run(self, host: np.ndarray) -> tuple[np.ndarray, float | None]:
        """Copy ``host`` in, run the model, copy the scores out; device ms from CUDA events."""
        source = torch.from_numpy(host)
        if not self.cuda:
            return self._forward(source).float().numpy().reshape(-1), None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if self.mode == "cudagraph":
            graph, static_in, static_out = self._graph(tuple(host.shape))
            static_in.copy_(source)
            start.record()
            graph.replay()
            end.record()
            out = static_out
        else:
            on_device = source.to(self.device)
            start.record()
            out = self._forward(on_device)
            end.record()
        scores = out.float().cpu().numpy().reshape(-1)  # .cpu() waits for the stream
        return scores, float(start.elapsed_time(end))

    def close(self) -> None:
        self.graphs.clear()
        if self.cuda:
            torch.cuda.empty_cache()


def _torch_subject(checkpoint: Checkpoint, device: str, fp16: bool, mode: str = "eager") -> Subject:
    model = _TorchModel(checkpoint, device, fp16, mode)

    def make_step(batch: np.ndarray) -> Step:
        return lambda: model.run(batch)

    return Subject(lambda batch: model.run(batch)[0], make_step, model.close,
                   threads=None if model.cuda else torch.get_num_threads())


def _runner_subject(runner: BaseRunner) -> Subject:
    runner.activate()

    def make_step(batch: np.ndarray) -> Step:
        return lambda: (runner.infer(batch), None)

    return Subject(runner.infer, make_step, runner.deactivate, threads=runner_threads(runner))


def runner_threads(runner: BaseRunner) -> int | None:
    """The intra-op threads an active runner's session was created with (ONNX Runtime), else None."""
    return runner.intra_op_threads if isinstance(runner, OrtRunner) else None


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

    available = onnxruntime.get_available_providers()
    return [provider for provider, name in PROVIDERS.items() if name in available]


def tensorrt_missing(plan: Path | None = None) -> str | None:
    """Why ``plan`` cannot run here (``None``: why no engine can be built and run here), or None when it can.

    A version-compatible plan runs on TensorRT's lean runtime; any other plan, and every build,
    needs the full TensorRT (:func:`~qualitynet.runtime.trt_compat.tensorrt_status` says which is here).
    """
    status = tensorrt_status()
    if plan is None:
        if status.full is None:
            return f"{status.full_missing}; see README, 'TensorRT'"
    else:
        try:
            status.runtime_for(ArtifactMeta.read_sidecar(plan), plan)
        except QualityNetError as exc:
            return str(exc)
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


def plan_subjects(checkpoint: Checkpoint, onnx_paths: dict[str, Path], plan: Path | None, device: str,
                  threads: int, probe: np.ndarray, torch_variants: Sequence[str] = (),
                  cpu_max_batch: int | None = None,
                  checkpoint_sha256: str | None = None) -> tuple[list[SubjectSpec], list[Skipped]]:
    """Every point this machine can measure, eager FP32 first (the baseline), and the rest skipped.

    Args:
        checkpoint: the weights every subject shares.
        onnx_paths: ``{"fp32": model.onnx, "fp16": model.fp16.onnx}`` (either may be absent).
        plan: the TensorRT engine, if one was built.
        device: ``cpu`` or ``cuda`` for PyTorch.
        threads: intra-op threads for ONNX Runtime (torch is set by the caller).
        probe: a small host batch used for the first (untimed, load-time) call.
        torch_variants: keys of :data:`TORCH_VARIANTS` to add as FP16 autocast subjects on CUDA.
        cpu_max_batch: skip ONNX Runtime CPU points above this batch size.
        checkpoint_sha256: the checkpoint's hash: INT8 files that are not its exports, or
            that failed their accuracy gate, are skipped with the reason (``None``: not checked).
    """
    specs = [SubjectSpec("torch-eager", "fp32", device, _timed_open(
        lambda: _torch_subject(checkpoint, device, fp16=False), probe))]
    skipped = []
    if device.startswith("cuda"):
        specs.append(SubjectSpec("torch-eager", "fp16-autocast", device, _timed_open(
            lambda: _torch_subject(checkpoint, device, fp16=True), probe)))
        for mode in torch_variants:
            specs.append(SubjectSpec(TORCH_VARIANTS[mode], "fp16-autocast", device, _timed_open(
                functools.partial(_torch_subject, checkpoint, device, True, mode), probe), optional=True))
    else:
        skipped += [Skipped(backend, "fp16-autocast", "cuda", "no CUDA device")
                    for backend in ("torch-eager", *(TORCH_VARIANTS[mode] for mode in torch_variants))]
    providers = _available_ort_providers()
    for provider in PROVIDERS:
        for precision, path in onnx_paths.items():
            if provider not in providers:
                skipped.append(Skipped("onnxruntime", precision, provider,
                                       f"this onnxruntime build has no {provider} provider (onnxruntime-gpu has)"))
                continue

            def opener(path: Path = path, provider: str = provider) -> Subject:
                return _runner_subject(runner_for(path, provider=provider, threads=threads))

            specs.append(SubjectSpec("onnxruntime", precision, provider, _timed_open(opener, probe), path,
                                     max_batch=cpu_max_batch if provider == "cpu" else None))
    missing = tensorrt_missing(plan) if plan is not None else (
        tensorrt_missing() or "no engine was built (see the export report)")
    precision = plan_precision(plan) if plan is not None else "fp16"
    if missing is None and plan is not None:
        specs.append(SubjectSpec("tensorrt", precision, "cuda", _timed_open(
            lambda: _runner_subject(runner_for(plan)), probe), plan))
    else:
        skipped.append(Skipped("tensorrt", precision, "cuda", missing or ""))
    int8_specs, int8_skipped = _int8_subjects(onnx_paths.get("fp32"), threads, probe, checkpoint_sha256)
    return specs + int8_specs, skipped + int8_skipped


def plan_precision(plan: Path) -> str:
    """The precision a plan's sidecar records (an FP32 engine on Pascal, where FP16 is 1/64 rate)."""
    try:
        return ArtifactMeta.read_sidecar(plan).precision
    except QualityNetError:
        return "fp16"  # unreadable: the runner refuses it with the reason when it opens


def _int8_subjects(fp32: Path | None, threads: int, probe: np.ndarray,
                   checkpoint_sha256: str | None) -> tuple[list[SubjectSpec], list[Skipped]]:
    """INT8 rows, from ``iqa-export --int8``'s files next to ``fp32``: ONNX Runtime on the CPU
    (``model.int8.onnx``) and TensorRT (``model.int8.plan``), each only when it is an export of
    this checkpoint that passed its accuracy gate."""
    if fp32 is None:
        return [], []
    folder, stem = fp32.parent, fp32.name.removesuffix(".onnx")
    cpu_model, plan = TARGETS["int8_onnx"].path(folder, stem), TARGETS["int8_plan"].path(folder, stem)
    specs, skipped = [], []
    reason = _int8_unusable(cpu_model, checkpoint_sha256)
    if reason is None:
        specs.append(SubjectSpec("onnxruntime", "int8", "cpu", _timed_open(
            lambda: _runner_subject(runner_for(cpu_model, provider="cpu", threads=threads)), probe), cpu_model))
    else:
        skipped.append(Skipped("onnxruntime", "int8", "cpu", reason))
    missing = _int8_unusable(plan, checkpoint_sha256) or tensorrt_missing(plan)
    if missing is None:
        specs.append(SubjectSpec("tensorrt", "int8", "cuda", _timed_open(
            lambda: _runner_subject(runner_for(plan)), probe), plan))
    else:
        skipped.append(Skipped("tensorrt", "int8", "cuda", missing))
    return specs, skipped


def _int8_unusable(path: Path, checkpoint_sha256: str | None) -> str | None:
    """Why an INT8 model (ONNX or plan) is not measured, or None: missing, another checkpoint's, or gate failed."""
    if not path.is_file():
        where = " where TensorRT and a GPU are" if path.suffix == ".plan" else ""
        return f"no {path.name} (iqa-export --int8 writes it{where})"
    if checkpoint_sha256 is not None and (stale := stale_reason(path, checkpoint_sha256)) is not None:
        return f"{path.name} left out: {stale}; iqa-export --int8 again"
    try:
        meta = read_meta(onnx.load(str(path), load_external_data=False), str(path)) if path.suffix == ".onnx" \
            else ArtifactMeta.read_sidecar(path)
    except QualityNetError as exc:
        return str(exc)
    gate = meta.extra.get("int8", {}).get("gate")
    if not isinstance(gate, dict) or not gate.get("passed"):
        figures = "" if not isinstance(gate, dict) else (
            f" (SROCC {gate.get('srocc')}, max abs error {gate.get('max_abs_mos')} MOS against FP32)")
        return f"{path.name} left out: it did not pass its INT8 accuracy gate{figures}; see the export report"
    return None
