"""The GPU-free half of the TensorRT backend: finding TensorRT, checking a plan, planning batches.

:func:`tensorrt_status` is the one answer to "which TensorRT is installed" (the full TensorRT
with its builder, the lean runtime, both or neither) for the export, the runtime and the benchmark.

Nothing here touches CUDA, so all of it is tested on machines without a GPU; the engine is
passed in as an object with TensorRT's name-based API (``num_io_tensors``,
``get_tensor_name``, ``get_tensor_mode``, ``get_tensor_profile_shape``), valid on TensorRT
8.6, 10.x and 11.x.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from qualitynet.artifact import ArtifactMeta
from qualitynet.errors import QualityNetError

if TYPE_CHECKING:
    import tensorrt

__all__ = [
    "HOST_CODE_OPTION",
    "INSTALL_HINT",
    "TensorRTStatus",
    "batch_limits",
    "check_plan_compat",
    "find_io_tensors",
    "io_tensor_names",
    "plan_chunks",
    "rebuild_hint",
    "release",
    "same_release",
    "select_runtime",
    "tensorrt_cuda",
    "tensorrt_status",
]

logger = logging.getLogger(__name__)

# A plan's precision (its sidecar's) -> how it is rebuilt and which ONNX model scores meanwhile. A Pascal
# FP32 engine comes from `--fp16` too (FP16 is 1/64 rate there), but its ONNX equivalent is model.onnx.
_REBUILD = {"fp16": ("--fp16", "model.fp16.onnx"), "fp32": ("--fp16", "model.onnx"),
            "int8": ("--int8", "model.int8.onnx")}


def rebuild_hint(precision: str | None = None) -> str:
    """How to rebuild a refused plan of this ``precision`` (its sidecar's), and what to score meanwhile."""
    flag, onnx_model = _REBUILD.get(precision or "fp16", _REBUILD["fp16"])
    return (f"rebuild the plan on this machine with `iqa-export {flag} model.pt` (TensorRT engines are tied to "
            f"the GPU and TensorRT version that built them); meanwhile `iqa-run {onnx_model} ...` works anywhere")


HOST_CODE_OPTION = "--allow-plan-host-code"
INSTALL_HINT = (
    "install TensorRT's builder from NVIDIA's package index: pip install tensorrt-cu12 (CUDA 12) or "
    "tensorrt-cu13 (CUDA 13) for Turing or newer GPUs, or pip install tensorrt==8.6.1 (CUDA 12, Python <= 3.11) "
    "for Pascal GPUs such as the Quadro P5000; plus cuda-python of the same CUDA major: pip install "
    "'qualitynet[tensorrt-cu12]' or 'qualitynet[tensorrt-cu13]' (see the README)"
)
# The full TensorRT, and the lean runtime (8.6/10.x: tensorrt_lean; 11.x also tensorrt_lean_bindings).
_FULL = "tensorrt"
_LEAN = ("tensorrt_lean", "tensorrt_lean_bindings")
_CUDA_SUFFIX = re.compile(r"(?:^tensorrt.*|^nvidia-cuda-runtime)[-_]cu(\d+)(?:[-_]|$)")
_NOT_INSTALLED = f"TensorRT is not installed: a .plan needs it ({INSTALL_HINT}); or score the ONNX model instead"


@dataclass(frozen=True)
class TensorRTStatus:
    """Which TensorRT this machine has: the full TensorRT (builder and runtime), the lean runtime
    (runs version-compatible plans only), both or neither.

    Attributes:
        full: the full ``tensorrt`` module, ``None`` when absent.
        lean: the lean runtime module, ``None`` when absent.
        full_missing: why there is no full TensorRT ("" when there is one).
    """

    full: ModuleType | None
    lean: ModuleType | None
    full_missing: str = ""

    @property
    def flavour(self) -> str:
        """``full``, ``lean`` (the lean runtime only) or ``none``."""
        return "full" if self.full is not None else "lean" if self.lean is not None else "none"

    @property
    def builder_version(self) -> tuple[int, ...] | None:
        """The full TensorRT's version, e.g. ``(10, 13, 0)``; ``None`` when there is no builder."""
        return None if self.full is None else release(self.full.__version__)

    def runtime_for(self, meta: ArtifactMeta, plan: Path, allow_host_code: bool = False) -> ModuleType:
        """The TensorRT module that may load ``plan`` (see :func:`select_runtime`).

        Raises:
            QualityNetError: no installed runtime may load the plan; the message says what to do.
        """
        return select_runtime(meta, plan, self.full, self.lean, allow_host_code)


def tensorrt_status() -> TensorRTStatus:
    """Find the installed TensorRT flavours (imported here; cheap after the first call)."""
    try:
        full: ModuleType | None = importlib.import_module(_FULL)
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        full, missing = None, f"TensorRT is not installed ({exc})"
    else:
        # tensorrt-stubs installs a 'tensorrt' folder of type stubs only: no builder there.
        if not hasattr(full, "Builder"):
            full, missing = None, "the installed 'tensorrt' has no builder (only type stubs or a runtime)"
        else:
            missing = ""
    return TensorRTStatus(full, _first_lean_runtime(), missing)


def _first_lean_runtime() -> ModuleType | None:
    """The first importable lean runtime module with a ``Runtime``."""
    for name in _LEAN:
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError):  # OSError: the bindings are there but their libraries are not
            continue
        if hasattr(module, "Runtime"):
            return module
    return None


