"""The INT8 TensorRT engine (``model.int8.plan`` + sidecar) from the Q/DQ ONNX model.

Explicit quantization everywhere it is accepted: TensorRT reads the scales from the Q/DQ
nodes of ``model.int8.trt.onnx`` (symmetric int8 activations, per-channel symmetric int8
weights; see :mod:`qualitynet.export.int8`), so the engine computes what the gate judged.

- 10.12+ and 11.x: a strongly typed network (``BuilderFlag.INT8`` was deprecated in 10.1
  and removed in 11, with the calibrators; Q/DQ is the only INT8 path there).
- 8.6 to 10.11: ``BuilderFlag.INT8`` on the Q/DQ network (8.6 also with explicit batch).
- 8.6 on compute capability 6.1 (Pascal, DP4A), where TensorRT refuses the explicit build:
  implicit quantization of the FP32 ONNX model with the entropy calibrator
  (``IInt8EntropyCalibrator2``) over the same calibration photos, and its calibration
  cache next to the plan (``model.int8.plan.calib``), which later builds reuse only when its
  key (``model.int8.plan.calib.json``: checkpoint SHA-256, calibration settings and inputs,
  TensorRT version) is theirs.

Whether the GPU has fast INT8 (``platform_has_fast_int8`` where the API still has it) and
how many of the engine's layers run in INT8 (the engine inspector) go into the sidecar.

Like :mod:`qualitynet.export.tensorrt`, whose helpers it shares, it is type-checked against
``tensorrt-stubs`` and imports ``tensorrt`` and cuda-python only inside its functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from qualitynet.artifact import ArtifactMeta, BatchProfile
from qualitynet.errors import QualityNetError
from qualitynet.export._io import atomic_write_bytes, ensure_writable_dir
from qualitynet.export.onnx import read_meta
from qualitynet.export.tensorrt import (
    _capability,
    _check_gpu_supported,
    _check_tensorrt,
    _load_timing_cache,
    _network_flags,
    _optimization_profile,
    _parse_version,
    gpu_info,
    save_engine,
)

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["CALIBRATION_BATCH", "build_int8_engine", "calibration_cache_key", "calibration_cache_path",
           "read_calibration_cache", "write_calibration_cache"]

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 8
_PASCAL_DP4A = (6, 1)
# Below this the Q/DQ network is built weakly typed with BuilderFlag.INT8 (deprecated from 10.1,
# still working before 11), the build the stand-in tests cover per version.
_STRONG_TYPING_FROM = (10, 12)


def calibration_cache_path(plan_path: Path) -> Path:
    """``model.int8.plan`` -> ``model.int8.plan.calib`` (the implicit calibrator's cache)."""
    return plan_path.with_name(plan_path.name + ".calib")


def calibration_cache_key(meta: ArtifactMeta, inputs: np.ndarray, tensorrt_version: str) -> dict[str, Any]:
    """What a calibration cache was measured from: the checkpoint, the calibration settings and
    inputs, the calibrator's batch and the TensorRT version (the cache format is version-specific)."""
    return {"checkpoint_sha256": meta.checkpoint_sha256,
            "calibration": meta.extra.get("int8", {}).get("calibration", {}),
            "inputs_sha256": hashlib.sha256(np.ascontiguousarray(inputs, np.float32).tobytes()).hexdigest(),
            "batch": CALIBRATION_BATCH, "tensorrt": tensorrt_version, "calibrator": "entropy2"}


def read_calibration_cache(cache: Path, key: dict[str, Any]) -> bytes | None:
    """The cache's bytes when its key file says it was measured for ``key``; None (calibrate again) otherwise."""
    key_file = cache.with_name(cache.name + ".json")
    try:
        recorded = json.loads(key_file.read_text(encoding="utf-8"))
        data = cache.read_bytes()
    except (OSError, ValueError):
        return None
    if recorded != key:
        changed = sorted(name for name in {*key, *recorded} if recorded.get(name) != key.get(name)) \
            if isinstance(recorded, dict) else ["format"]
        log.info("calibration cache %s not reused: measured for another %s", cache, ", ".join(changed))
        return None
    log.info("calibration cache %s read: calibration skipped", cache)
    return data


def write_calibration_cache(cache: Path, key: dict[str, Any], data: bytes) -> None:
    """Write the cache and its key file."""
    atomic_write_bytes(cache, data)
    text = json.dumps(key, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(cache.with_name(cache.name + ".json"), text.encode())


def build_int8_engine(onnx_path: str | Path, qdq_onnx_path: str | Path, plan_path: str | Path,
                      calibration: np.ndarray, profile: BatchProfile = BatchProfile(), workspace: int = 4096,
                      timing_cache: str | Path | None = None, opt_level: int = 3) -> ArtifactMeta:
    """Build an INT8 TensorRT engine and write it with its sidecar.

    Args:
        onnx_path: the FP32 ONNX model (for the implicit calibrator on 8.6 / Pascal only).
        qdq_onnx_path: the Q/DQ model for TensorRT (``model.int8.trt.onnx``).
        plan_path: where to write the engine; the sidecar goes to ``<plan_path>.json``.
        calibration: the calibration photos, ``(N, 3, H, W)`` float32, for the implicit path.
        profile: the batch optimization profile.
        workspace: workspace memory pool limit, MiB.
        timing_cache: a timing cache file, read when present and written after the build.
        opt_level: builder optimization level, 0-5.

    Returns:
        The artifact record written to the sidecar (``precision: int8``, how it was quantized).

    Raises:
        TensorRTUnavailableError: no TensorRT builder, no GPU, or a GPU this version does not support.
        QualityNetError: the model does not parse or the build fails.
    """
    if timing_cache is not None:
        ensure_writable_dir(Path(timing_cache).parent)
    _check_tensorrt()
    import tensorrt as trt

    version = _parse_version(trt.__version__)
    gpu_name, capability = gpu_info()
    _check_gpu_supported(version, capability, gpu_name, trt.__version__)
    plan_path, qdq = Path(plan_path), Path(qdq_onnx_path)
    meta: ArtifactMeta = read_meta(onnx.load(str(qdq), load_external_data=False), str(qdq))
    logger = trt.Logger(trt.Logger.INFO if log.isEnabledFor(logging.DEBUG) else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = version >= _STRONG_TYPING_FROM

    log.info("building %s (INT8, explicit Q/DQ) with TensorRT %s on %s", plan_path.name, trt.__version__, gpu_name)
    start = time.perf_counter()
    config = _config(builder, meta, profile, workspace, opt_level, timing_cache)
    if not strongly_typed:
        config.set_flag(trt.BuilderFlag.INT8)
    serialized = builder.build_serialized_network(_parse(builder, logger, qdq, version, strongly_typed), config)
    quantization, source = "explicit Q/DQ", qdq
    if serialized is None and version < (10,) and _capability(capability) == _PASCAL_DP4A:
        log.warning("TensorRT %s refused the Q/DQ model on %s (compute capability %s): calibrating the FP32 model "
                    "with the entropy calibrator instead", trt.__version__, gpu_name, capability)
        source, cache = Path(onnx_path), calibration_cache_path(plan_path)
        config = _config(builder, meta, profile, workspace, opt_level, timing_cache)
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = _entropy_calibrator(calibration, cache, calibration_cache_key(meta, calibration, trt.__version__))
        config.int8_calibrator = calibrator
        config.set_calibration_profile(_optimization_profile(builder, meta, BatchProfile(
            CALIBRATION_BATCH, CALIBRATION_BATCH, CALIBRATION_BATCH)))
        serialized = builder.build_serialized_network(_parse(builder, logger, source, version, False), config)
        quantization = f"implicit, entropy calibrator 2 (cache {cache.name})"
        # Not the Q/DQ graph's: its gate figures and kept nodes describe another quantization.
        calibrated = {**meta.extra.get("int8", {}).get("calibration", {}), "method": "entropy2"}
        meta.extra = {**meta.extra, "int8": {"target": "tensorrt", "quantization": quantization,
                                             "calibration": calibrated}}
    seconds = time.perf_counter() - start
    if serialized is None:
        raise QualityNetError(f"{source}: TensorRT {trt.__version__} failed to build an INT8 engine (see its log)")
    save_engine(serialized, plan_path, config, timing_cache, meta, profile, (gpu_name, capability), {
        "source_onnx": source.name,
        "typing": "strong" if strongly_typed else "weak",
        "quantization": quantization,
        "builder_optimization_level": opt_level,
        "workspace_mib": workspace,
        "build_seconds": round(seconds, 1),
        "platform_has_fast_int8": _fast_int8(builder),
        "layer_precisions": _layer_precisions(serialized, logger),
    })
    log.info("built %s (INT8, %s, %.0f s)", plan_path, quantization, seconds)
    return meta


def _parse(builder: trt.Builder, logger: trt.ILogger, source: Path, version: tuple[int, ...],
           strongly_typed: bool) -> trt.INetworkDefinition:
    import tensorrt as trt

    network = builder.create_network(_network_flags(version, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise QualityNetError(f"{source}: TensorRT {trt.__version__} cannot parse it: {errors}")
    return network


def _config(builder: trt.Builder, meta: ArtifactMeta, profile: BatchProfile, workspace: int, opt_level: int,
            timing_cache: str | Path | None) -> trt.IBuilderConfig:
    import tensorrt as trt

    config = builder.create_builder_config()
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions for the engine inspector
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace << 20)
    config.builder_optimization_level = opt_level
    config.add_optimization_profile(_optimization_profile(builder, meta, profile))
    if timing_cache is not None:
        _load_timing_cache(config, Path(timing_cache))
    return config


def _fast_int8(builder: trt.Builder) -> bool | None:
    """``platform_has_fast_int8`` (deprecated in 10, gone in 11: None there)."""
    try:
        return bool(builder.platform_has_fast_int8)
    except AttributeError:
        return None


def _layer_precisions(serialized: trt.IHostMemory, logger: trt.ILogger) -> dict[str, int] | None:
    """How many of the engine's layers write INT8 outputs, by the engine inspector (None if it cannot say)."""
    import tensorrt as trt

    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
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


def _entropy_calibrator(inputs: np.ndarray, cache: Path, key: dict[str, Any]) -> trt.IInt8EntropyCalibrator2:
    """TensorRT's entropy calibrator over ``inputs``, in full batches of :data:`CALIBRATION_BATCH`."""
    import tensorrt as trt

    from qualitynet.runtime.gpu import HostDeviceBuffer, cuda_call, cudart

    if len(inputs) < CALIBRATION_BATCH:
        raise QualityNetError(f"the entropy calibrator needs at least {CALIBRATION_BATCH} calibration photos, "
                              f"got {len(inputs)}; raise --calib-count")

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.buffer = HostDeviceBuffer(CALIBRATION_BATCH * int(np.prod(inputs.shape[1:])), np.dtype(np.float32))
            self.next = 0

        def get_batch_size(self) -> int:
            return CALIBRATION_BATCH

        def get_batch(self, names: list[str]) -> list[int]:
            if self.next + CALIBRATION_BATCH > len(inputs):
                self.buffer.free()
                return []  # no more full batches
            chunk = np.ascontiguousarray(inputs[self.next:self.next + CALIBRATION_BATCH], np.float32).ravel()
            self.next += CALIBRATION_BATCH
            self.buffer.host[:chunk.size] = chunk
            self.buffer.to_device(chunk.size, 0)
            cuda_call(cudart().cudaStreamSynchronize(0))
            return [self.buffer.device]

        def read_calibration_cache(self) -> bytes | None:  # None: no cache for this key, calibrate
            return read_calibration_cache(cache, key)

        def write_calibration_cache(self, data: memoryview | bytes) -> None:
            write_calibration_cache(cache, key, bytes(data))

    return EntropyCalibrator()
