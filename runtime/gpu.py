"""Checked calls into cuda-python's runtime API: device facts, a stream, pinned/device buffers.

cuda-python is imported on first use (``cuda.bindings.runtime``; ``cuda.cudart`` before
12.x's rename), so the runtime imports it only for TensorRT plans.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
from functools import cache
from types import ModuleType
from typing import Any

import numpy as np

from qualitynet.errors import QualityNetError

__all__ = ["HostDeviceBuffer", "cuda_call", "cudart", "device_properties", "driver_version"]

logger = logging.getLogger(__name__)


@cache
def cudart() -> ModuleType:
    """cuda-python's runtime module.

    Raises:
        QualityNetError: cuda-python is not installed.
    """
    try:
        runtime = importlib.import_module("cuda.bindings.runtime")
    except ImportError:
        try:
            runtime = importlib.import_module("cuda.cudart")  # cuda-python before 12.6.1
        except ImportError:
            raise QualityNetError(
                "cuda-python is not installed; TensorRT plans need it: pip install 'qualitynet[tensorrt-cu12]' for a "
                "TensorRT built for CUDA 12 (8.6, tensorrt-cu12) or 'qualitynet[tensorrt-cu13]' for CUDA 13"
            ) from None
    return runtime


def cuda_call(result: tuple[Any, ...]) -> Any:
    """Check the error code cuda-python returns first; return the remaining value(s).

    Raises:
        QualityNetError: the call failed; the message has CUDA's error name and text.
    """
    rt = cudart()
    error, values = result[0], result[1:]
    if error != rt.cudaError_t.cudaSuccess:
        _, text = rt.cudaGetErrorString(error)
        detail = text.decode() if isinstance(text, bytes) else str(text)
        raise QualityNetError(f"CUDA error {getattr(error, 'name', error)}: {detail}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def device_properties(device: int) -> tuple[str, str]:
    """``(compute capability "major.minor", GPU name)`` of a CUDA device.

    Raises:
        QualityNetError: no usable CUDA device or driver.
    """
    rt = cudart()
    try:
        count = cuda_call(rt.cudaGetDeviceCount())
    except QualityNetError as exc:
        raise QualityNetError(f"no usable CUDA GPU for a TensorRT plan ({exc}); score the ONNX model instead") from None
    if not 0 <= device < count:
        raise QualityNetError(f"CUDA device {device} does not exist ({count} present)")
    props = cuda_call(rt.cudaGetDeviceProperties(device))
    name = props.name.split(b"\0", 1)[0].decode() if isinstance(props.name, bytes) else str(props.name)
    return f"{props.major}.{props.minor}", name


def driver_version() -> str:
    """The CUDA version the installed driver supports, as ``"12.4"`` (``cudaDriverGetVersion``; ``"0.0"``
    without a driver). A TensorRT built for CUDA 13 needs ``"13.0"`` or more."""
    rt = cudart()
    version = int(cuda_call(rt.cudaDriverGetVersion()))
    return f"{version // 1000}.{version % 1000 // 10}"


class HostDeviceBuffer:
    """A pinned host array and a device allocation of the same size, made once and reused.

    Args:
        count: elements.
        dtype: element type.
    """

    def __init__(self, count: int, dtype: np.dtype[Any]) -> None:
        rt = cudart()
        self.dtype = np.dtype(dtype)
        self.nbytes = int(count) * self.dtype.itemsize
        self.host_ptr: int = cuda_call(rt.cudaMallocHost(self.nbytes))
        try:
            self.device: int = int(cuda_call(rt.cudaMalloc(self.nbytes)))
        except QualityNetError:
            cuda_call(rt.cudaFreeHost(self.host_ptr))
            raise
        raw = (ctypes.c_byte * self.nbytes).from_address(int(self.host_ptr))
        self.host: np.ndarray = np.ctypeslib.as_array(raw).view(self.dtype)

    def to_device(self, count: int, stream: Any) -> None:
        """Queue a copy of the first ``count`` host elements to the device."""
        rt = cudart()
        cuda_call(rt.cudaMemcpyAsync(self.device, self.host_ptr, count * self.dtype.itemsize,
                                     rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def to_host(self, count: int, stream: Any) -> None:
        """Queue a copy of the first ``count`` device elements to the host."""
        rt = cudart()
        cuda_call(rt.cudaMemcpyAsync(self.host_ptr, self.device, count * self.dtype.itemsize,
                                     rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def free(self) -> None:
        """Release both allocations (idempotent, and both are released even if the first call
        fails); the host array must not be used after."""
        rt = cudart()
        device, host_ptr = self.device, self.host_ptr
        self.device = self.host_ptr = 0
        self.host = np.empty(0, self.dtype)
        try:
            if device:
                cuda_call(rt.cudaFree(device))
        finally:
            if host_ptr:
                cuda_call(rt.cudaFreeHost(host_ptr))
