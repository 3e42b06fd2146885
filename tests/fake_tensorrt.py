"""One recording stand-in for the ``tensorrt`` module, for the export and runtime tests.

:class:`FakeTensorRT` builds a module with the API one TensorRT version has (8.6, 10.x,
11.x: the network creation flags, the builder flags, the INT8 calibrator) for the builder
(``Builder``, ``OnnxParser``, ``IBuilderConfig``, timing cache, optimization profile) and the
runtime (``Runtime``, ``ICudaEngine``, ``IExecutionContext``, the engine inspector), and
records what the code under test asks of it. Every class is named after the TensorRT class
it stands for and defines only names that class has in ``tensorrt-stubs``
(``test_the_fake_offers_only_the_real_api`` checks), so the fake cannot invent API.

The parser adds a layer per ONNX node named as onnx-tensorrt names them, and a second
``<name>_<counter>`` for reductions. An engine has input ``image`` ``(-1, *input_shape)``
and ``outputs``; executing it writes each image's mean (``quality``) or mean + 1 (any other
output) into ``device`` memory, read at the addresses bound, and fails unless every I/O
tensor has one, as TensorRT does.
"""

from __future__ import annotations

import json
import types
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

__all__ = ["FakeTensorRT"]

_PROFILE = (1, 4, 8)
_INSPECTED_LAYERS = {"Layers": [{"Name": "conv", "Outputs": [{"Format/Datatype": "Row major linear INT8 format"}]},
                                {"Name": "head", "Outputs": [{"Format/Datatype": "Row major linear FP32 format"}]}]}


