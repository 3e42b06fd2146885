"""ONNX models -> TensorRT engines (``model.plan``, ``model.int8.plan``) with their ``.json`` sidecars.

One builder, in Polygraphy's shape: :func:`open_builder` finds TensorRT's builder and the
GPU, :func:`network_from_onnx` parses a model, :func:`create_config` is the one place a
builder config is made (precision, calibrator, profile, workspace, optimization level, timing
cache, version compatibility), and :func:`save_engine` writes the plan, the timing cache and
the sidecar. The FP16 and INT8 engines are two short recipes on it, each following the
installed TensorRT version:

- FP16 (:func:`build_engine`). 10.x and 11.x: a strongly typed network parsed from the FP16
  ONNX model, whose FP32 islands (``export/fp16.py``'s block list) TensorRT must keep; strong
  typing exists from 10.0 (:data:`STRONG_TYPING_FROM`; 11 has no other mode and no creation
  flag), so every 10.x builds the same network. 8.6: the FP32 ONNX model with the
  explicit-batch flag and ``BuilderFlag.FP16``, the layers of the nodes the FP16 ONNX keeps in
  FP32 pinned to FP32 (``OBEY_PRECISION_CONSTRAINTS``). On a GPU whose FP16 rate is a fraction
  of FP32 (compute capability 6.1, e.g. Quadro P5000: 1/64) an FP16 build would silently pick
  FP32 kernels, so the engine is built and recorded as FP32, with a warning.
- INT8 (:func:`build_int8_engine`). Explicit quantization: TensorRT reads the scales from the
  Q/DQ nodes of ``model.int8.trt.onnx``, so the engine computes what the gate judged. The
  Q/DQ nodes set the precision in either typing mode, so the network stays weakly typed with
  ``BuilderFlag.INT8`` until weak typing was deprecated (10.12,
  :data:`WEAK_TYPING_DEPRECATED_IN`; the flag and the calibrators are gone in 11). On 8.6 with
  compute capability 6.1 (Pascal, DP4A), where TensorRT refuses the explicit build, the FP32
  model is calibrated implicitly (:mod:`qualitynet.export.trt_calibration`).

``BuildSettings.version_compatible`` builds a plan TensorRT's lean runtime can run
(``BuilderFlag.VERSION_COMPATIBLE``, optionally ``EXCLUDE_LEAN_RUNTIME``). This module is
type-checked against ``tensorrt-stubs``; ``tensorrt`` is imported inside the functions so that
the rest of the export stage works without it.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from qualitynet.artifact import ArtifactMeta, BatchProfile
from qualitynet.errors import QualityNetError
from qualitynet.export._io import atomic_write_bytes, ensure_writable_dir
from qualitynet.export.fp16 import FP16_OP_BLOCK_LIST, fp32_nodes
from qualitynet.export.onnx import read_meta
from qualitynet.export.trt_calibration import (
    CALIBRATION_BATCH,
    calibration_cache_key,
    calibration_cache_path,
    entropy_calibrator,
)
from qualitynet.export.types import TensorRTUnavailableError
from qualitynet.runtime.trt_compat import INSTALL_HINT, release, tensorrt_status

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["STRONG_TYPING_FROM", "WEAK_TYPING_DEPRECATED_IN", "BuildSettings", "EngineBuilder", "build_engine",
           "build_int8_engine", "check_opset_for_tensorrt", "create_config", "gpu_info", "network_from_onnx",
           "open_builder", "save_engine"]

log = logging.getLogger(__name__)

# The first release of those this toolkit supports (8.6, 10.x, 11.x) whose networks can be strongly typed.
STRONG_TYPING_FROM = (10, 0)
# Weak typing (BuilderFlag.FP16/INT8 on an untyped network) deprecated; removed in 11.
WEAK_TYPING_DEPRECATED_IN = (10, 12)
# Compute capabilities that run FP16 at full rate or better before Volta (Jetson TX1, P100,
# Jetson TX2); every other GPU below 7.0 runs FP16 at a small fraction of FP32.
_FAST_FP16_PRE_VOLTA = {(5, 3), (6, 0), (6, 2)}
_PASCAL_DP4A = (6, 1)


@dataclass(frozen=True)
class BuildSettings:
    """What every engine build is asked for, whatever its precision.

    Attributes:
        profile: the batch optimization profile (tactics are tuned for ``opt``).
        workspace: TensorRT workspace memory pool limit, MiB.
        timing_cache: a timing cache file, read when present and written after the build.
        opt_level: TensorRT builder optimization level, 0-5 (3 is TensorRT's default).
        version_compatible: build a plan that later TensorRT releases of the same major version and
            TensorRT's lean runtime can run (it embeds the lean runtime unless ``exclude_lean_runtime``).
        exclude_lean_runtime: with ``version_compatible``, leave the lean runtime out of the plan
            (smaller; it then runs only on the lean runtime of this TensorRT version).
    """

    profile: BatchProfile = BatchProfile()
    workspace: int = 4096
    timing_cache: Path | None = None
    opt_level: int = 3
    version_compatible: bool = False
    exclude_lean_runtime: bool = False

    def validate(self) -> None:
        """Refuse settings TensorRT would refuse after minutes of work.

        Raises:
            QualityNetError: a bad level, workspace or flag combination, or an unwritable timing cache folder.
        """
        if not 0 <= self.opt_level <= 5:
            raise QualityNetError(f"builder optimization level {self.opt_level} is not in 0-5")
        if self.workspace < 1:
            raise QualityNetError(f"workspace {self.workspace} MiB must be at least 1")
        if self.exclude_lean_runtime and not self.version_compatible:
            raise QualityNetError("--exclude-lean-runtime applies only to a --version-compatible plan")
        if self.timing_cache is not None:
            ensure_writable_dir(Path(self.timing_cache).parent)


@dataclass(frozen=True)
class EngineBuilder:
    """TensorRT's builder on this machine's GPU (:func:`open_builder`): its version, the GPU
    ``(name, compute capability)``, the logger and TensorRT's ``Builder``."""

    version_text: str
    version: tuple[int, ...]
    gpu: tuple[str, str]
    logger: trt.Logger
    builder: trt.Builder


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


def network_from_onnx(b: EngineBuilder, source: Path, strongly_typed: bool) -> trt.INetworkDefinition:
    """Parse an ONNX model into a new network (explicit batch on 8.6, strongly typed when asked).

    Raises:
        QualityNetError: TensorRT cannot parse it.
    """
    import tensorrt as trt

    network = b.builder.create_network(_network_flags(b.version, strongly_typed))
    parser = trt.OnnxParser(network, b.logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise QualityNetError(f"{source}: TensorRT {b.version_text} cannot parse it: {errors}")
    return network


def create_config(b: EngineBuilder, meta: ArtifactMeta, settings: BuildSettings, *, fp16: bool = False,
                  int8: bool = False, obey_precision: bool = False,
                  calibrator: trt.IInt8Calibrator | None = None, inspect_layers: bool = False) -> trt.IBuilderConfig:
    """The builder config of an engine: the one place every build's settings meet TensorRT.

    Args:
        b: the builder.
        meta: the model's record (input name and size, for the optimization profile).
        settings: profile, workspace, optimization level, timing cache, version compatibility.
        fp16: weak typing's ``BuilderFlag.FP16`` (8.6-10.11).
        int8: weak typing's ``BuilderFlag.INT8`` (8.6-10.11).
        obey_precision: ``OBEY_PRECISION_CONSTRAINTS``, for layers pinned to a precision.
        calibrator: TensorRT's implicit INT8 calibrator, run over full batches of
            :data:`~qualitynet.export.trt_calibration.CALIBRATION_BATCH`.
        inspect_layers: detailed profiling verbosity, so the engine inspector can say each layer's precision.
    """
    import tensorrt as trt

    config = b.builder.create_builder_config()
    if inspect_layers:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)
    if obey_precision:
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.exclude_lean_runtime:
        config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace << 20)
    config.builder_optimization_level = settings.opt_level
    config.add_optimization_profile(_optimization_profile(b, meta, settings.profile))
    if calibrator is not None:
        config.int8_calibrator = calibrator
        batch = BatchProfile(CALIBRATION_BATCH, CALIBRATION_BATCH, CALIBRATION_BATCH)
        config.set_calibration_profile(_optimization_profile(b, meta, batch))
    if settings.timing_cache is not None:
        _load_timing_cache(config, Path(settings.timing_cache))
    return config


