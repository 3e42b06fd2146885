"""The FP16 TensorRT build, checked where no GPU is present (``mypy --strict`` against
``tensorrt-stubs`` checks every TensorRT name it uses, as a step of the test command).

1. The builder flags used exist in the real TensorRT 11 bindings (or are weak typing's).
2. The recording stand-in for the ``tensorrt`` module (``tests/fake_tensorrt.py``): which ONNX file, network flags and
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
from qualitynet.export.fp16 import FP16_OP_BLOCK_LIST, fp32_tail
from qualitynet.export.tensorrt import BuildSettings
from qualitynet.runtime.trt_compat import INSTALL_HINT, tensorrt_status

from fake_tensorrt import FakeTensorRT
from trt_stubs import other_capability, other_release

# ---- 1. the API used exists in the real TensorRT 11 bindings ------------------------------------

def test_builder_flags_exist_in_the_real_tensorrt_11_bindings() -> None:
    """Every ``BuilderFlag`` the build sets exists in the real TensorRT 11.4 (lean) bindings, except the
    weak-typing ones only 8.6-10.11 get; and the stand-in offers 11.x no flag the real one lacks."""
    lean = pytest.importorskip("tensorrt_lean")
    source = Path(trt_export.__file__).read_text()
    used = set(re.findall(r"trt\.BuilderFlag\.([A-Z0-9_]+)", source))
    weak = {"FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"}
    assert {"VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"} | weak <= used
    assert used - set(lean.BuilderFlag.__members__) == weak
    assert set(vars(FakeTensorRT("11.4.0.106").module.BuilderFlag)) <= set(lean.BuilderFlag.__members__)


# ---- 2. the build logic per TensorRT version, with the recording stand-in ---------------------

@pytest.fixture()
def fake_build(tiny_export: ExportResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``build(version, capability)`` runs build_engine against the stand-in; returns (meta, recorder)."""

    def build(version: str, capability: str = "8.9", **settings: Any) -> tuple[ArtifactMeta, FakeTensorRT]:
        fake = FakeTensorRT(version)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        monkeypatch.setattr(trt_export, "gpu_info", lambda device=0: ("Test GPU", capability))
        monkeypatch.setattr(trt_export, "cuda_versions", lambda: {"cuda_driver": "12.4", "tensorrt_cuda": "12"})
        meta = build_engine(tiny_export.onnx, tiny_export.files["fp16_onnx"], tmp_path / "model.plan",
                            BuildSettings(**settings))
        return meta, fake

    return build


@pytest.mark.parametrize(("version", "source", "network_flags", "builder_flags", "typing"), [
    ("8.6.1", "model.onnx", 1 << 0, ["FP16", "OBEY_PRECISION_CONSTRAINTS"], "weak"),  # explicit batch + FP16 flag
    ("10.8.0.43", "model.fp16.onnx", 1 << 1, [], "strong"),  # the same strongly typed network as on 10.12+
    ("10.13.0.35", "model.fp16.onnx", 1 << 1, [], "strong"),  # FP16 flag deprecated from 10.12
    ("11.4.0.106", "model.fp16.onnx", 0, [], "strong"),  # always strongly typed; the flags are gone
])
def test_each_tensorrt_version_gets_its_build(fake_build: Any, tmp_path: Path, version: str, source: str,
                                              network_flags: int, builder_flags: list[str], typing: str) -> None:
    meta, fake = fake_build(version)
    assert fake.values("parsed") == [source]
    assert fake.values("network_flags") == [network_flags]
    assert fake.values("set_flag") == builder_flags
    assert meta.precision == "fp16" and meta.extra["typing"] == typing
    assert (tmp_path / "model.plan").read_bytes() == b"serialized-plan"
    sidecar = ArtifactMeta.read_sidecar(tmp_path / "model.plan")
    assert sidecar == meta
    assert (sidecar.versions["tensorrt"], sidecar.gpu_name, sidecar.compute_capability) == (version, "Test GPU", "8.9")
    assert (sidecar.versions["cuda_driver"], sidecar.versions["tensorrt_cuda"]) == ("12.4", "12")
    assert "cuda_runtime" not in sidecar.versions and sidecar.batch_profile == BatchProfile(1, 16, 64)
    assert sidecar.version_compatible is False and sidecar.exclude_lean_runtime is False
    assert sidecar.checkpoint_sha256 and sidecar.extra["build_seconds"] >= 0 and sidecar.extra["built_at"]


