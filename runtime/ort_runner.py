"""ONNX Runtime backend: runs ``model.onnx`` or ``model.fp16.onnx`` on the best provider present.

onnxruntime is imported when a runner activates, so importing this module costs nothing.
The artifact record is read from the ONNX file's ``metadata_props`` through the session.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from qualitynet.artifact import ONNX_METADATA_KEY, ArtifactMeta
from qualitynet.cpus import usable_cpus
from qualitynet.errors import QualityNetError
from qualitynet.runtime.runner import BaseRunner, check_graph_input

__all__ = ["PROVIDERS", "OrtRunner", "choose_providers"]

logger = logging.getLogger(__name__)

# Short names, in order of preference.
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_NP_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise QualityNetError(
            "onnxruntime is not installed; pip install 'qualitynet[ort]' (or onnxruntime-gpu for CUDA)"
        ) from None
    return onnxruntime


def choose_providers(available: list[str], provider: str | None) -> list[str]:
    """The execution providers to request, best first, each with the ones below it as fallback.

    Args:
        available: ``onnxruntime.get_available_providers()``.
        provider: a key of :data:`PROVIDERS`, or ``None`` for the best available.

    Raises:
        QualityNetError: an unknown name, or a provider this onnxruntime build lacks.
    """
    order = list(PROVIDERS)
    if provider is None:
        start = next(i for i, key in enumerate(order) if PROVIDERS[key] in available or key == "cpu")
    elif provider in PROVIDERS:
        if PROVIDERS[provider] not in available:
            raise QualityNetError(
                f"ONNX Runtime provider {provider!r} is not available here (available: "
                f"{', '.join(available)}); install onnxruntime-gpu for cuda/tensorrt, or pass --provider cpu"
            )
        start = order.index(provider)
    else:
        raise QualityNetError(f"unknown provider {provider!r}; choose one of {', '.join(PROVIDERS)}")
    return [PROVIDERS[key] for key in order[start:] if PROVIDERS[key] in available or key == "cpu"]


class OrtRunner(BaseRunner):
    """Scores batches with an ONNX Runtime session.

    Args:
        model_path: an ONNX file written by iqa-export (FP32 or FP16).
        provider: ``tensorrt``, ``cuda`` or ``cpu``; ``None`` takes the first available in that order.
        threads: intra-op threads (match ``torch.set_num_threads`` when comparing); ``None``: the
            CPUs this process may use (:func:`~qualitynet.cpus.usable_cpus`) when its affinity or
            cgroup quota leaves fewer than the machine has, else ONNX Runtime's default (one per
            physical core).

    With :attr:`~qualitynet.runtime.runner.BaseRunner.shares_cpus` set, idle intra-op threads
    sleep instead of spinning (ONNX Runtime's default, for latency): spinning threads take the
    decode workers' time (on 2 quiet cores, 2 workers, camera-size JPEGs: 22.3-23.6 img/s spinning,
    25.0-25.1 not).
    """

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, provider: str | None = None, threads: int | None = None) -> None:
        super().__init__(model_path)
        self.provider = provider
        self.threads = threads
        self._session: Any = None
        self._input: tuple[str, Any] = ("", np.float32)
        self._output = ""

    def activate_impl(self) -> ArtifactMeta:
        ort = _import_onnxruntime()
        providers = choose_providers(ort.get_available_providers(), self.provider)
        options = ort.SessionOptions()
        usable = usable_cpus()
        threads = self.threads or (usable if usable < (os.cpu_count() or usable) else None)
        if threads:
            options.intra_op_num_threads = threads
        if self.shares_cpus:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises assorted pybind11 errors
            raise QualityNetError(
                f"{self.model_path}: ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc).strip()[:300]}); "
                "re-export it with iqa-export"
            ) from None
        record = session.get_modelmeta().custom_metadata_map.get(ONNX_METADATA_KEY)
        if record is None:
            raise QualityNetError(
                f"{self.model_path}: no {ONNX_METADATA_KEY!r} metadata, so the preprocessing and score scale "
                "are unknown; export the model with iqa-export"
            )
        meta = ArtifactMeta.from_json(record, str(self.model_path))
        inputs, outputs = session.get_inputs(), session.get_outputs()
        check_graph_input(meta, inputs[0].shape[1:], self.model_path)
        names = [o.name for o in outputs]
        self._input = (inputs[0].name, _NP_TYPES.get(inputs[0].type, np.float32))
        self._output = meta.preprocess.output_name if meta.preprocess.output_name in names else names[0]
        self._session = session
        logger.info("onnxruntime providers: %s", ", ".join(session.get_providers()))
        return meta

    @property
    def runs_on_cpu(self) -> bool:
        """Whether the first provider this runner takes (known before activation) is the CPU's."""
        return choose_providers(_import_onnxruntime().get_available_providers(), self.provider)[0] == PROVIDERS["cpu"]

    @property
    def intra_op_threads(self) -> int:
        """The session's intra-op thread setting (0: ONNX Runtime's default, one per physical core)."""
        if self._session is None:
            raise QualityNetError(f"onnxruntime runner for {self.model_path} is not active; call activate()")
        return int(self._session.get_session_options().intra_op_num_threads)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        name, dtype = self._input
        (scores,) = self._session.run([self._output], {name: batch.astype(dtype, copy=False)})
        return np.asarray(scores, dtype=np.float32)

    def deactivate_impl(self) -> None:
        self._session = None
