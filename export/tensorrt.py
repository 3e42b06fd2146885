"""Exported ONNX models -> TensorRT engine (``model.plan``) plus its ``model.plan.json`` sidecar.

The build follows the installed TensorRT version:

- 10.x and 11.x: a strongly typed network parsed from the FP16 ONNX model, whose FP32 islands
  (``export/fp16.py``'s block list) TensorRT must keep. Weak typing (``BuilderFlag.FP16``) was
  deprecated in 10.12 and removed in 11, where strong typing is the only mode (no creation flag);
  10.0-10.11 get the ``STRONGLY_TYPED`` creation flag, so every 10.x builds the same network.
- 8.6: the FP32 ONNX model with the explicit-batch flag and ``BuilderFlag.FP16``; the layers of
  the nodes the FP16 ONNX keeps in FP32 are pinned to FP32 (layer precision and output types,
  ``OBEY_PRECISION_CONSTRAINTS``).

On a GPU whose FP16 rate is a fraction of FP32 (compute capability 6.1, e.g. Quadro P5000:
1/64) an FP16 build would silently pick FP32 kernels, so the engine is built and recorded
as FP32, with a warning. ``version_compatible`` builds a plan TensorRT's lean runtime can run
(``BuilderFlag.VERSION_COMPATIBLE``, optionally ``EXCLUDE_LEAN_RUNTIME``). This module is
type-checked against ``tensorrt-stubs`` (see tests/export/test_export_tensorrt.py): ``tensorrt``
is imported inside the functions so that the rest of the export stage works without it.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from qualitynet.artifact import ArtifactMeta, BatchProfile
from qualitynet.errors import QualityNetError
from qualitynet.export._io import atomic_write_bytes, ensure_writable_dir
from qualitynet.export.fp16 import FP16_OP_BLOCK_LIST
from qualitynet.export.onnx import read_meta
from qualitynet.export.types import TensorRTUnavailableError

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["INSTALL_HINT", "build_engine", "check_opset_for_tensorrt", "gpu_info", "tensorrt_version"]

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install TensorRT's builder from NVIDIA's package index: pip install tensorrt-cu12 (CUDA 12) or "
    "tensorrt-cu13 (CUDA 13) for Turing or newer GPUs, or pip install tensorrt==8.6.1 (CUDA 12, Python <= 3.11) "
    "for Pascal GPUs such as the Quadro P5000; plus cuda-python of the same CUDA major: pip install "
    "'qualitynet[tensorrt-cu12]' or 'qualitynet[tensorrt-cu13]' (see the README)"
)
STRONG_TYPING_FROM = (10, 0)
# Compute capabilities that run FP16 at full rate or better before Volta (Jetson TX1, P100,
# Jetson TX2); every other GPU below 7.0 runs FP16 at a small fraction of FP32.
_FAST_FP16_PRE_VOLTA = {(5, 3), (6, 0), (6, 2)}


def tensorrt_version() -> tuple[int, ...] | None:
    """The installed TensorRT builder's version, or ``None`` when there is no builder."""
    try:
        _check_tensorrt()
    except TensorRTUnavailableError:
        return None
    import tensorrt as trt

    return _parse_version(trt.__version__)


def check_opset_for_tensorrt(opset: int, version: tuple[int, ...] | None) -> None:
    """Refuse an opset the installed TensorRT cannot parse (8.6 parses opset <= 17).

    Raises:
        QualityNetError: ``opset`` is too new for ``version``.
    """
    if version is not None and version < (10,) and opset > 17:
        raise QualityNetError(
            f"ONNX opset {opset} cannot be parsed by the installed TensorRT "
            f"{'.'.join(map(str, version))} (8.x parses opset <= 17); use --opset 17"
        )


def gpu_info(device: int = 0) -> tuple[str, str]:
    """Name and compute capability (``"8.9"``) of a CUDA GPU, read with cuda-python.

    Raises:
        TensorRTUnavailableError: cuda-python is missing or no CUDA GPU is usable.
    """
    from qualitynet.runtime.gpu import device_properties

    try:
        capability, name = device_properties(device)
    except QualityNetError as exc:
        raise TensorRTUnavailableError(f"{exc}; a TensorRT engine is built on the GPU that will run it") from None
    return str(name), str(capability)


def cuda_versions() -> dict[str, str]:
    """What the sidecar records about CUDA: the CUDA version the driver supports (``cuda_driver``,
    e.g. ``"12.4"``) and the CUDA major version TensorRT's wheels were built for (``tensorrt_cuda``,
    ``"unknown"`` for a TensorRT not installed with pip)."""
    from qualitynet.runtime.gpu import driver_version
    from qualitynet.runtime.trt_compat import tensorrt_cuda

    return {"cuda_driver": driver_version(), "tensorrt_cuda": tensorrt_cuda("tensorrt") or "unknown"}


