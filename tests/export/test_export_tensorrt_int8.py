"""The INT8 TensorRT build, checked where no GPU is present (as for FP16).

1. The recording stand-in for ``tensorrt`` (``tests/fake_tensorrt.py``): the Q/DQ model on every version, the INT8 flag
   only where weak typing still exists (8.6-10.11), strong typing on 10.12+/11, and on 8.6
   with compute capability 6.1 the fall-back to the entropy calibrator when the explicit
   build is refused, with its calibration cache.
2. The real build, marked ``trt``: runs where TensorRT's builder and a GPU exist.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import qualitynet.export.tensorrt as trt_export
import qualitynet.export.trt_calibration as trt_calibration
from qualitynet.artifact import ArtifactMeta, BatchProfile
from qualitynet.export import export_all
from qualitynet.export.int8 import Int8Settings
from qualitynet.export.onnx import read_meta, save_with_meta
from qualitynet.export.tensorrt import BuildSettings, build_int8_engine, gpu_info
from qualitynet.runtime.trt_compat import INSTALL_HINT, tensorrt_status

from fake_tensorrt import FakeTensorRT


class _DeviceBuffer:
    """Host memory standing in for cuda-python's pinned/device pair (no GPU here)."""

    def __init__(self, count: int, dtype: np.dtype[Any]) -> None:
        self.host = np.zeros(count, dtype)
        self.device = 1234
        self.copies = 0

    def to_device(self, count: int, stream: Any) -> None:
        self.copies += 1

    def free(self) -> None:
        pass


@pytest.fixture()
def qdq_models(tmp_path: Path) -> tuple[Path, Path]:
    """An FP32 and a 'Q/DQ' ONNX file with artifact records (the stand-in only reads their names)."""
    from test_export_int8 import _small_onnx

    fp32 = _small_onnx(tmp_path / "model.onnx", outlier=1.0)
    qdq = tmp_path / "model.int8.trt.onnx"
    import onnx

    model = onnx.load(str(fp32))
    meta = read_meta(model)
    meta.precision = "int8"
    save_with_meta(model, meta, qdq)
    return fp32, qdq


def _build(monkeypatch: pytest.MonkeyPatch, models: tuple[Path, Path], tmp_path: Path, version: str,
           capability: str = "8.9", refuse_qdq: bool = False) -> tuple[ArtifactMeta, FakeTensorRT]:
    standin = FakeTensorRT(version, refuse=(models[1].name,) if refuse_qdq else ())
    monkeypatch.setitem(sys.modules, "tensorrt", standin.module)
    monkeypatch.setattr(trt_export, "gpu_info", lambda device=0: ("Test GPU", capability))
    monkeypatch.setattr(trt_export, "cuda_versions", lambda: {"cuda_driver": "12.4", "tensorrt_cuda": "12"})
    import qualitynet.runtime.gpu as gpu

    monkeypatch.setattr(gpu, "HostDeviceBuffer", _DeviceBuffer)
    monkeypatch.setattr(gpu, "cudart", lambda: types.SimpleNamespace(cudaStreamSynchronize=lambda s: (0,)))
    monkeypatch.setattr(gpu, "cuda_call", lambda result: None)
    calibration = np.random.default_rng(0).standard_normal((20, 3, 32, 32)).astype(np.float32)
    meta = build_int8_engine(models[0], models[1], tmp_path / "model.int8.plan", calibration,
                             BuildSettings(BatchProfile(1, 8, 16)))
    return meta, standin


@pytest.mark.parametrize(("version", "network_flags", "builder_flags", "typing"), [
    ("8.6.1", 1 << 0, ["INT8"], "weak"),
    ("10.8.0.43", 0, ["INT8"], "weak"),
    ("10.13.0.35", 1 << 1, [], "strong"),  # BuilderFlag.INT8 deprecated; Q/DQ set the precision
    ("11.4.0.106", 0, [], "strong"),  # the flag and the calibrators are gone
])
def test_each_version_builds_the_qdq_model(monkeypatch: pytest.MonkeyPatch, qdq_models: tuple[Path, Path],
                                           tmp_path: Path, version: str, network_flags: int,
                                           builder_flags: list[str], typing: str) -> None:
    meta, standin = _build(monkeypatch, qdq_models, tmp_path, version)
    assert standin.values("parsed") == ["model.int8.trt.onnx"]
    assert standin.values("network_flags") == [network_flags] and standin.values("set_flag") == builder_flags
    assert standin.values("calibrator") == []
    assert (tmp_path / "model.int8.plan").read_bytes() == b"serialized-plan"
    sidecar = ArtifactMeta.read_sidecar(tmp_path / "model.int8.plan")
    assert sidecar == meta and meta.precision == "int8" and meta.extra["quantization"] == "explicit Q/DQ"
    assert meta.extra["typing"] == typing and meta.versions["tensorrt"] == version
    assert meta.batch_profile == BatchProfile(1, 8, 16) and meta.compute_capability == "8.9"