def save_engine(b: EngineBuilder, serialized: trt.IHostMemory, plan_path: Path, config: trt.IBuilderConfig,
                settings: BuildSettings, meta: ArtifactMeta, extra: dict[str, object]) -> None:
    """Write a built plan, the timing cache (when one is used) and the plan's sidecar.

    Args:
        b: the builder that built it.
        serialized: the engine ``build_serialized_network`` returned.
        plan_path: where the plan goes; the sidecar goes to ``<plan_path>.json``.
        config: the builder config, whose timing cache is saved.
        settings: the build settings (profile, version compatibility and timing cache are recorded).
        meta: the source model's record, completed here (profile, versions, GPU, ``extra``, build time).
        extra: build facts for ``meta.extra``.
    """
    atomic_write_bytes(plan_path, memoryview(serialized))
    if settings.timing_cache is not None:
        atomic_write_bytes(Path(settings.timing_cache), memoryview(config.get_timing_cache().serialize()))
    meta.batch_profile = settings.profile
    meta.versions = {**meta.versions, "tensorrt": b.version_text, **cuda_versions()}
    meta.gpu_name, meta.compute_capability = b.gpu
    meta.version_compatible, meta.exclude_lean_runtime = settings.version_compatible, settings.exclude_lean_runtime
    meta.extra = {**meta.extra, **extra, "builder_optimization_level": settings.opt_level,
                  "workspace_mib": settings.workspace,
                  "built_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    meta.write_sidecar(plan_path)


def build_engine(onnx_path: str | Path, fp16_onnx_path: str | Path | None, plan_path: str | Path,
                 settings: BuildSettings = BuildSettings()) -> ArtifactMeta:
    """Build an FP16 TensorRT engine and write it with its sidecar.

    Args:
        onnx_path: the FP32 ONNX model (used by TensorRT 8.6, and on GPUs without fast FP16).
        fp16_onnx_path: the FP16 ONNX model (needed by TensorRT 10.x and 11.x).
        plan_path: where to write the engine; the sidecar goes to ``<plan_path>.json``.
        settings: profile, workspace, timing cache, optimization level, version compatibility.

    Returns:
        The artifact record written to the sidecar (precision, profile, versions, GPU).

    Raises:
        TensorRTUnavailableError: no TensorRT builder, no GPU, or a GPU this TensorRT
            version does not support.
        QualityNetError: bad settings, the ONNX model does not parse or the build fails.
    """
    settings.validate()
    b = open_builder()
    gpu_name, capability = b.gpu
    fast_fp16 = _has_fast_fp16(capability)
    strongly_typed = b.version >= STRONG_TYPING_FROM
    if strongly_typed and fast_fp16 and fp16_onnx_path is None:
        raise QualityNetError(
            f"TensorRT {b.version_text} builds FP16 engines from the FP16 ONNX model; export it first")
    source = Path(fp16_onnx_path if strongly_typed and fast_fp16 and fp16_onnx_path is not None else onnx_path)
    if not fast_fp16:
        log.warning("%s (compute capability %s) runs FP16 at 1/64 of the FP32 rate, so TensorRT would pick FP32 "
                    "kernels anyway: building an FP32 engine (INT8 is the only faster precision on this GPU)",
                    gpu_name, capability)
    model = onnx.load(str(source), load_external_data=False)
    meta = read_meta(model, str(source))
    network = network_from_onnx(b, source, strongly_typed)
    weak_fp16 = fast_fp16 and not strongly_typed
    fp32_layers = _keep_fp32_layers(network, model) if weak_fp16 else 0
    config = create_config(b, meta, settings, fp16=weak_fp16, obey_precision=fp32_layers > 0)
    serialized, seconds = _build(b, network, config, Path(plan_path))
    if serialized is None:
        raise QualityNetError(f"{source}: TensorRT {b.version_text} failed to build an engine (see its log above)")
    meta.precision = "fp16" if fast_fp16 else "fp32"
    save_engine(b, serialized, Path(plan_path), config, settings, meta, {
        "source_onnx": source.name, "typing": "strong" if strongly_typed else "weak", "fp32_layers": fp32_layers,
        "build_seconds": round(seconds, 1)})
    log.info("built %s (%s, %.0f s)", plan_path, meta.precision, seconds)
    return meta


def build_int8_engine(onnx_path: str | Path, qdq_onnx_path: str | Path, plan_path: str | Path,
                      calibration: np.ndarray, settings: BuildSettings = BuildSettings()) -> ArtifactMeta:
    """Build an INT8 TensorRT engine and write it with its sidecar.

    Args:
        onnx_path: the FP32 ONNX model (for the implicit calibrator on 8.6 / Pascal only).
        qdq_onnx_path: the Q/DQ model for TensorRT (``model.int8.trt.onnx``).
        plan_path: where to write the engine; the sidecar goes to ``<plan_path>.json``.
        calibration: the calibration photos, ``(N, 3, H, W)`` float32, for the implicit path.
        settings: profile, workspace, timing cache, optimization level.

    Returns:
        The artifact record written to the sidecar (``precision: int8``, how it was quantized).

    Raises:
        TensorRTUnavailableError: no TensorRT builder, no GPU, or a GPU this version does not support.
        QualityNetError: bad settings, the model does not parse or the build fails.
    """
    settings.validate()
    b = open_builder()
    plan_path, source = Path(plan_path), Path(qdq_onnx_path)
    meta = read_meta(onnx.load(str(source), load_external_data=False), str(source))
    strongly_typed = b.version >= WEAK_TYPING_DEPRECATED_IN
    config = create_config(b, meta, settings, int8=not strongly_typed, inspect_layers=True)
    serialized, seconds = _build(b, network_from_onnx(b, source, strongly_typed), config, plan_path)
    quantization = "explicit Q/DQ"
    if serialized is None and b.version < (10,) and _capability(b.gpu[1]) == _PASCAL_DP4A:
        log.warning("TensorRT %s refused the Q/DQ model on %s (compute capability %s): calibrating the FP32 model "
                    "with the entropy calibrator instead", b.version_text, *b.gpu)
        source, cache = Path(onnx_path), calibration_cache_path(plan_path)
        key = calibration_cache_key(meta, calibration, b.version_text)
        config = create_config(b, meta, settings, int8=True, inspect_layers=True,
                               calibrator=entropy_calibrator(calibration, cache, key))
        serialized, seconds = _build(b, network_from_onnx(b, source, False), config, plan_path)
        quantization = f"implicit, entropy calibrator 2 (cache {cache.name})"
        # Not the Q/DQ graph's: its gate figures and kept nodes describe another quantization.
        calibrated = {**meta.extra.get("int8", {}).get("calibration", {}), "method": "entropy2"}
        meta.extra = {**meta.extra, "int8": {"target": "tensorrt", "quantization": quantization,
                                             "calibration": calibrated}}
    if serialized is None:
        raise QualityNetError(f"{source}: TensorRT {b.version_text} failed to build an INT8 engine (see its log)")
    save_engine(b, serialized, plan_path, config, settings, meta, {
        "source_onnx": source.name, "typing": "strong" if strongly_typed else "weak", "quantization": quantization,
        "build_seconds": round(seconds, 1), "platform_has_fast_int8": _fast_int8(b.builder),
        "layer_precisions": _layer_precisions(b, serialized)})
    log.info("built %s (INT8, %s, %.0f s)", plan_path, quantization, seconds)
    return meta


def open_builder() -> EngineBuilder:
    """TensorRT's builder on GPU 0, or why there is none.

    Raises:
        TensorRTUnavailableError: no builder installed, no GPU, or a GPU this TensorRT does not support.
    """
    status = tensorrt_status()
    if status.full is None:
        raise TensorRTUnavailableError(f"{status.full_missing}; {INSTALL_HINT}")
    import tensorrt as trt

    version = release(trt.__version__)
    gpu = gpu_info()
    _check_gpu_supported(version, gpu[1], gpu[0], trt.__version__)
    logger = trt.Logger(trt.Logger.INFO if log.isEnabledFor(logging.DEBUG) else trt.Logger.WARNING)
    return EngineBuilder(trt.__version__, version, gpu, logger, trt.Builder(logger))


def _build(b: EngineBuilder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
           plan_path: Path) -> tuple[trt.IHostMemory | None, float]:
    """The serialized engine (``None`` when TensorRT fails) and the seconds the build took."""
    log.info("building %s with TensorRT %s on %s (this takes minutes)", plan_path.name, b.version_text, b.gpu[0])
    start = time.perf_counter()
    serialized = b.builder.build_serialized_network(network, config)
    return serialized, time.perf_counter() - start


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


def _optimization_profile(b: EngineBuilder, meta: ArtifactMeta, profile: BatchProfile) -> trt.IOptimizationProfile:
    import tensorrt as trt

    cfg = meta.preprocess
    shapes = [trt.Dims4(batch, 3, cfg.height, cfg.width) for batch in (profile.min, profile.opt, profile.max)]
    optimization_profile = b.builder.create_optimization_profile()
    optimization_profile.set_shape(cfg.input_name, *shapes)
    return optimization_profile


def _keep_fp32_layers(network: trt.INetworkDefinition, model: onnx.ModelProto) -> int:
    """Pin the layers of the ONNX nodes that the FP16 ONNX keeps in FP32 (``FP16_OP_BLOCK_LIST``'s operators and
    the regressor after the last spatial tensor: :func:`~qualitynet.export.fp16.fp32_nodes`) to FP32.

    TensorRT's ONNX parser names a node's layers after the node: its name (``node_of_<first
    output>`` when it has none), then ``<name>_<n>`` for further layers. Only float outputs are
    pinned (TopK's indices stay int32). Returns the number of layers pinned.
    """
    import tensorrt as trt

    blocked = {node.name or f"node_of_{node.output[0]}" for node in fp32_nodes(model)}
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
    log.info("%d layers of %d kept in FP32 (operators %s, and the regressor's)", pinned, network.num_layers,
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


def _fast_int8(builder: trt.Builder) -> bool | None:
    """``platform_has_fast_int8`` (deprecated in 10, gone in 11: None there)."""
    try:
        return bool(builder.platform_has_fast_int8)
    except AttributeError:
        return None


def _layer_precisions(b: EngineBuilder, serialized: trt.IHostMemory) -> dict[str, int] | None:
    """How many of the engine's layers write INT8 outputs, by the engine inspector (None if it cannot say)."""
    import tensorrt as trt

    engine = trt.Runtime(b.logger).deserialize_cuda_engine(serialized)
    if engine is None:
        return None
    info = json.loads(engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON))
    layers = [layer for layer in info.get("Layers", []) if isinstance(layer, dict)]
    if not layers:
        return None
    int8 = sum("int8" in json.dumps(layer.get("Outputs", [])).lower() for layer in layers)
    if not int8:
        log.warning("TensorRT built no layer in INT8 on this GPU: the INT8 engine is not faster than FP32 here")
    return {"layers": len(layers), "int8_output_layers": int8}