def build_engine(onnx_path: str | Path, fp16_onnx_path: str | Path | None, plan_path: str | Path,
                 profile: BatchProfile = BatchProfile(), workspace: int = 4096,
                 timing_cache: str | Path | None = None, opt_level: int = 3, *,
                 version_compatible: bool = False, exclude_lean_runtime: bool = False) -> ArtifactMeta:
    """Build an FP16 TensorRT engine and write it with its sidecar.

    Args:
        onnx_path: the FP32 ONNX model (used by TensorRT 8.6, and on GPUs without fast FP16).
        fp16_onnx_path: the FP16 ONNX model (needed by TensorRT 10.x and 11.x).
        plan_path: where to write the engine; the sidecar goes to ``<plan_path>.json``.
        profile: the batch optimization profile (tactics are tuned for ``opt``).
        workspace: TensorRT workspace memory pool limit, MiB.
        timing_cache: a timing cache file, read when present and written after the build.
        opt_level: TensorRT builder optimization level, 0-5 (3 is TensorRT's default).
        version_compatible: build a plan that later TensorRT releases of the same major version and
            TensorRT's lean runtime can run (it embeds the lean runtime unless ``exclude_lean_runtime``).
        exclude_lean_runtime: with ``version_compatible``, leave the lean runtime out of the plan
            (smaller; it then runs only on the lean runtime of this TensorRT version).

    Returns:
        The artifact record written to the sidecar (precision, profile, versions, GPU).

    Raises:
        TensorRTUnavailableError: no TensorRT builder, no GPU, or a GPU this TensorRT
            version does not support.
        QualityNetError: the ONNX model does not parse or the build fails.
    """
    if not 0 <= opt_level <= 5:
        raise QualityNetError(f"builder optimization level {opt_level} is not in 0-5")
    if workspace < 1:
        raise QualityNetError(f"workspace {workspace} MiB must be at least 1")
    if exclude_lean_runtime and not version_compatible:
        raise QualityNetError("--exclude-lean-runtime applies only to a --version-compatible plan")
    if timing_cache is not None:
        ensure_writable_dir(Path(timing_cache).parent)  # fail now, not after a build of minutes
    _check_tensorrt()
    import tensorrt as trt

    version = _parse_version(trt.__version__)
    gpu_name, capability = gpu_info()
    _check_gpu_supported(version, capability, gpu_name, trt.__version__)
    fast_fp16 = _has_fast_fp16(capability)
    strongly_typed = version >= STRONG_TYPING_FROM
    if strongly_typed and fast_fp16 and fp16_onnx_path is None:
        raise QualityNetError(
            f"TensorRT {trt.__version__} builds FP16 engines from the FP16 ONNX model; export it first")
    source = Path(fp16_onnx_path if strongly_typed and fast_fp16 and fp16_onnx_path is not None else onnx_path)
    plan_path = Path(plan_path)
    if not fast_fp16:
        log.warning("%s (compute capability %s) runs FP16 at 1/64 of the FP32 rate, so TensorRT would pick FP32 "
                    "kernels anyway: building an FP32 engine (INT8 is the only faster precision on this GPU)",
                    gpu_name, capability)
    model = onnx.load(str(source), load_external_data=False)
    meta: ArtifactMeta = read_meta(model, str(source))

    logger = trt.Logger(trt.Logger.INFO if log.isEnabledFor(logging.DEBUG) else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(version, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise QualityNetError(f"{source}: TensorRT {trt.__version__} cannot parse it: {errors}")
    config = builder.create_builder_config()
    fp32_layers = 0
    if fast_fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        fp32_layers = _keep_fp32_layers(network, model)
        if fp32_layers:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace << 20)
    config.builder_optimization_level = opt_level
    config.add_optimization_profile(_optimization_profile(builder, meta, profile))
    if timing_cache is not None:
        _load_timing_cache(config, Path(timing_cache))

    log.info("building %s with TensorRT %s on %s (this takes minutes)", plan_path.name, trt.__version__, gpu_name)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise QualityNetError(f"{source}: TensorRT {trt.__version__} failed to build an engine (see its log above)")
    meta.precision = "fp16" if fast_fp16 else "fp32"
    save_engine(serialized, plan_path, config, timing_cache, meta, profile, (gpu_name, capability), {
        "source_onnx": source.name,
        "typing": "strong" if strongly_typed else "weak",
        "fp32_layers": fp32_layers,
        "version_compatible": version_compatible,
        "exclude_lean_runtime": exclude_lean_runtime,
        "builder_optimization_level": opt_level,
        "workspace_mib": workspace,
        "build_seconds": round(seconds, 1),
    })
    log.info("built %s (%s, %.0f s)", plan_path, meta.precision, seconds)
    return meta


def save_engine(serialized: trt.IHostMemory, plan_path: Path, config: trt.IBuilderConfig,
                timing_cache: str | Path | None, meta: ArtifactMeta, profile: BatchProfile, gpu: tuple[str, str],
                extra: dict[str, object]) -> None:
    """Write a built plan, the timing cache (when one is used) and the plan's sidecar.

    Args:
        serialized: the engine ``build_serialized_network`` returned.
        plan_path: where the plan goes; the sidecar goes to ``<plan_path>.json``.
        config: the builder config, whose timing cache is saved.
        timing_cache: the timing cache file, or ``None``.
        meta: the source model's record, completed here (profile, versions, GPU, ``extra``, build time).
        profile: the batch optimization profile the engine was built for.
        gpu: ``(name, compute capability)`` of the GPU that built it.
        extra: build facts for ``meta.extra``.
    """
    import tensorrt as trt

    atomic_write_bytes(plan_path, memoryview(serialized))
    if timing_cache is not None:
        atomic_write_bytes(Path(timing_cache), memoryview(config.get_timing_cache().serialize()))
    meta.batch_profile = profile
    meta.versions = {**meta.versions, "tensorrt": trt.__version__, **cuda_versions()}
    meta.gpu_name, meta.compute_capability = gpu
    meta.extra = {**meta.extra, **extra,
                  "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta.write_sidecar(plan_path)


def _check_tensorrt() -> None:
    """Raise :class:`TensorRTUnavailableError` unless TensorRT's builder can be imported."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but libnvinfer is not
        raise TensorRTUnavailableError(f"TensorRT is not installed ({exc}); {INSTALL_HINT}") from None
    # tensorrt-stubs installs a 'tensorrt' folder of type stubs only; the lean runtime has no builder.
    if not hasattr(tensorrt, "Builder"):
        raise TensorRTUnavailableError(
            f"the installed 'tensorrt' has no builder (only type stubs or a runtime); {INSTALL_HINT}"
        )


def _parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def _capability(text: str) -> tuple[int, int]:
    major, minor = text.split(".")
    return int(major), int(minor)


def _has_fast_fp16(capability: str) -> bool:
    cc = _capability(capability)
    return cc >= (7, 0) or cc in _FAST_FP16_PRE_VOLTA


def _check_gpu_supported(version: tuple[int, ...], capability: str, gpu_name: str, version_text: str) -> None:
    """TensorRT 11 and 10.5+ need compute capability 7.5, 10.0-10.4 need 7.0; 8.6 is the last for Pascal."""
    needed = (7, 5) if version >= (10, 5) else (7, 0) if version >= (10,) else (0, 0)
    if _capability(capability) < needed:
        raise TensorRTUnavailableError(
            f"TensorRT {version_text} does not support {gpu_name} (compute capability {capability}; it needs "
            f"{needed[0]}.{needed[1]}+); for Pascal GPUs install tensorrt==8.6.1, the last release that runs on them"
        )


def _network_flags(version: tuple[int, ...], strongly_typed: bool) -> int:
    import tensorrt as trt

    if version >= (11,):
        return 0  # every network is strongly typed; the flags below are gone or ignored
    if strongly_typed:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    if version < (10,):
        return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    return 0


def _optimization_profile(builder: trt.Builder, meta: ArtifactMeta, profile: BatchProfile) -> trt.IOptimizationProfile:
    import tensorrt as trt

    cfg = meta.preprocess
    shapes = [trt.Dims4(batch, 3, cfg.height, cfg.width) for batch in (profile.min, profile.opt, profile.max)]
    optimization_profile = builder.create_optimization_profile()
    optimization_profile.set_shape(cfg.input_name, *shapes)
    return optimization_profile


def _keep_fp32_layers(network: trt.INetworkDefinition, model: onnx.ModelProto) -> int:
    """Pin the layers of the ONNX nodes that the FP16 ONNX keeps in FP32 (``FP16_OP_BLOCK_LIST``) to FP32.

    TensorRT's ONNX parser names a node's layers after the node: its name (``node_of_<first
    output>`` when it has none), then ``<name>_<n>`` for further layers. Only float outputs are
    pinned (TopK's indices stay int32). Returns the number of layers pinned.
    """
    import tensorrt as trt

    blocked = {node.name or f"node_of_{node.output[0]}" for node in model.graph.node
               if node.op_type in FP16_OP_BLOCK_LIST}
    pinned = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name not in blocked and re.sub(r"_\d+$", "", layer.name) not in blocked:
            continue
        outputs = [i for i in range(layer.num_outputs) if layer.get_output(i).dtype in (trt.float32, trt.float16)]
        if not outputs:
            continue
        layer.precision = trt.float32
        for i in outputs:
            layer.set_output_type(i, trt.float32)
        pinned += 1
    log.info("%d layers of %d kept in FP32 (operators %s)", pinned, network.num_layers,
             ", ".join(sorted({n.op_type for n in model.graph.node if n.op_type in FP16_OP_BLOCK_LIST})) or "none")
    return pinned


def _load_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Use the cache at ``path`` if it exists and matches this GPU and version; else start a new one.

    A cache from another TensorRT version may not even deserialise (``create_timing_cache`` then
    returns ``None``), or deserialise and be refused by ``set_timing_cache``.
    """
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data) if data else None
    if cache is not None and config.set_timing_cache(cache, False):
        log.info("timing cache %s loaded", path)
        return
    if data:
        log.warning("%s was made on another GPU or TensorRT version (or is not a timing cache); starting a new "
                    "timing cache, written there after the build", path)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise QualityNetError(f"TensorRT refused a new, empty timing cache for {path}")