class FakeTensorRT:
    """A ``tensorrt`` module of one version that records calls.

    Args:
        version: e.g. ``"10.13.0.35"``; decides which flags and classes exist.
        refuse: ONNX file names whose networks the builder fails to build (returns ``None``).
        outputs: the engine's output tensors.
        input_shape: the engine input's per-image shape.
        device: device memory (address -> bytes), shared with a fake cuda-python, that an
            execution reads and writes.
    """

    def __init__(self, version: str, *, refuse: tuple[str, ...] = (), outputs: tuple[str, ...] = ("quality",),
                 input_shape: tuple[int, ...] = (3, 96, 96),
                 device: MutableMapping[int, bytearray] | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.module = _module(version, self._record, refuse, outputs, input_shape, {} if device is None else device)

    def _record(self, name: str, value: Any = None) -> None:
        self.calls.append((name, value))

    def values(self, name: str) -> list[Any]:
        """What was recorded under ``name``, in order."""
        return [value for key, value in self.calls if key == name]


def _module(version: str, rec: Any, refuse: tuple[str, ...], outputs: tuple[str, ...], input_shape: tuple[int, ...],
            device: MutableMapping[int, bytearray]) -> types.ModuleType:
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    weak_typing = major_minor < (11, 0)
    names = ("image", *outputs)

    class Logger:
        WARNING, INFO = 2, 3

        def __init__(self, min_severity: int) -> None:
            rec("logger", min_severity)

    class ITensor:
        def __init__(self, dtype: str) -> None:
            self.dtype = dtype

    class ILayer:
        """Records the precision asked of it."""

        def __init__(self, name: str, dtypes: tuple[str, ...]) -> None:
            self.name, self._outputs = name, [ITensor(d) for d in dtypes]
            self.num_outputs = len(dtypes)

        def get_output(self, index: int) -> ITensor:
            return self._outputs[index]

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "precision":
                rec("precision", (self.name, value))
            object.__setattr__(self, name, value)

        def set_output_type(self, index: int, dtype: str) -> None:
            rec("output_type", (self.name, index, dtype))

    class INetworkDefinition:
        def __init__(self) -> None:
            self._layers: list[ILayer] = []
            self._source = ""

        @property
        def num_layers(self) -> int:
            return len(self._layers)

        def get_layer(self, index: int) -> ILayer:
            return self._layers[index]

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self._data = data

        def serialize(self) -> bytes:
            return b"timing-cache-after"

    class IBuilderConfig:
        def set_flag(self, flag: str) -> None:
            rec("set_flag", flag)

        def set_memory_pool_limit(self, pool: str, pool_size: int) -> None:
            rec("pool", (pool, pool_size))

        def __setattr__(self, name: str, value: Any) -> None:
            rec(name, value)
            object.__setattr__(self, name, value)

        def add_optimization_profile(self, profile: Any) -> int:
            rec("profile", profile)
            return 0

        def set_calibration_profile(self, profile: Any) -> bool:
            rec("calibration_profile", profile)
            return True

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache | None:
            data = bytes(serialized_timing_cache)
            rec("create_timing_cache", data)
            return None if data.startswith(b"other-version") else ITimingCache(data)  # TensorRT cannot read it

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            if not isinstance(cache, ITimingCache):  # the bindings take an ITimingCache, not None
                raise TypeError("set_timing_cache(): incompatible function arguments")
            rec("set_timing_cache", cache._data)
            return not cache._data.startswith(b"other-gpu")

        def get_timing_cache(self) -> ITimingCache:
            return ITimingCache(b"")

    class IOptimizationProfile:
        def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
            rec("set_shape", (input, (min, opt, max)))

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int) -> INetworkDefinition:
            rec("network_flags", flags)
            return INetworkDefinition()

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
            if Path(network._source).name in refuse:
                return None
            calibrator = getattr(config, "int8_calibrator", None)
            if calibrator is None:
                return b"serialized-plan"
            calibrator.write_calibration_cache(b"calibration-table")
            return b"calibrated-plan"

        if major_minor < (11, 0):
            @property
            def platform_has_fast_int8(self) -> bool:
                return True

    class OnnxParser:
        num_errors = 0

        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            self._network = network

        def parse_from_file(self, model: str) -> bool:
            rec("parsed", Path(model).name)
            self._network._source = model
            for counter, node in enumerate(onnx.load(model, load_external_data=False).graph.node):
                name = node.name or f"node_of_{node.output[0]}"
                self._network._layers.append(ILayer(name, ("float32",)))
                if node.op_type.startswith("Reduce"):
                    self._network._layers.append(ILayer(f"{name}_{counter}", ("float32",)))
            self._network._layers.append(ILayer("TopK_indices", ("float32", "int32")))  # only its values are float
            return True

    class IExecutionContext:
        def __init__(self) -> None:
            self._addresses: dict[str, int] = {}
            self._batch = 0

        def set_tensor_address(self, name: str, memory: int) -> bool:
            self._addresses[name] = memory
            return True

        def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
            self._batch = shape[0]
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            if set(self._addresses) != set(names):
                rec("unbound", sorted(set(names) - set(self._addresses)))
                return False
            size = self._batch * int(np.prod(input_shape))
            images = np.frombuffer(bytes(device[self._addresses["image"]]), np.float32)[:size]
            means = images.reshape(self._batch, -1).mean(axis=1)
            for name in outputs:
                value = (means if name == "quality" else means + 1).astype(np.float32)
                device[self._addresses[name]][: value.nbytes] = value.tobytes()
            return True

    class EngineInspector:
        def get_engine_information(self, format: str) -> str:
            return json.dumps(_INSPECTED_LAYERS)

    class ICudaEngine:
        num_io_tensors = len(names)

        def get_tensor_name(self, index: int) -> str:
            return names[index]

        def get_tensor_mode(self, name: str) -> str:
            return "in" if name == "image" else "out"

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            return [(batch, *input_shape) for batch in _PROFILE]

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            return (-1, *input_shape) if name == "image" else (-1, 1)

        def get_tensor_dtype(self, name: str) -> str:
            return "float"

        def create_execution_context(self) -> IExecutionContext:
            return IExecutionContext()

        def create_engine_inspector(self) -> EngineInspector:
            return EngineInspector()

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine:
            rec("host_code", self.engine_host_code_allowed)
            return ICudaEngine()

    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]
    api: dict[str, Any] = {
        "Logger": Logger, "Builder": Builder, "OnnxParser": OnnxParser, "Runtime": Runtime,
        "IBuilderConfig": IBuilderConfig, "INetworkDefinition": INetworkDefinition, "ILayer": ILayer,
        "ITensor": ITensor, "ITimingCache": ITimingCache, "IOptimizationProfile": IOptimizationProfile,
        "ICudaEngine": ICudaEngine, "IExecutionContext": IExecutionContext, "EngineInspector": EngineInspector,
        "NetworkDefinitionCreationFlag": types.SimpleNamespace(
            **({"EXPLICIT_BATCH": 0} if weak_typing else {}),
            **({"STRONGLY_TYPED": 1} if (9, 0) <= major_minor < (11, 0) else {})),
        "BuilderFlag": types.SimpleNamespace(**{flag: flag for flag in (
            "TF32", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",  # in 8.6 and in the 11.4 bindings
            *(("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS") if weak_typing else ()))}),
        "MemoryPoolType": types.SimpleNamespace(WORKSPACE="WORKSPACE"),
        "ProfilingVerbosity": types.SimpleNamespace(DETAILED="DETAILED"),
        "LayerInformationFormat": types.SimpleNamespace(JSON="JSON"),
        "TensorIOMode": types.SimpleNamespace(INPUT="in", OUTPUT="out"),
        "float32": "float32", "float16": "float16",
        "Dims4": lambda *dims: dims,
        "nptype": lambda dtype: np.float32,
    }
    if weak_typing:  # the calibrators are gone in 11, with weak typing

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                rec("calibrator", type(self).__name__)

        api["IInt8EntropyCalibrator2"] = IInt8EntropyCalibrator2
    vars(trt).update(api)
    return trt
