"""The TensorRT build, checked three ways where no GPU is present.

1. ``mypy --strict`` against ``tensorrt-stubs``: every TensorRT name the module uses exists
   with the types used (a misspelt attribute fails the check; a control proves it would).
2. A recording stand-in for the ``tensorrt`` module: which ONNX file, network flags and
   builder flags each TensorRT version gets (8.6, 10.8, 10.13, 11.4), the layers 8.6 keeps in
   FP32, the Pascal FP32 path, version compatibility, the profile, workspace, optimization
   level, timing cache (also one from another version) and the sidecar.
3. The real build, run and refusal tests, marked ``trt``: they run where TensorRT's builder
   and a GPU exist and skip here, saying which is missing.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import qualitynet.export.tensorrt as trt_export
from qualitynet.artifact import ArtifactMeta, BatchProfile
from qualitynet.errors import QualityNetError
from qualitynet.export import ExportResult, TensorRTUnavailableError, build_engine, export_all, load_photos
from qualitynet.export.fp16 import FP16_OP_BLOCK_LIST

from trt_stubs import mypy_errors, other_capability, other_release

# ---- 1. type check against tensorrt-stubs ------------------------------------------------------

def test_tensorrt_module_type_checks_against_the_stubs(tmp_path: Path) -> None:
    errors, output = mypy_errors(["export/tensorrt.py"], tmp_path, strict=True)
    assert errors == [], output


def test_builder_flags_exist_in_the_real_tensorrt_11_bindings() -> None:
    """Every ``BuilderFlag`` the build sets exists in the real TensorRT 11.4 (lean) bindings, except the
    weak-typing ones only 8.6 gets; and the stand-in below offers 11.x no flag the real one lacks."""
    lean = pytest.importorskip("tensorrt_lean")
    source = Path(trt_export.__file__).read_text()
    used = set(re.findall(r"trt\.BuilderFlag\.([A-Z0-9_]+)", source))
    assert {"VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP16", "OBEY_PRECISION_CONSTRAINTS"} <= used
    assert used - set(lean.BuilderFlag.__members__) == {"FP16", "OBEY_PRECISION_CONSTRAINTS"}
    assert set(vars(_fake_tensorrt("11.4.0.106", _Recorder()).BuilderFlag)) <= set(lean.BuilderFlag.__members__)


# ---- 2. the build logic per TensorRT version, with a recording stand-in -----------------------

class _Recorder:
    """Attributes and calls of the stand-in, for the assertions."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __call__(self, name: str, value: Any = None) -> None:
        self.calls.append((name, value))

    def values(self, name: str) -> list[Any]:
        return [value for key, value in self.calls if key == name]


