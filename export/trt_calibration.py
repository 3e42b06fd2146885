"""TensorRT's implicit INT8 calibration, for the one place explicit Q/DQ is refused: 8.6 on Pascal.

The entropy calibrator (``IInt8EntropyCalibrator2``) feeds the calibration photos in full
batches of :data:`CALIBRATION_BATCH` and keeps its calibration cache next to the plan
(``model.int8.plan.calib``). Later builds reuse the cache only when its key file
(``model.int8.plan.calib.json``: checkpoint SHA-256, calibration settings and inputs, batch,
TensorRT version) is theirs. Type-checked against ``tensorrt-stubs``; ``tensorrt`` and
cuda-python are imported only inside :func:`entropy_calibrator`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qualitynet.artifact import ArtifactMeta, sidecar_path
from qualitynet.errors import QualityNetError
from qualitynet.export._io import atomic_write_bytes

if TYPE_CHECKING:
    import tensorrt as trt

__all__ = ["CALIBRATION_BATCH", "calibration_cache_key", "calibration_cache_path", "entropy_calibrator",
           "read_calibration_cache", "write_calibration_cache"]

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 8


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
    key_file = sidecar_path(cache)
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
    atomic_write_bytes(sidecar_path(cache), text.encode())


def entropy_calibrator(inputs: np.ndarray, cache: Path, key: dict[str, Any]) -> trt.IInt8EntropyCalibrator2:
    """TensorRT's entropy calibrator over ``inputs``, in full batches of :data:`CALIBRATION_BATCH`.

    Raises:
        QualityNetError: fewer inputs than one batch.
    """
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
