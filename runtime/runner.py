"""The one runner interface every backend implements, and the factory that picks one.

The lifecycle follows Polygraphy's runners: public :meth:`BaseRunner.activate`,
:meth:`BaseRunner.infer` and :meth:`BaseRunner.deactivate` check state and arguments, then
delegate to ``*_impl`` methods, which are all a backend writes. ``deactivate`` frees what
``activate`` allocated, and ``with runner:`` does both. Runners exchange arrays: a
preprocessed float32 NCHW batch in, unit-scale scores ``(N,)`` out; mapping to the MOS scale
is the caller's job (:class:`~qualitynet.artifact.ScoreScale`).
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np

from qualitynet.artifact import ArtifactMeta
from qualitynet.errors import QualityNetError

__all__ = ["BaseRunner", "check_graph_input", "runner_for"]

logger = logging.getLogger(__name__)


class BaseRunner(abc.ABC):
    """Scores preprocessed batches with one backend.

    Subclasses implement :meth:`activate_impl` (load the model, allocate, and return its
    :class:`ArtifactMeta`), :meth:`infer_impl` and :meth:`deactivate_impl`.

    Args:
        model_path: the artifact to load.
    """

    name = "base"
    shares_cpus = False
    """Set before :meth:`activate` when other processes (decode workers) work on this process's
    CPUs: a runner whose idle threads can yield them then does."""

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        self._meta: ArtifactMeta | None = None

    @property
    def runs_on_cpu(self) -> bool:
        """Whether inference runs on the CPU (then it competes with decoding for the cores)."""
        return False

    @property
    def is_active(self) -> bool:
        """Whether the model is loaded."""
        return self._meta is not None

    @property
    def meta(self) -> ArtifactMeta:
        """The artifact's record (preprocessing, score scale, profile); needs :meth:`activate`."""
        if self._meta is None:
            raise QualityNetError(f"{self.name} runner for {self.model_path} is not active; call activate()")
        return self._meta

    def activate(self) -> None:
        """Load the model and allocate what inference needs (idempotent)."""
        if self.is_active:
            logger.debug("%s runner already active", self.name)
            return
        if not self.model_path.is_file():
            raise QualityNetError(f"{self.model_path}: model file not found")
        self._meta = self.activate_impl()
        logger.info("loaded %s with %s (%s)", self.model_path, self.name, self._meta.precision)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Score a preprocessed batch.

        Args:
            batch: ``(N, 3, H, W)`` float32, laid out and sized as the artifact says; any N >= 1.

        Returns:
            Unit-scale scores, float32 of shape ``(N,)``.
        """
        cfg = self.meta.preprocess
        expected = (3, cfg.height, cfg.width)
        if batch.ndim != 4 or batch.shape[1:] != expected or batch.shape[0] == 0:
            raise QualityNetError(f"batch of shape {batch.shape} does not fit the model's input (N, {expected})")
        scores = self.infer_impl(np.ascontiguousarray(batch, dtype=np.float32))
        return np.asarray(scores, dtype=np.float32).reshape(batch.shape[0])

    def deactivate(self) -> None:
        """Free everything :meth:`activate` allocated (idempotent); the runner is inactive after,
        even when freeing raises."""
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self._meta = None

    @abc.abstractmethod
    def activate_impl(self) -> ArtifactMeta:
        """Load the model; return its artifact record."""

    @abc.abstractmethod
    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        """Run a contiguous float32 batch; return ``N`` unit-scale scores in any shape."""

    @abc.abstractmethod
    def deactivate_impl(self) -> None:
        """Free what :meth:`activate_impl` allocated."""

    def __enter__(self) -> BaseRunner:
        self.activate()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.deactivate()


def check_graph_input(meta: ArtifactMeta, dims: Sequence[object], model_path: Path) -> None:
    """Refuse a record whose input size is not the graph's (a damaged or mismatched record).

    Args:
        meta: the artifact's record.
        dims: the graph input's dims after the batch axis; names or negative numbers are dynamic.
        model_path: the model, for the message.

    Raises:
        QualityNetError: a fixed dim of the graph differs from ``(3, height, width)``.
    """
    cfg = meta.preprocess
    expected = (3, cfg.height, cfg.width)
    fixed = [d if isinstance(d, int) and d >= 0 else None for d in dims]
    if len(fixed) != 3 or any(d is not None and d != e for d, e in zip(fixed, expected, strict=True)):
        graph = "x".join("?" if d is None else str(d) for d in fixed)
        raise QualityNetError(
            f"{model_path}: damaged artifact record: it says the input is {'x'.join(map(str, expected))} but the "
            f"graph takes {graph}; re-export the model with iqa-export"
        )


def runner_for(model_path: str | Path, provider: str | None = None, threads: int | None = None,
               allow_host_code: bool = False) -> BaseRunner:
    """The runner for an artifact, chosen by its suffix (not yet activated).

    Args:
        model_path: ``.plan``/``.engine`` (TensorRT) or ``.onnx`` (ONNX Runtime).
        provider: ONNX Runtime execution provider (``tensorrt``, ``cuda``, ``cpu``); ``None``
            picks the best available. Refused for a TensorRT plan.
        threads: ONNX Runtime intra-op threads; ``None`` lets it choose.
        allow_host_code: TensorRT plans only: see :class:`~qualitynet.runtime.trt_runner.TrtRunner`.

    Raises:
        QualityNetError: an unknown suffix, or options the backend cannot honour.
    """
    path = Path(model_path)
    suffix = path.suffix.lower()
    if suffix in (".plan", ".engine"):
        if provider not in (None, "tensorrt"):
            raise QualityNetError(f"--provider {provider} applies to .onnx models; {path.name} is a TensorRT plan")
        from qualitynet.runtime.trt_runner import TrtRunner

        return TrtRunner(path, allow_host_code=allow_host_code)
    if suffix == ".onnx":
        from qualitynet.runtime.ort_runner import OrtRunner

        return OrtRunner(path, provider=provider, threads=threads)
    raise QualityNetError(
        f"{path}: unknown model type {suffix or '(no suffix)'!r}; pass a .onnx or a .plan written by iqa-export"
    )
