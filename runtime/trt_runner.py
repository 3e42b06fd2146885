"""TensorRT backend: runs a ``model.plan`` (with its ``model.plan.json`` sidecar) through cuda-python.

Only the name-based tensor API is used (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``), which TensorRT 8.6, 10.x and 11.x share. Pinned host and device
buffers are allocated once for the optimization profile's maximum batch, their addresses
bound once, and reused for every batch on one CUDA stream. A batch larger than the profile
allows is split; one smaller than its minimum is padded. :meth:`TrtRunner.deactivate` (or
leaving ``with``) frees the GPU memory.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qualitynet.artifact import ArtifactMeta
from qualitynet.errors import QualityNetError
from qualitynet.runtime.gpu import HostDeviceBuffer, cuda_call, cudart, device_properties
from qualitynet.runtime.runner import BaseRunner, check_graph_input
from qualitynet.runtime.trt_compat import (
    REBUILD_HINT,
    batch_limits,
    check_plan_compat,
    find_io_tensors,
    import_tensorrt,
    plan_chunks,
)

if TYPE_CHECKING:
    import tensorrt

__all__ = ["TrtRunner"]

logger = logging.getLogger(__name__)


class TrtRunner(BaseRunner):
    """Scores batches with a serialized TensorRT engine.

    Args:
        model_path: the ``.plan``; its ``.json`` sidecar must sit next to it.
        device: the CUDA device index.
    """

    name = "tensorrt"

    def __init__(self, model_path: str | Path, device: int = 0) -> None:
        super().__init__(model_path)
        self.device = device
        self._runtime: tensorrt.Runtime | None = None
        self._engine: tensorrt.ICudaEngine | None = None
        self._context: tensorrt.IExecutionContext | None = None
        self._trt_logger: Any = None
        self._stream: Any = None
        self._buffers: list[HostDeviceBuffer] = []
        self._io = ("", "")
        self._limits = (1, 1)
        self._per_item = (0, 0)

    def activate_impl(self) -> ArtifactMeta:
        meta = ArtifactMeta.read_sidecar(self.model_path)
        trt = import_tensorrt()
        rt = cudart()
        capability, gpu_name = device_properties(self.device)  # before TensorRT touches CUDA
        check_plan_compat(meta, self.model_path, trt.__version__, capability, gpu_name)
        cuda_call(rt.cudaSetDevice(self.device))
        try:
            self._load(trt, meta)
        except BaseException:
            self.deactivate_impl()
            raise
        return meta

    def _load(self, trt: Any, meta: ArtifactMeta) -> None:
        """Deserialize, create the context and stream, allocate and bind the buffers."""
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        runtime: tensorrt.Runtime = trt.Runtime(self._trt_logger)
        self._runtime = runtime
        engine = runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:
            lean = "" if trt.__name__ == "tensorrt" else (
                f"; {trt.__name__} (the lean runtime) loads only plans built version-compatible, "
                "install the full TensorRT or rebuild so")
            raise QualityNetError(f"{self.model_path}: TensorRT could not deserialize the plan{lean}; {REBUILD_HINT}")
        self._engine = engine
        cfg = meta.preprocess
        inp, out = find_io_tensors(engine, trt.TensorIOMode, (cfg.input_name, cfg.output_name))
        check_graph_input(meta, tuple(engine.get_tensor_shape(inp)[1:]), self.model_path)
        low, high = batch_limits(engine, inp)
        out_shape: tuple[int, ...] = tuple(engine.get_tensor_shape(out)[1:])
        if any(d < 0 for d in out_shape):
            raise QualityNetError(f"{self.model_path}: output {out!r} has dynamic non-batch dims {out_shape}")
        context = engine.create_execution_context()
        if context is None:
            raise QualityNetError(f"{self.model_path}: TensorRT could not create an execution context (GPU memory?)")
        self._context = context
        self._stream = cuda_call(cudart().cudaStreamCreate())
        in_items, out_items = 3 * cfg.height * cfg.width, math.prod(out_shape)
        in_buf = HostDeviceBuffer(high * in_items, np.dtype(trt.nptype(engine.get_tensor_dtype(inp))))
        self._buffers.append(in_buf)
        out_buf = HostDeviceBuffer(high * out_items, np.dtype(trt.nptype(engine.get_tensor_dtype(out))))
        self._buffers.append(out_buf)
        if not (context.set_tensor_address(inp, in_buf.device) and context.set_tensor_address(out, out_buf.device)):
            raise QualityNetError(f"{self.model_path}: TensorRT refused the buffer addresses")
        self._io, self._limits, self._per_item = (inp, out), (low, high), (in_items, out_items)
        logger.info("TensorRT %s engine: input %r, output %r, batch %d..%d, buffers %.1f MiB",
                    trt.__version__, inp, out, low, high, (in_buf.nbytes + out_buf.nbytes) / 2**20)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        context, (in_buf, out_buf) = self._context, self._buffers
        assert context is not None
        rt = cudart()
        (inp, _), (in_items, out_items) = self._io, self._per_item
        scores = np.empty(len(batch), np.float32)
        for start, stop, run in plan_chunks(len(batch), *self._limits):
            staged = in_buf.host[: run * in_items].reshape(run, *batch.shape[1:])
            staged[: stop - start] = batch[start:stop]
            staged[stop - start:] = 0
            if not context.set_input_shape(inp, (run, *batch.shape[1:])):
                raise QualityNetError(f"TensorRT refused input shape {(run, *batch.shape[1:])}")
            in_buf.to_device(run * in_items, self._stream)
            if not context.execute_async_v3(int(self._stream)):
                raise QualityNetError("TensorRT execution failed (see the TensorRT log above)")
            out_buf.to_host(run * out_items, self._stream)
            cuda_call(rt.cudaStreamSynchronize(self._stream))
            scores[start:stop] = out_buf.host[: run * out_items].reshape(run, out_items)[: stop - start, 0]
        return scores

    def deactivate_impl(self) -> None:
        rt = cudart()
        if self._stream is not None:
            cuda_call(rt.cudaStreamSynchronize(self._stream))
        for buffer in reversed(self._buffers):
            buffer.free()
        self._buffers.clear()
        if self._stream is not None:
            cuda_call(rt.cudaStreamDestroy(self._stream))
            self._stream = None
        self._context = self._engine = self._runtime = self._trt_logger = None