def test_profile_workspace_level_and_timing_cache(fake_build: Any, tmp_path: Path) -> None:
    cache = tmp_path / "trt.cache"
    cache.write_bytes(b"timing-cache-before")
    _, fake = fake_build("10.13.0.35", profile=BatchProfile(2, 8, 32), workspace=1024, timing_cache=cache, opt_level=5)
    ((name, shapes),) = fake.values("set_shape")
    assert name == "image" and shapes == ((2, 3, 96, 96), (8, 3, 96, 96), (32, 3, 96, 96))
    assert fake.values("pool") == [("WORKSPACE", 1024 << 20)]
    assert fake.values("builder_optimization_level") == [5]
    assert fake.values("create_timing_cache") == [b"timing-cache-before"]
    assert cache.read_bytes() == b"timing-cache-after"


def test_tensorrt_8_6_keeps_the_fp16_block_list_in_fp32(fake_build: Any, tiny_export: ExportResult) -> None:
    """The layers of the nodes fp16.py keeps in FP32 (the model's ReduceMean, the regressor after the last
    spatial tensor, and the second layer TensorRT makes of each) are pinned to FP32 and obeyed; nothing else is,
    nor an int output."""
    meta, fake = fake_build("8.6.1")
    model = onnx.load(str(tiny_export.onnx))
    nodes = model.graph.node
    tail = set(fp32_tail(model))
    blocked = {n.name for n in nodes if n.op_type in FP16_OP_BLOCK_LIST} | tail
    assert {n.op_type for n in nodes if n.op_type in FP16_OP_BLOCK_LIST} == {"ReduceMean"}  # what the tiny model has
    assert {"Gemm", "Sigmoid"} <= {n.op_type for n in nodes if n.name in tail}  # attention and head
    pinned = {name for name, dtype in fake.values("precision")}
    assert {dtype for _, dtype in fake.values("precision")} == {"float32"}
    assert blocked < pinned and all(name in blocked or name.rsplit("_", 1)[0] in blocked for name in pinned)
    reductions = sum(n.op_type.startswith("Reduce") for n in nodes if n.name in blocked)  # two layers each
    assert len(pinned) == len(blocked) + reductions == meta.extra["fp32_layers"]
    assert sorted(fake.values("output_type")) == sorted((name, 0, "float32") for name in pinned)
    assert "OBEY_PRECISION_CONSTRAINTS" in fake.values("set_flag")