def _fake_tensorrt(version: str, rec: _Recorder) -> types.ModuleType:
    """A ``tensorrt`` module with only the API each version has, that records what it is asked."""
    major_minor = tuple(int(p) for p in version.split(".")[:2])
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version  # type: ignore[attr-defined]

    class Logger:
        WARNING, INFO = 2, 3

        def __init__(self, severity: int) -> None:
            rec("logger", severity)

    flags: dict[str, int] = {}
    if major_minor < (11, 0):
        flags["EXPLICIT_BATCH"] = 0
    if (9, 0) <= major_minor < (11, 0):
        flags["STRONGLY_TYPED"] = 1
    builder_flags = ["TF32", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]  # all in 8.6 and in the 11.4 bindings
    if major_minor < (11, 0):
        builder_flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]  # gone in 11 (weak typing is)

    class Timing:
        def serialize(self) -> bytes:
            return b"timing-cache-after"

    class Tensor:
        def __init__(self, dtype: str) -> None:
            self.dtype = dtype

    class Layer:
        """A layer named as TensorRT's ONNX parser names it; records the precision asked of it."""

        def __init__(self, name: str, dtypes: tuple[str, ...]) -> None:
            self.name, self.outputs = name, [Tensor(d) for d in dtypes]
            self.num_outputs = len(dtypes)

        def get_output(self, index: int) -> Tensor:
            return self.outputs[index]

        def __setattr__(self, name: str, value: Any) -> None:
            if name == "precision":
                rec("precision", (self.name, value))
            object.__setattr__(self, name, value)

        def set_output_type(self, index: int, dtype: str) -> None:
            rec("output_type", (self.name, index, dtype))

    class Network:
        def __init__(self) -> None:
            self.layers: list[Layer] = []

        @property
        def num_layers(self) -> int:
            return len(self.layers)

        def get_layer(self, index: int) -> Layer:
            return self.layers[index]

    class Config:
        def set_flag(self, flag: str) -> None:
            rec("set_flag", flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            rec("pool", (pool, size))

        def __setattr__(self, name: str, value: Any) -> None:
            rec(name, value)

        def add_optimization_profile(self, profile: Any) -> int:
            rec("profile", profile)
            return 0

        def create_timing_cache(self, data: bytes) -> bytes | None:
            rec("create_timing_cache", bytes(data))
            return None if data.startswith(b"other-version") else bytes(data)  # TensorRT cannot read it

        def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
            if not isinstance(cache, bytes):  # the bindings take an ITimingCache, not None
                raise TypeError("set_timing_cache(): incompatible function arguments")
            rec("set_timing_cache", cache)
            return not cache.startswith(b"other-gpu")

        def get_timing_cache(self) -> Timing:
            return Timing()

    class Profile:
        def set_shape(self, name: str, *shapes: Any) -> None:
            rec("set_shape", (name, shapes))

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, network_flags: int) -> Network:
            rec("network_flags", network_flags)
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            return b"serialized-plan"

    class OnnxParser:
        """Adds a layer per ONNX node named like onnx-tensorrt does (node name, else ``node_of_<output>``),
        and a second one ``<name>_<counter>`` for the nodes TensorRT builds from two layers (reductions)."""

        num_errors = 0

        def __init__(self, network: Network, logger: Logger) -> None:
            self.network = network

        def parse_from_file(self, path: str) -> bool:
            rec("parsed", Path(path).name)
            for counter, node in enumerate(onnx.load(path, load_external_data=False).graph.node):
                name = node.name or f"node_of_{node.output[0]}"
                self.network.layers.append(Layer(name, ("float32",)))
                if node.op_type.startswith("Reduce"):
                    self.network.layers.append(Layer(f"{name}_{counter}", ("float32",)))
            self.network.layers.append(Layer("TopK_indices", ("float32", "int32")))  # only its values are float
            return True

    trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, OnnxParser  # type: ignore[attr-defined]
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(**flags)  # type: ignore[attr-defined]
    trt.BuilderFlag = types.SimpleNamespace(**{k: k for k in builder_flags})  # type: ignore[attr-defined]
    trt.float32, trt.float16 = "float32", "float16"  # type: ignore[attr-defined]
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
    trt.Dims4 = lambda *dims: dims  # type: ignore[attr-defined]
    return trt