def select_runtime(meta: ArtifactMeta, plan: Path, full: ModuleType | None, lean: ModuleType | None,
                   allow_host_code: bool = False) -> ModuleType:
    """The TensorRT module that may load this plan, or a refusal before anything is deserialised.

    A plain plan needs the full TensorRT. A plan built with ``--version-compatible`` runs on the lean
    runtime of the release that built it (which executes nothing from the plan file) when that is
    installed; otherwise the full TensorRT runs the lean runtime embedded in the plan, which is code
    loaded from the file, so that needs ``allow_host_code``. A plan built with
    ``--exclude-lean-runtime`` as well needs the lean runtime.

    Args:
        meta: the plan's sidecar (``version_compatible``, ``exclude_lean_runtime``).
        plan: the plan's path, for the messages.
        full: the full ``tensorrt`` module, ``None`` when absent (see :func:`tensorrt_status`).
        lean: the lean runtime module, ``None`` when absent.
        allow_host_code: the user trusts the plan file (``--allow-plan-host-code``).

    Raises:
        QualityNetError: no installed runtime may load the plan; the message says what to do.
    """
    if not meta.version_compatible:
        if full is not None:
            return full
        if lean is not None:
            raise QualityNetError(
                f"{plan}: refused, it was built without --version-compatible and only TensorRT's lean runtime "
                f"({lean.__name__} {lean.__version__}) is installed, which loads only version-compatible "
                "plans; rebuild with `iqa-export --fp16 --version-compatible model.pt`, or install the full TensorRT"
            )
        raise QualityNetError(_NOT_INSTALLED)
    built = meta.versions.get("tensorrt", "?")
    if lean is not None and (full is None or same_release(built, lean.__version__)):
        return lean  # of another release, check_plan_compat refuses it with both versions
    if full is None:
        raise QualityNetError(_NOT_INSTALLED)
    if meta.exclude_lean_runtime:
        raise QualityNetError(
            f"{plan}: it was built with --exclude-lean-runtime, so it runs only on TensorRT's lean runtime of the "
            f"version that built it ({built}), which is not installed (its wheel from NVIDIA's index: "
            "tensorrt-lean-cu12 or tensorrt-lean-cu13 for 10.x and 11.x)"
        )
    if not allow_host_code:
        raise QualityNetError(
            f"{plan}: refused, it embeds TensorRT's lean runtime (built --version-compatible) and the full TensorRT "
            f"would run that code from the plan file; pass {HOST_CODE_OPTION} (Python: allow_host_code=True) only "
            f"for a plan you trust, or install TensorRT's lean runtime {built}, which runs the plan without it"
        )
    return full


