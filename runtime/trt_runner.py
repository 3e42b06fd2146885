"""TensorRT backend: runs a ``model.plan`` (with its ``model.plan.json`` sidecar) through cuda-python.

Only the name-based tensor API is used (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``), which TensorRT 8.6, 10.x and 11.x share. Pinned host and device
buffers are allocated once for the optimization profile's maximum batch, for the input and
every output (``execute_async_v3`` needs an address for each), bound once, and reused for
every batch on one CUDA stream. A batch larger than the profile allows is split; one smaller
than its minimum is padded. :meth:`TrtRunner.deactivate` (or leaving ``with``) frees the GPU
memory. Which TensorRT module loads the plan (full or lean runtime) is decided by
:func:`~qualitynet.runtime.trt_compat.select_runtime` from the sidecar.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qualitynet.artifact import ArtifactMeta
from qualitynet.errors import QualityNetError
from qualitynet.runtime.gpu import HostDeviceBuffer, cuda_call, cudart, device_properties
from qualitynet.runtime.runner import BaseRunner, check_graph_input
from qualitynet.runtime.trt_compat import (
    HOST_CODE_OPTION,
    batch_limits,
    check_plan_compat,
    find_io_tensors,
    io_tensor_names,
    plan_chunks,
    rebuild_hint,
    tensorrt_status,
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
        allow_host_code: let the full TensorRT run the lean runtime embedded in a plan built
            ``--version-compatible`` (TensorRT's ``engine_host_code_allowed``): that executes code
            from the plan file, so only for plans you trust. Without it such a plan is refused
            unless TensorRT's lean runtime is installed (it needs no code from the file).
    """

    name = "tensorrt"

    def __init__(self, model_path: str | Path, device: int = 0, allow_host_code: bool = False) -> None:
        super().__init__(model_path)
        self.device = device
        self.allow_host_code = allow_host_code
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
        trt = tensorrt_status().runtime_for(meta, self.model_path, self.allow_host_code)
        rt = cudart()
        capability, gpu_name = device_properties(self.device)  # before TensorRT touches CUDA
        check_plan_compat(meta, self.model_path, trt.__version__, capability, gpu_name, lean=trt.__name__ != "tensorrt")
        cuda_call(rt.cudaSetDevice(self.device))
        try:
            self._load(trt, meta)
        except BaseException:
            try:
                self.deactivate_impl()
            except QualityNetError as cleanup:  # the load's own error is the one to report
                logger.warning("freeing after the failed load also failed: %s", cleanup)
            raise
        return meta

    def _load(self, trt: Any, meta: ArtifactMeta) -> None:
        """Deserialize, create the context and stream, allocate and bind the buffers."""
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        runtime: tensorrt.Runtime = trt.Runtime(self._trt_logger)
        self._runtime = runtime
        if self.allow_host_code:
            runtime.engine_host_code_allowed = True
        engine = runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:
            hint = "" if trt.__name__ == "tensorrt" or self.allow_host_code else (
                f"; if TensorRT's log above says the plan holds host code, {HOST_CODE_OPTION} allows it (trusted "
                "plans only)")
            raise QualityNetError(f"{self.model_path}: {trt.__name__} {trt.__version__} could not deserialize the "
                                  f"plan{hint}; {rebuild_hint(meta.precision)}")
        self._engine = engine
        cfg = meta.preprocess
        inp, out = find_io_tensors(engine, trt.TensorIOMode, (cfg.input_name, cfg.output_name))
        check_graph_input(meta, tuple(engine.get_tensor_shape(inp)[1:]), self.model_path)
        outputs = io_tensor_names(engine, trt.TensorIOMode)[1]
        low, high = batch_limits(engine, inp)
        per_item = {name: self._items_per_image(engine, name) for name in outputs}
        context = engine.create_execution_context()
        if context is None:
            raise QualityNetError(f"{self.model_path}: TensorRT could not create an execution context (GPU memory?)")
        self._context = context
        self._stream = cuda_call(cudart().cudaStreamCreate())
        in_items = 3 * cfg.height * cfg.width
        # The input first, the chosen output second; every other output gets a buffer too, whose values are unused.
        for name, items in ((inp, in_items), (out, per_item[out]),
                            *((n, per_item[n]) for n in outputs if n != out)):
            buffer = HostDeviceBuffer(high * items, np.dtype(trt.nptype(engine.get_tensor_dtype(name))))
            self._buffers.append(buffer)
            if not context.set_tensor_address(name, buffer.device):
                raise QualityNetError(f"{self.model_path}: TensorRT refused the buffer address of {name!r}")
        self._io, self._limits, self._per_item = (inp, out), (low, high), (in_items, per_item[out])
        logger.info("TensorRT %s engine (%s): input %r, output %r of %d, batch %d..%d, buffers %.1f MiB",
                    trt.__version__, trt.__name__, inp, out, len(outputs), low, high,
                    sum(b.nbytes for b in self._buffers) / 2**20)

    def _items_per_image(self, engine: tensorrt.ICudaEngine, name: str) -> int:
        """Elements per image of an output tensor, whose dims past the batch must be static."""
        shape: tuple[int, ...] = tuple(engine.get_tensor_shape(name)[1:])
        if any(d < 0 for d in shape):
            raise QualityNetError(f"{self.model_path}: output {name!r} has dynamic non-batch dims {shape}")
        return math.prod(shape)

    def infer_impl(self, batch: np.ndarray) -> np.ndarray:
        context, (in_buf, out_buf) = self._context, self._buffers[:2]
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
        """Wait for the stream, drop the engine, free every buffer and destroy the stream; each step
        runs even if an earlier one fails (after a sticky CUDA error every call fails), then the
        first error is raised."""
        rt, stream, buffers = cudart(), self._stream, self._buffers[::-1]
        self._stream, self._buffers = None, []
        steps: list[Callable[[], object]] = []
        if stream is not None:
            steps.append(lambda: cuda_call(rt.cudaStreamSynchronize(stream)))
        steps += [self._drop_tensorrt, *(buffer.free for buffer in buffers)]
        if stream is not None:
            steps.append(lambda: cuda_call(rt.cudaStreamDestroy(stream)))
        errors = []
        for step in steps:
            try:
                step()
            except QualityNetError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def _drop_tensorrt(self) -> None:
        self._context = self._engine = self._runtime = self._trt_logger = None