def test_pascal_falls_back_to_the_entropy_calibrator(monkeypatch: pytest.MonkeyPatch, qdq_models: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    meta, standin = _build(monkeypatch, qdq_models, tmp_path, "8.6.1", capability="6.1", refuse_qdq=True)
    assert standin.values("parsed") == ["model.int8.trt.onnx", "model.onnx"]  # explicit refused, then FP32
    assert standin.values("set_flag") == ["INT8", "INT8"]
    assert standin.values("calibrator") == ["EntropyCalibrator"]
    assert len(standin.values("calibration_profile")) == 1
    assert standin.values("set_shape")[-1] == ("image", ((8, 3, 32, 32),) * 3)  # the calibration profile: full batches
    assert (tmp_path / "model.int8.plan").read_bytes() == b"calibrated-plan"
    assert (tmp_path / "model.int8.plan.calib").read_bytes() == b"calibration-table"
    assert meta.extra["quantization"].startswith("implicit, entropy calibrator 2")
    assert meta.extra["source_onnx"] == "model.onnx" and meta.compute_capability == "6.1"
    assert meta.extra["layer_precisions"] == {"layers": 2, "int8_output_layers": 1}
    assert "gate" not in meta.extra["int8"]  # the Q/DQ graph's gate figures are not this engine's
    assert meta.extra["int8"]["calibration"]["method"] == "entropy2"


def test_refused_qdq_elsewhere_is_an_error(monkeypatch: pytest.MonkeyPatch, qdq_models: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    from qualitynet.errors import QualityNetError

    with pytest.raises(QualityNetError, match="failed to build an INT8 engine"):
        _build(monkeypatch, qdq_models, tmp_path, "10.8.0.43", capability="8.9", refuse_qdq=True)


def test_entropy_calibrator_feeds_full_batches_and_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    standin = FakeTensorRT("8.6.1")
    monkeypatch.setitem(sys.modules, "tensorrt", standin.module)
    import qualitynet.runtime.gpu as gpu

    monkeypatch.setattr(gpu, "HostDeviceBuffer", _DeviceBuffer)
    monkeypatch.setattr(gpu, "cudart", lambda: types.SimpleNamespace(cudaStreamSynchronize=lambda s: (0,)))
    monkeypatch.setattr(gpu, "cuda_call", lambda result: None)
    inputs = np.arange(20 * 3 * 2 * 2, dtype=np.float32).reshape(20, 3, 2, 2)
    cache = tmp_path / "model.int8.plan.calib"
    calibrator: Any = trt_calibration.entropy_calibrator(inputs, cache, {"checkpoint_sha256": "a" * 64})
    assert calibrator.get_batch_size() == trt_calibration.CALIBRATION_BATCH
    assert calibrator.read_calibration_cache() is None
    first = calibrator.get_batch(["image"])
    assert first == [1234] and np.array_equal(calibrator.buffer.host, inputs[:8].ravel())
    assert calibrator.get_batch(["image"]) == [1234]
    assert calibrator.get_batch(["image"]) == []  # 4 left: not a full batch
    calibrator.write_calibration_cache(b"table")
    assert calibrator.read_calibration_cache() == b"table"


def _trt_missing() -> str | None:
    if tensorrt_status().builder_version is None:
        return f"TensorRT's builder is not installed ({INSTALL_HINT})"
    try:
        gpu_info()
    except Exception as exc:  # noqa: BLE001 - any reason there is no GPU
        return f"no usable GPU: {exc}"
    return None


@pytest.mark.trt
@pytest.mark.skipif(_trt_missing() is not None, reason=str(_trt_missing()))
def test_real_int8_engine_passes_the_gate(varied_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    checkpoint = Path(shutil.copy(varied_checkpoint, tmp_path / "model.pt"))
    result = export_all(checkpoint, tmp_path, int8=Int8Settings(count=16, min_srocc=-1.0, remedy=False),
                        profile=BatchProfile(1, 8, 16), workspace=1024)
    assert result.file("int8_plan") is not None and result.file("int8_plan").is_file()
    meta = ArtifactMeta.read_sidecar(result.file("int8_plan"))
    assert meta.precision == "int8" and meta.gpu_name
    gate = result.int8["tensorrt_plan"]
    assert gate.figures()["photos"] == 48 and np.isfinite(gate.figures()["max_abs_mos"])