def tensorrt_cuda(module_name: str) -> str | None:
    """The CUDA major version the installed TensorRT module's wheels were built for, e.g. ``"12"``.

    TensorRT links CUDA statically and its Python module does not say which CUDA it was built
    for; its pip wheels do: ``tensorrt-cu12``, ``tensorrt_cu13_libs``, ``tensorrt_lean_cu13``, and
    8.6's ``tensorrt-libs`` requires ``nvidia-cuda-runtime-cu12``.

    Returns:
        ``None`` for a TensorRT not installed with pip (a tarball or a system package).
    """
    names = list(importlib.metadata.packages_distributions().get(module_name.split(".")[0], []))
    for name in names:  # grows with their TensorRT and CUDA requirements (tensorrt -> tensorrt-libs -> nvidia-cuda-...)
        found = _CUDA_SUFFIX.search(name.lower())
        if found:
            return found.group(1)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        required = (re.split(r"[\s;=<>!~\[]", requirement, maxsplit=1)[0] for requirement in requires)
        names += [r for r in required
                  if r not in names and (r.lower().startswith("tensorrt") or _CUDA_SUFFIX.search(r.lower()))]
    return None


def release(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0)``: major, minor, patch (digits of each part; 0 where none)."""
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
    have, need = release(installed), release(built)
    if version_compatible:
        return have[:1] == need[:1] and have >= need
    return have == need


def check_plan_compat(meta: ArtifactMeta, plan: Path, tensorrt_version: str, compute_capability: str,
                      gpu_name: str = "", lean: bool = False) -> None:
    """Refuse a plan built for another GPU architecture or TensorRT version.

    Args:
        meta: the plan's sidecar record (``versions["tensorrt"]``, ``compute_capability``,
            ``gpu_name``, ``version_compatible``).
        plan: the plan's path, for the message.
        tensorrt_version: the TensorRT present here.
        compute_capability: this GPU's, as ``"major.minor"``.
        gpu_name: this GPU's name, for the message.
        lean: ``tensorrt_version`` is the lean runtime's, which runs plans of its own release
            only (a later full TensorRT runs a version-compatible plan of the same major).

    Raises:
        QualityNetError: which mismatch, and how to rebuild.
    """
    built_version = meta.versions.get("tensorrt")
    if not built_version or not meta.compute_capability:
        raise QualityNetError(
            f"{plan}: its sidecar does not say which TensorRT version and GPU built it, so it cannot be "
            f"checked; {rebuild_hint(meta.precision)}"
        )
    problems = []
    if meta.compute_capability != compute_capability:
        problems.append(
            f"it was built for compute capability {meta.compute_capability} ({meta.gpu_name or 'unknown GPU'}) "
            f"but this GPU is {compute_capability} ({gpu_name or 'unknown'})"
        )
    if not same_release(built_version, tensorrt_version, meta.version_compatible and not lean):
        problems.append(f"it was built with TensorRT {built_version} but TensorRT {tensorrt_version} is installed")
    if problems:
        raise QualityNetError(f"{plan}: refused, {'; and '.join(problems)}; {rebuild_hint(meta.precision)}")
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
    inputs, outputs = io_tensor_names(engine, io_mode)
    if len(inputs) != 1 or not outputs:
        raise QualityNetError(
            f"engine has inputs {inputs} and outputs {outputs}; a QualityNet plan has one image input and a "
            f"score output; {rebuild_hint()}"
        )
    output = preferred[1] if preferred[1] in outputs else outputs[0]
    if preferred[0] and preferred[0] != inputs[0]:
        logger.warning("engine input is %r, the sidecar says %r; using the engine's", inputs[0], preferred[0])
    return inputs[0], output


def io_tensor_names(engine: tensorrt.ICudaEngine, io_mode: Any) -> tuple[list[str], list[str]]:
    """The engine's input and output tensor names, in the engine's order (name-based API)."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    return ([n for n in names if engine.get_tensor_mode(n) == io_mode.INPUT],
            [n for n in names if engine.get_tensor_mode(n) == io_mode.OUTPUT])


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
