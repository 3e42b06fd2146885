"""The GPU-free half of the TensorRT backend: finding TensorRT, checking a plan, planning batches.

Nothing here touches CUDA, so all of it is tested on machines without a GPU; the engine is
passed in as an object with TensorRT's name-based API (``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_profile_shape``), valid on TensorRT
8.6, 10.x and 11.x.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from qualitynet.artifact import ArtifactMeta
from qualitynet.errors import QualityNetError

if TYPE_CHECKING:
    import tensorrt

__all__ = [
    "REBUILD_HINT",
    "batch_limits",
    "check_plan_compat",
    "find_io_tensors",
    "import_tensorrt",
    "plan_chunks",
    "same_release",
]

logger = logging.getLogger(__name__)

REBUILD_HINT = (
    "rebuild the plan on this machine with `iqa-export --fp16 model.pt` (TensorRT engines are tied to "
    "the GPU and TensorRT version that built them); meanwhile `iqa-run model.fp16.onnx ...` works anywhere"
)
# Full TensorRT first, then the lean runtime (8.6/10.x: tensorrt_lean; 11.x also tensorrt_lean_bindings).
_MODULES = ("tensorrt", "tensorrt_lean", "tensorrt_lean_bindings")


def import_tensorrt() -> ModuleType:
    """The installed TensorRT runtime module: full ``tensorrt``, else the lean runtime.

    A ``tensorrt`` that is only a namespace (the type stubs) does not count.

    Raises:
        QualityNetError: neither is installed; the message says what to install.
    """
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "Runtime"):
            logger.debug("using %s %s", name, getattr(module, "__version__", "?"))
            return module
    raise QualityNetError(
        "TensorRT is not installed: a .plan needs it (pip install tensorrt-cu12, or tensorrt==8.6.1 on "
        "Pascal GPUs, plus pip install 'qualitynet[tensorrt]' for cuda-python); or score the ONNX model instead"
    )


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def same_release(built: str, installed: str, version_compatible: bool = False) -> bool:
    """Whether a runtime of version ``installed`` may load a plan built by ``built``.

    Plans are tied to major.minor.patch; a plan built with version compatibility runs on the
    same major version at or above the one that built it.
    """
    have, need = _release(installed), _release(built)
    if version_compatible:
        return have[:1] == need[:1] and have >= need
    return have == need


def check_plan_compat(meta: ArtifactMeta, plan: Path, tensorrt_version: str, compute_capability: str,
                      gpu_name: str = "") -> None:
    """Refuse a plan built for another GPU architecture or TensorRT version.

    Args:
        meta: the plan's sidecar record (``versions["tensorrt"]``, ``compute_capability``,
            ``gpu_name``; ``extra["version_compatible"]`` when built so).
        plan: the plan's path, for the message.
        tensorrt_version: the TensorRT present here.
        compute_capability: this GPU's, as ``"major.minor"``.
        gpu_name: this GPU's name, for the message.

    Raises:
        QualityNetError: which mismatch, and how to rebuild.
    """
    built_version = meta.versions.get("tensorrt")
    if not built_version or not meta.compute_capability:
        raise QualityNetError(
            f"{plan}: its sidecar does not say which TensorRT version and GPU built it, so it cannot be "
            f"checked; {REBUILD_HINT}"
        )
    problems = []
    if meta.compute_capability != compute_capability:
        problems.append(
            f"it was built for compute capability {meta.compute_capability} ({meta.gpu_name or 'unknown GPU'}) "
            f"but this GPU is {compute_capability} ({gpu_name or 'unknown'})"
        )
    if not same_release(built_version, tensorrt_version, bool(meta.extra.get("version_compatible"))):
        problems.append(f"it was built with TensorRT {built_version} but TensorRT {tensorrt_version} is installed")
    if problems:
        raise QualityNetError(f"{plan}: refused, {'; and '.join(problems)}; {REBUILD_HINT}")
    if meta.gpu_name and gpu_name and meta.gpu_name != gpu_name:
        logger.warning("%s was built on %s and runs on %s (same compute capability %s); timings may differ",
                       plan, meta.gpu_name, gpu_name, compute_capability)


def find_io_tensors(engine: tensorrt.ICudaEngine, io_mode: Any,
                    preferred: tuple[str, str] = ("", "")) -> tuple[str, str]:
    """The engine's input and output tensor names, by the name-based API.

    Args:
        engine: a deserialized engine (anything with ``num_io_tensors``, ``get_tensor_name``
            and ``get_tensor_mode``).
        io_mode: the module's ``TensorIOMode`` enum.
        preferred: the artifact's input and output names, taken when present.

    Raises:
        QualityNetError: the engine does not have exactly one input and at least one output.
    """
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == io_mode.INPUT]
    outputs = [n for n in names if engine.get_tensor_mode(n) == io_mode.OUTPUT]
    if len(inputs) != 1 or not outputs:
        raise QualityNetError(
            f"engine has inputs {inputs} and outputs {outputs}; a QualityNet plan has one image input and a "
            f"score output; {REBUILD_HINT}"
        )
    output = preferred[1] if preferred[1] in outputs else outputs[0]
    if preferred[0] and preferred[0] != inputs[0]:
        logger.warning("engine input is %r, the sidecar says %r; using the engine's", inputs[0], preferred[0])
    return inputs[0], output


def batch_limits(engine: tensorrt.ICudaEngine, input_name: str, profile: int = 0) -> tuple[int, int]:
    """``(min, max)`` batch of the engine's optimization profile for the input."""
    shapes = engine.get_tensor_profile_shape(input_name, profile)
    return int(shapes[0][0]), int(shapes[2][0])


def plan_chunks(count: int, low: int, high: int) -> list[tuple[int, int, int]]:
    """Split ``count`` images into runs the profile accepts.

    Args:
        count: images in the batch (>= 1).
        low: the profile's minimum batch.
        high: the profile's maximum batch.

    Returns:
        ``(start, stop, run_size)`` per run: ``stop - start <= high`` images, executed at
        ``run_size = max(stop - start, low)`` (the gap is padding whose outputs are dropped).
    """
    if not 1 <= low <= high:
        raise QualityNetError(f"batch profile min {low} / max {high} is invalid")
    return [(start, min(start + high, count), max(min(high, count - start), low))
            for start in range(0, count, high)]