def test_pascal_builds_fp32_and_says_so(fake_build: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        meta, fake = fake_build("8.6.1", capability="6.1")
    assert fake.values("set_flag") == [] and fake.values("parsed") == ["model.onnx"] and not fake.values("precision")
    assert meta.precision == "fp32" and meta.compute_capability == "6.1"
    assert "1/64" in caplog.text and "FP32 engine" in caplog.text


@pytest.mark.parametrize("version", ["8.6.1", "10.13.0.35", "11.4.0.106"])
def test_version_compatible_plan(fake_build: Any, version: str) -> None:
    meta, fake = fake_build(version, version_compatible=True)
    assert fake.values("set_flag")[-1:] == ["VERSION_COMPATIBLE"] and meta.version_compatible is True
    meta, fake = fake_build(version, version_compatible=True, exclude_lean_runtime=True)
    assert fake.values("set_flag")[-2:] == ["VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"]
    assert meta.exclude_lean_runtime is True
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
        _, fake = fake_build("10.13.0.35", timing_cache=cache)
    assert fake.values("set_timing_cache") == [*tried, b""]
    assert "starting a new timing cache" in caplog.text and cache.read_bytes() == b"timing-cache-after"


@pytest.mark.parametrize(("version", "capability"), [("10.13.0.35", "6.1"), ("11.4.0.106", "7.0")])
def test_gpu_too_old_for_the_installed_tensorrt(fake_build: Any, version: str, capability: str) -> None:
    with pytest.raises(TensorRTUnavailableError, match=f"does not support Test GPU .compute capability {capability}"):
        fake_build(version, capability=capability)


def test_bad_build_settings_are_refused(tiny_export: ExportResult, tmp_path: Path) -> None:
    with pytest.raises(QualityNetError, match="optimization level 7"):
        build_engine(tiny_export.onnx, tiny_export.file("fp16_onnx"), tmp_path / "m.plan", BuildSettings(opt_level=7))


def test_missing_tensorrt_is_reported_with_the_install_command(tiny_export: ExportResult, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert tensorrt_status().builder_version is None
    with pytest.raises(TensorRTUnavailableError, match="TensorRT is not installed.*pip install tensorrt-cu12"):
        build_engine(tiny_export.onnx, tiny_export.file("fp16_onnx"), tmp_path / "m.plan")
    # the type stubs install an importable 'tensorrt' namespace without a builder: not TensorRT
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    assert tensorrt_status().builder_version is None and "no builder" in tensorrt_status().full_missing


# ---- 3. the real thing (TensorRT builder + GPU) ------------------------------------------------

def _trt_missing() -> str | None:
    if tensorrt_status().builder_version is None:
        return f"TensorRT's builder is not installed ({INSTALL_HINT})"
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

    assert real_plan.file("plan") is not None
    check = real_plan.verifications["plan"]
    assert check and [c.batch_size for c in check.comparisons] == [1, 8]
    meta = ArtifactMeta.read_sidecar(real_plan.file("plan"))
    assert meta.versions["tensorrt"].split(".")[:3] == [str(v) for v in tensorrt_status().builder_version or ()][:3]
    assert meta.batch_profile == BatchProfile(1, 4, 8) and meta.gpu_name and meta.compute_capability
    assert (real_plan.file("plan").parent / "trt.cache").stat().st_size > 0
    inputs, _ = load_photos(photo_dir, meta.preprocess)
    with TrtRunner(real_plan.file("plan")) as trt_runner, OrtRunner(real_plan.onnx, provider="cpu") as ort_runner:
        engine, reference = trt_runner.infer(inputs), ort_runner.infer(inputs)  # 8 photos: the profile's max
    assert np.abs(engine - reference).max() <= check.worst.tolerance.atol


@pytest.mark.trt
@needs_trt
@pytest.mark.parametrize("change", ["compute_capability", "tensorrt"])
def test_plan_built_elsewhere_is_refused(real_plan: ExportResult, tmp_path: Path, change: str) -> None:
    """The sidecar names another GPU or TensorRT release than this machine's (derived from the real values,
    so that a P5000 with TensorRT 8.6.1 refuses too)."""
    from qualitynet.runtime.trt_runner import TrtRunner

    assert real_plan.file("plan") is not None
    plan = Path(shutil.copy(real_plan.file("plan"), tmp_path / "model.plan"))
    meta = ArtifactMeta.read_sidecar(real_plan.file("plan"))
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
    from qualitynet.runtime.trt_compat import same_release
    from qualitynet.runtime.trt_runner import TrtRunner

    result = export_all(varied_checkpoint, tmp_path, fp16=True, photos=photo_dir, profile=BatchProfile(1, 4, 8),
                        workspace=1024, version_compatible=True)
    assert result.file("plan") is not None and result.verifications["plan"]
    meta = ArtifactMeta.read_sidecar(result.file("plan"))
    assert meta.version_compatible is True and meta.exclude_lean_runtime is False
    lean = tensorrt_status().lean
    if lean is not None and same_release(meta.versions["tensorrt"], lean.__version__):
        with TrtRunner(result.file("plan")) as runner:
            assert runner.infer(np.zeros((3, 3, 96, 96), np.float32)).shape == (3,)
    else:
        with pytest.raises(QualityNetError, match="--allow-plan-host-code"):
            TrtRunner(result.file("plan")).activate()