@pytest.fixture()
def fake_build(tiny_export: ExportResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``build(version, capability)`` runs build_engine against the stand-in; returns (meta, recorder)."""

    def build(version: str, capability: str = "8.9", **kwargs: Any) -> tuple[ArtifactMeta, _Recorder]:
        rec = _Recorder()
        monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt(version, rec))
        monkeypatch.setattr(trt_export, "gpu_info", lambda device=0: ("Test GPU", capability))
        monkeypatch.setattr(trt_export, "cuda_versions", lambda: {"cuda_driver": "12.4", "tensorrt_cuda": "12"})
        meta = build_engine(tiny_export.onnx, tiny_export.fp16_onnx, tmp_path / "model.plan", **kwargs)
        return meta, rec

    return build


@pytest.mark.parametrize(("version", "source", "network_flags", "builder_flags", "typing"), [
    ("8.6.1", "model.onnx", 1 << 0, ["FP16", "OBEY_PRECISION_CONSTRAINTS"], "weak"),  # explicit batch + FP16 flag
    ("10.8.0.43", "model.fp16.onnx", 1 << 1, [], "strong"),  # the same strongly typed network as on 10.12+
    ("10.13.0.35", "model.fp16.onnx", 1 << 1, [], "strong"),  # FP16 flag deprecated from 10.12
    ("11.4.0.106", "model.fp16.onnx", 0, [], "strong"),  # always strongly typed; the flags are gone
])
def test_each_tensorrt_version_gets_its_build(fake_build: Any, tmp_path: Path, version: str, source: str,
                                              network_flags: int, builder_flags: list[str], typing: str) -> None:
    meta, rec = fake_build(version)
    assert rec.values("parsed") == [source]
    assert rec.values("network_flags") == [network_flags]
    assert rec.values("set_flag") == builder_flags
    assert meta.precision == "fp16" and meta.extra["typing"] == typing
    assert (tmp_path / "model.plan").read_bytes() == b"serialized-plan"
    sidecar = ArtifactMeta.read_sidecar(tmp_path / "model.plan")
    assert sidecar == meta
    assert (sidecar.versions["tensorrt"], sidecar.gpu_name, sidecar.compute_capability) == (version, "Test GPU", "8.9")
    assert (sidecar.versions["cuda_driver"], sidecar.versions["tensorrt_cuda"]) == ("12.4", "12")
    assert "cuda_runtime" not in sidecar.versions and sidecar.batch_profile == BatchProfile(1, 16, 64)
    assert sidecar.extra["version_compatible"] is False and sidecar.extra["exclude_lean_runtime"] is False
    assert sidecar.checkpoint_sha256 and sidecar.extra["build_seconds"] >= 0 and sidecar.extra["built_at"]


def test_profile_workspace_level_and_timing_cache(fake_build: Any, tmp_path: Path) -> None:
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"timing-cache-before")
    _, rec = fake_build("10.13.0.35", profile=BatchProfile(2, 8, 32), workspace=1024, timing_cache=cache, opt_level=5)
    ((name, shapes),) = rec.values("set_shape")
    assert name == "image" and shapes == ((2, 3, 96, 96), (8, 3, 96, 96), (32, 3, 96, 96))
    assert rec.values("pool") == [("WORKSPACE", 1024 << 20)]
    assert rec.values("builder_optimization_level") == [5]
    assert rec.values("create_timing_cache") == [b"timing-cache-before"]
    assert cache.read_bytes() == b"timing-cache-after"


def test_tensorrt_8_6_keeps_the_fp16_block_list_in_fp32(fake_build: Any, tiny_export: ExportResult) -> None:
    """The layers of the nodes fp16.py keeps in FP32 (the model's ReduceMean, and the second layer
    TensorRT makes of each) are pinned to FP32 and obeyed; nothing else is, nor an int output."""
    meta, rec = fake_build("8.6.1")
    nodes = onnx.load(str(tiny_export.onnx)).graph.node
    blocked = {n.name for n in nodes if n.op_type in FP16_OP_BLOCK_LIST}
    assert {n.op_type for n in nodes if n.name in blocked} == {"ReduceMean"}  # what the tiny model has
    pinned = {name for name, dtype in rec.values("precision")}
    assert {dtype for _, dtype in rec.values("precision")} == {"float32"}
    assert blocked < pinned and all(name in blocked or name.rsplit("_", 1)[0] in blocked for name in pinned)
    assert len(pinned) == 2 * len(blocked) == meta.extra["fp32_layers"]
    assert sorted(rec.values("output_type")) == sorted((name, 0, "float32") for name in pinned)
    assert "OBEY_PRECISION_CONSTRAINTS" in rec.values("set_flag")


def test_pascal_builds_fp32_and_says_so(fake_build: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        meta, rec = fake_build("8.6.1", capability="6.1")
    assert rec.values("set_flag") == [] and rec.values("parsed") == ["model.onnx"] and not rec.values("precision")
    assert meta.precision == "fp32" and meta.compute_capability == "6.1"
    assert "1/64" in caplog.text and "FP32 engine" in caplog.text


@pytest.mark.parametrize("version", ["8.6.1", "10.13.0.35", "11.4.0.106"])
def test_version_compatible_plan(fake_build: Any, version: str) -> None:
    meta, rec = fake_build(version, version_compatible=True)
    assert rec.values("set_flag")[-1:] == ["VERSION_COMPATIBLE"] and meta.extra["version_compatible"] is True
    meta, rec = fake_build(version, version_compatible=True, exclude_lean_runtime=True)
    assert rec.values("set_flag")[-2:] == ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    assert meta.extra["exclude_lean_runtime"] is True
    with pytest.raises(QualityNetError, match="only to a --version-compatible plan"):
        fake_build(version, exclude_lean_runtime=True)


@pytest.mark.parametrize(("data", "tried"), [
    (b"other-version cache", []),  # TensorRT cannot read it: create_timing_cache returns None
    (b"other-gpu cache", [b"other-gpu cache"]),  # read, but set_timing_cache refuses it
])
def test_timing_cache_from_elsewhere_is_replaced_by_an_empty_one(fake_build: Any, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  data: bytes, tried: list[bytes]) -> None:
    cache = tmp_path / "trt.cache"
    cache.write_bytes(data)
    with caplog.at_level(logging.WARNING):
        _, rec = fake_build("10.13.0.35", timing_cache=cache)
    assert rec.values("set_timing_cache") == [*tried, b""]
    assert "starting a new timing cache" in caplog.text and cache.read_bytes() == b"timing-cache-after"


@pytest.mark.parametrize(("version", "capability"), [("10.13.0.35", "6.1"), ("11.4.0.106", "7.0")])
def test_gpu_too_old_for_the_installed_tensorrt(fake_build: Any, version: str, capability: str) -> None:
    with pytest.raises(TensorRTUnavailableError, match=f"does not support Test GPU .compute capability {capability}"):
        fake_build(version, capability=capability)


def test_bad_build_settings_are_refused(tiny_export: ExportResult, tmp_path: Path) -> None:
    with pytest.raises(QualityNetError, match="optimization level 7"):
        build_engine(tiny_export.onnx, tiny_export.fp16_onnx, tmp_path / "m.plan", opt_level=7)


def test_missing_tensorrt_is_reported_with_the_install_command(tiny_export: ExportResult, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert trt_export.tensorrt_version() is None
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed.*pip install tensorrt-cu12"):
        build_engine(tiny_export.onnx, tiny_export.fp16_onnx, tmp_path / "m.plan")
    # the type stubs install an importable 'tensorrt' namespace without a builder: not TensorRT
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert trt_export.tensorrt_version() is None


# ---- 3. the real thing (TensorRT builder + GPU) ------------------------------------------------

def _trt_missing() -> str | None:
    if trt_export.tensorrt_version() is None:
        return f"TensorRT's builder is not installed ({trt_export.INSTALL_HINT})"
    try:
        trt_export.gpu_info()
    except QualityNetError as exc:
        return f"no usable GPU: {exc}"
    return None


needs_trt = pytest.mark.skipif(_trt_missing() is not None, reason=str(_trt_missing()))


@pytest.fixture(scope="module")
def real_plan(varied_checkpoint: Path, photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    out = tmp_path_factory.mktemp("trt")
    return export_all(varied_checkpoint, out, fp16=True, photos=photo_dir, profile=BatchProfile(1, 4, 8),
                      timing_cache=out / "trt.cache", workspace=1024)


@pytest.mark.trt
@needs_trt
def test_real_build_runs_and_agrees_with_onnxruntime(real_plan: ExportResult, photo_dir: Path) -> None:
    from qualitynet.runtime.ort_runner import OrtRunner
    from qualitynet.runtime.trt_runner import TrtRunner

    assert real_plan.plan is not None
    check = real_plan.verifications["plan"]
    assert check and [c.batch_size for c in check.comparisons] == [1, 8]
    meta = ArtifactMeta.read_sidecar(real_plan.plan)
    assert meta.versions["tensorrt"].split(".")[:3] == [str(v) for v in trt_export.tensorrt_version() or ()][:3]
    assert meta.batch_profile == BatchProfile(1, 4, 8) and meta.gpu_name and meta.compute_capability
    assert (real_plan.plan.parent / "trt.cache").stat().st_size > 0
    inputs, _ = load_photos(photo_dir, meta.preprocess)
    with TrtRunner(real_plan.plan) as trt_runner, OrtRunner(real_plan.onnx, provider="cpu") as ort_runner:
        engine, reference = trt_runner.infer(inputs), ort_runner.infer(inputs)  # 8 photos: the profile's max
    assert np.abs(engine - reference).max() <= check.worst.tolerance.atol


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("change", ["compute_capability", "tensorrt"])
def test_plan_built_elsewhere_is_refused(real_plan: ExportResult, tmp_path: Path, change: str) -> None:
    """The sidecar names another GPU or TensorRT release than this machine's (derived from the real values,
    so that a P5000 with TensorRT 8.6.1 refuses too)."""
    from qualitynet.runtime.trt_runner import TrtRunner

    assert real_plan.plan is not None
    plan = Path(shutil.copy(real_plan.plan, tmp_path / "model.plan"))
    meta = ArtifactMeta.read_sidecar(real_plan.plan)
    assert meta.compute_capability is not None
    meta = dataclasses.replace(meta, **(
        {"compute_capability": other_capability(meta.compute_capability), "gpu_name": "another GPU"}
        if change == "compute_capability" else
        {"versions": {**meta.versions, "tensorrt": other_release(meta.versions["tensorrt"])}}))
    (tmp_path / "model.plan.json").write_text(json.dumps(meta.to_dict()))
    with pytest.raises(QualityNetError, match="refused.*iqa-export --fp16"):
        with TrtRunner(plan):
            pass


@pytest.mark.trt
@needs_trt
def test_real_version_compatible_plan(varied_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    """Built with VERSION_COMPATIBLE and verified by the export (full TensorRT, host code allowed: it built
    the plan); loaded without permission it runs only on the lean runtime of its release, else is refused."""
    from qualitynet.runtime.trt_compat import installed_runtimes, same_release
    from qualitynet.runtime.trt_runner import TrtRunner

    result = export_all(varied_checkpoint, tmp_path, fp16=True, photos=photo_dir, profile=BatchProfile(1, 4, 8),
                        workspace=1024, version_compatible=True)
    assert result.plan is not None and result.verifications["plan"]
    meta = ArtifactMeta.read_sidecar(result.plan)
    assert meta.extra["version_compatible"] is True and meta.extra["exclude_lean_runtime"] is False
    lean = installed_runtimes()[1]
    if lean is not None and same_release(meta.versions["tensorrt"], lean.__version__):
        with TrtRunner(result.plan) as runner:
            assert runner.infer(np.zeros((3, 3, 96, 96), np.float32)).shape == (3,)
    else:
        with pytest.raises(QualityNetError, match="--allow-plan-host-code"):
            TrtRunner(result.plan).activate()
