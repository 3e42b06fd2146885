"""TensorRT backend: the GPU-free logic here, the API checked against the real lean bindings and
the stubs, the runner's buffer binding and clean-up against a recording stand-in for TensorRT and
cuda-python, and the end-to-end tests marked ``trt``/``gpu`` (they skip without TensorRT and a GPU)."""

from __future__ import annotations

import ast
import ctypes
import dataclasses
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

import qualitynet.runtime as runtime_pkg
import qualitynet.runtime.gpu as gpu
import qualitynet.runtime.trt_runner as trt_runner
from qualitynet.artifact import ArtifactMeta, BatchProfile, PreprocessCfg, ScoreScale
from qualitynet.errors import QualityNetError
from qualitynet.runtime.trt_compat import (
    batch_limits,
    check_plan_compat,
    find_io_tensors,
    plan_chunks,
    same_release,
    select_runtime,
    tensorrt_cuda,
    tensorrt_status,
)
from qualitynet.runtime.trt_runner import TrtRunner

from fake_tensorrt import FakeTensorRT
from runtime_helpers import photo_paths
from trt_stubs import other_capability

RUNTIME_DIR = Path(runtime_pkg.__file__).parent
TRT_FILES = ("trt_runner.py", "trt_compat.py", "gpu.py")


def _meta(**changes: object) -> ArtifactMeta:
    meta = ArtifactMeta(
        config_name="tiny", preprocess=PreprocessCfg(height=96, width=96), score_scale=ScoreScale(1, 5),
        precision="fp16", batch_profile=BatchProfile(1, 16, 64), versions={"tensorrt": "10.13.0.35"},
        gpu_name="NVIDIA A10", compute_capability="8.6",
    )
    return dataclasses.replace(meta, **changes)  # type: ignore[arg-type]


# ---- batch planning -------------------------------------------------------------------------

@pytest.mark.parametrize(("count", "low", "high", "expected"), [
    (5, 1, 64, [(0, 5, 5)]),
    (64, 1, 64, [(0, 64, 64)]),
    (130, 1, 64, [(0, 64, 64), (64, 128, 64), (128, 130, 2)]),
    (3, 4, 16, [(0, 3, 4)]),  # below the profile's minimum: padded
    (17, 4, 8, [(0, 8, 8), (8, 16, 8), (16, 17, 4)]),
])
def test_plan_chunks(count: int, low: int, high: int, expected: list[tuple[int, int, int]]) -> None:
    chunks = plan_chunks(count, low, high)
    assert chunks == expected
    assert all(low <= run <= high and stop - start <= run for start, stop, run in chunks)
    assert sum(stop - start for start, stop, _ in chunks) == count


def test_plan_chunks_refuses_a_bad_profile() -> None:
    with pytest.raises(QualityNetError):
        plan_chunks(3, 0, 4)


# ---- plan compatibility ---------------------------------------------------------------------

def test_matching_plan_is_accepted() -> None:
    check_plan_compat(_meta(), Path("m.plan"), "10.13.0.35", "8.6", "NVIDIA A10")
    check_plan_compat(_meta(), Path("m.plan"), "10.13.0", "8.6", "NVIDIA A40")  # same arch, other board


def test_other_gpu_is_refused_with_the_rebuild_command() -> None:
    with pytest.raises(QualityNetError) as info:
        check_plan_compat(_meta(), Path("m.plan"), "10.13.0.35", "6.1", "Quadro P5000")
    message = str(info.value)
    assert "compute capability 8.6 (NVIDIA A10)" in message and "6.1 (Quadro P5000)" in message
    assert "iqa-export --fp16 model.pt" in message


def test_other_tensorrt_is_refused() -> None:
    with pytest.raises(QualityNetError, match=r"TensorRT 10\.13\.0\.35 but TensorRT 8\.6\.1 is installed"):
        check_plan_compat(_meta(), Path("m.plan"), "8.6.1", "8.6")
    with pytest.raises(QualityNetError, match="compute capability .* and it was built with TensorRT"):
        check_plan_compat(_meta(), Path("m.plan"), "11.4.0", "9.0")


def test_sidecar_without_versions_is_refused() -> None:
    with pytest.raises(QualityNetError, match="does not say"):
        check_plan_compat(_meta(versions={}), Path("m.plan"), "10.13.0", "8.6")


def test_version_compatible_plans_run_on_newer_minor_versions() -> None:
    assert same_release("10.13.0.35", "10.13.0.99") and not same_release("10.13.0", "10.14.0")
    assert same_release("10.13.0", "10.14.1", version_compatible=True)
    assert not same_release("10.13.0", "10.12.0", version_compatible=True)
    assert not same_release("10.13.0", "11.0.0", version_compatible=True)
    check_plan_compat(_meta(version_compatible=True), Path("m.plan"), "10.15.0", "8.6")
    with pytest.raises(QualityNetError, match="TensorRT 10.15.0 is installed"):  # the lean runtime: its own release
        check_plan_compat(_meta(version_compatible=True), Path("m.plan"), "10.15.0", "8.6", lean=True)
    check_plan_compat(_meta(version_compatible=True), Path("m.plan"), "10.13.0.1", "8.6", lean=True)


def test_sidecars_written_before_the_typed_fields_still_load(tmp_path: Path) -> None:
    """Older sidecars kept the version-compatibility flags in ``extra``: they load as the typed fields."""
    plan = tmp_path / "m.plan"
    record = _meta(extra={"typing": "strong"}).to_dict()
    for name in ("version_compatible", "exclude_lean_runtime"):
        del record[name]
    record["extra"] = {**record["extra"], "version_compatible": True, "exclude_lean_runtime": True}
    (tmp_path / "m.plan.json").write_text(json.dumps(record))
    meta = ArtifactMeta.read_sidecar(plan)
    assert meta.version_compatible is True and meta.exclude_lean_runtime is True
    assert meta.extra == {"typing": "strong"}
    assert ArtifactMeta.from_json(meta.to_json()) == meta  # written back with the typed fields only


# ---- which TensorRT module may load which plan -------------------------------------------------

def _full_module(version: str = "10.13.0.35") -> types.ModuleType:
    return FakeTensorRT(version).module




def test_plain_plan_needs_the_full_tensorrt() -> None:
    full, lean = _full_module(), pytest.importorskip("tensorrt_lean")
    assert select_runtime(_meta(), Path("m.plan"), full, lean) is full
    with pytest.raises(QualityNetError, match=r"refused, it was built without --version-compatible.*tensorrt_lean 11"):
        select_runtime(_meta(), Path("m.plan"), None, lean)
    with pytest.raises(QualityNetError, match="TensorRT is not installed"):
        select_runtime(_meta(), Path("m.plan"), None, None)


def test_version_compatible_plan_prefers_the_lean_runtime_of_its_release() -> None:
    full, lean = _full_module(), pytest.importorskip("tensorrt_lean")
    built_by_this_release = {"tensorrt": lean.__version__}
    for exclude in (False, True):
        flags = {"version_compatible": True, "exclude_lean_runtime": exclude}
        assert select_runtime(_meta(**flags, versions=built_by_this_release), Path("m.plan"), full, lean) is lean
        assert select_runtime(_meta(**flags), Path("m.plan"), None, lean) is lean  # check_plan_compat refuses
    # a lean runtime of another release cannot run it; the full TensorRT may (with the user's permission)
    assert select_runtime(_meta(version_compatible=True), Path("m.plan"), full, lean, allow_host_code=True) is full


def test_embedded_lean_runtime_on_the_full_tensorrt_needs_the_users_permission() -> None:
    full = _full_module()
    with pytest.raises(QualityNetError, match=r"embeds TensorRT's lean runtime.*pass --allow-plan-host-code"):
        select_runtime(_meta(version_compatible=True), Path("m.plan"), full, None)
    assert select_runtime(_meta(version_compatible=True), Path("m.plan"), full, None, allow_host_code=True) is full
    with pytest.raises(QualityNetError, match=r"--exclude-lean-runtime.*lean runtime of the version that built it"):
        select_runtime(_meta(version_compatible=True, exclude_lean_runtime=True), Path("m.plan"), full, None,
                       allow_host_code=True)


def test_cuda_of_the_installed_tensorrt_wheels() -> None:
    """The real lean runtime installed here is tensorrt-lean-cu13; numpy is no TensorRT."""
    pytest.importorskip("tensorrt_lean")
    assert tensorrt_cuda("tensorrt_lean") == "13" and tensorrt_cuda("tensorrt_lean_bindings") == "13"
    assert tensorrt_cuda("numpy") is None


# ---- tensor discovery on an engine-like object -----------------------------------------------

class _Mode:
    INPUT, OUTPUT = "in", "out"


class _FakeEngine:
    def __init__(self, tensors: dict[str, str]) -> None:
        self.tensors = tensors
        self.num_io_tensors = len(tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> str:
        return self.tensors[name]

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        return [(2, 3, 96, 96), (16, 3, 96, 96), (32, 3, 96, 96)]


def test_find_io_tensors_by_name_based_api() -> None:
    engine = _FakeEngine({"image": _Mode.INPUT, "features": _Mode.OUTPUT, "quality": _Mode.OUTPUT})
    assert find_io_tensors(engine, _Mode, ("image", "quality")) == ("image", "quality")  # type: ignore[arg-type]
    assert find_io_tensors(engine, _Mode) == ("image", "features")  # type: ignore[arg-type]
    assert batch_limits(engine, "image") == (2, 32)  # type: ignore[arg-type]
    with pytest.raises(QualityNetError, match="one image input"):
        find_io_tensors(_FakeEngine({"a": _Mode.INPUT, "b": _Mode.INPUT}), _Mode)  # type: ignore[arg-type]


# ---- against the real lean runtime bindings and the stubs ------------------------------------

def test_tensorrt_status_finds_the_lean_runtime_beside_the_stubs() -> None:
    """Here the stubs' bare 'tensorrt' is no TensorRT, and the real lean runtime is one."""
    lean = pytest.importorskip("tensorrt_lean")
    status = tensorrt_status()
    assert status.lean is not None and status.lean.__name__.startswith("tensorrt_lean") and hasattr(lean, "Runtime")
    if status.full is None:
        assert status.flavour == "lean" and status.builder_version is None and status.full_missing
    vc_plan = _meta(versions={"tensorrt": status.lean.__version__}, version_compatible=True)
    assert status.runtime_for(vc_plan, Path("m.plan")) is status.lean


def _used_attributes(source: str, names: set[str]) -> set[tuple[str, str]]:
    """``(variable, attribute)`` for every ``variable.attribute`` read in the source."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in names:
            found.add((node.value.id, node.attr))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                node.value.attr in names and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
            found.add((node.value.attr, node.attr))
    return found


def _cudart() -> Any:
    """cuda-python's runtime module as the toolkit finds it (``cuda.cudart`` before 12.6.1), or a skip."""
    try:
        return gpu.cudart()
    except QualityNetError as exc:
        pytest.skip(str(exc))


def test_every_tensorrt_and_cuda_name_used_exists_in_the_real_bindings() -> None:
    """Names read off ``trt``, ``runtime``, ``engine``, ``context`` and ``rt`` in the backend exist."""
    trt = pytest.importorskip("tensorrt_lean")
    cudart = _cudart()
    owners = {"trt": trt, "runtime": trt.Runtime, "engine": trt.ICudaEngine, "context": trt.IExecutionContext,
              "_engine": trt.ICudaEngine, "_context": trt.IExecutionContext, "rt": cudart}
    used = set()
    for name in TRT_FILES:
        used |= _used_attributes((RUNTIME_DIR / name).read_text(), set(owners))
    missing = sorted(f"{var}.{attr}" for var, attr in used if not hasattr(owners[var], attr))
    assert not missing, f"not in tensorrt_lean {trt.__version__} / cuda.bindings: {missing}"
    must_use = {("context", "execute_async_v3"), ("context", "set_input_shape"), ("context", "set_tensor_address"),
                ("engine", "get_tensor_name"), ("engine", "get_tensor_mode"), ("engine", "get_tensor_profile_shape"),
                ("rt", "cudaMallocHost"), ("rt", "cudaMemcpyAsync"), ("rt", "cudaStreamSynchronize"),
                ("runtime", "engine_host_code_allowed"), ("rt", "cudaDriverGetVersion")}
    assert must_use <= used
    assert trt.Logger.WARNING is not None and trt.TensorIOMode.INPUT != trt.TensorIOMode.OUTPUT
    assert np.dtype(trt.nptype(trt.DataType.FLOAT)) == np.float32


# ---- the runner against a recording stand-in for TensorRT and cuda-python ---------------------

class _FakeCudart:
    """cuda-python's runtime calls the runner makes: pinned host memory is real (ctypes), device memory
    is a dict of byte arrays, copies move bytes. After a failed call every call fails (a sticky error)."""

    class cudaError_t:  # noqa: N801 (cuda-python's names)
        cudaSuccess, cudaErrorIllegalAddress = 0, 700

    class cudaMemcpyKind:  # noqa: N801
        cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost = 1, 2

    def __init__(self) -> None:
        self.host: dict[int, Any] = {}
        self.device: dict[int, bytearray] = {}
        self.freed: list[int] = []
        self.streams: list[int] = []
        self.fail_sync = self.sticky = False

    def _status(self) -> int:
        return self.cudaError_t.cudaErrorIllegalAddress if self.sticky else 0

    def cudaGetErrorString(self, error: int) -> tuple[int, bytes]:
        return 0, b"an illegal memory access was encountered"

    def cudaGetDeviceCount(self) -> tuple[int, int]:
        return 0, 1

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, Any]:
        return 0, types.SimpleNamespace(name=b"Test GPU\0", major=8, minor=6)

    def cudaSetDevice(self, device: int) -> tuple[int]:
        return (0,)

    def cudaStreamCreate(self) -> tuple[int, int]:
        self.streams.append(7)
        return 0, 7

    def cudaStreamSynchronize(self, stream: int) -> tuple[int]:
        self.sticky = self.sticky or self.fail_sync
        return (self._status(),)

    def cudaStreamDestroy(self, stream: int) -> tuple[int]:
        self.streams.remove(stream)
        return (self._status(),)

    def cudaMallocHost(self, size: int) -> tuple[int, int]:
        buffer = ctypes.create_string_buffer(size)
        self.host[ctypes.addressof(buffer)] = buffer
        return 0, ctypes.addressof(buffer)

    def cudaMalloc(self, size: int) -> tuple[int, int]:
        pointer = 0x1000 * (len(self.device) + 1)
        self.device[pointer] = bytearray(size)
        return 0, pointer

    def cudaMemcpyAsync(self, dst: int, src: int, size: int, kind: int, stream: int) -> tuple[int]:
        if kind == self.cudaMemcpyKind.cudaMemcpyHostToDevice:
            self.device[dst][:size] = ctypes.string_at(src, size)
        else:
            ctypes.memmove(dst, bytes(self.device[src][:size]), size)
        return (0,)

    def cudaFree(self, pointer: int) -> tuple[int]:
        self.freed.append(pointer)
        del self.device[pointer]
        return (self._status(),)

    def cudaFreeHost(self, pointer: int) -> tuple[int]:
        self.freed.append(pointer)
        del self.host[pointer]
        return (self._status(),)


@pytest.fixture()
def fake_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``make(outputs, **flags)``: a plan whose sidecar has these fields, loaded by the stand-ins; returns
    (plan, cuda, the TensorRT stand-in). The lean runtime is hidden so that the stand-in is the only TensorRT."""

    def make(outputs: tuple[str, ...] = ("quality",), **flags: Any) -> tuple[Path, _FakeCudart, FakeTensorRT]:
        cuda = _FakeCudart()
        fake = FakeTensorRT("10.13.0.35", outputs=outputs, device=cuda.device)
        monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
        for lean in ("tensorrt_lean", "tensorrt_lean_bindings"):
            monkeypatch.setitem(sys.modules, lean, None)
        monkeypatch.setattr(gpu, "cudart", lambda: cuda)
        monkeypatch.setattr(trt_runner, "cudart", lambda: cuda)
        plan = tmp_path / "model.plan"
        plan.write_bytes(b"plan")
        _meta(**flags).write_sidecar(plan)
        return plan, cuda, fake

    return make


def test_every_output_gets_a_buffer_and_the_score_output_is_read(fake_plan: Any) -> None:
    plan, cuda, fake = fake_plan(("features", "quality", "logits"))
    batch = np.random.default_rng(0).random((11, 3, 96, 96), dtype=np.float32)  # 8 + 3: two runs
    with TrtRunner(plan) as runner:
        scores = runner.infer(batch)
        assert len(cuda.device) == 4  # the input and the three outputs
    assert fake.values("unbound") == []
    np.testing.assert_allclose(scores, batch.reshape(11, -1).mean(axis=1), rtol=1e-6)
    assert not cuda.device and not cuda.host and not cuda.streams  # all freed


def test_deactivate_frees_everything_after_a_sticky_cuda_error(fake_plan: Any) -> None:
    plan, cuda, _ = fake_plan()
    runner = TrtRunner(plan)
    runner.activate()
    runner.infer(np.zeros((2, 3, 96, 96), np.float32))
    allocations = len(cuda.device) + len(cuda.host)
    cuda.fail_sync = True
    with pytest.raises(QualityNetError, match="cudaErrorIllegalAddress|700"):
        runner.deactivate()
    assert not runner.is_active and len(cuda.freed) == allocations == 4
    assert not cuda.device and not cuda.host and not cuda.streams
    runner.deactivate()  # idempotent: nothing left to free


def test_embedded_lean_runtime_runs_on_the_full_tensorrt_only_when_allowed(fake_plan: Any) -> None:
    plan, _, fake = fake_plan(version_compatible=True)
    with pytest.raises(QualityNetError, match="--allow-plan-host-code"):
        TrtRunner(plan).activate()
    assert not fake.values("host_code")  # refused before deserialising
    with TrtRunner(plan, allow_host_code=True) as runner:
        assert runner.infer(np.ones((1, 3, 96, 96), np.float32)) == pytest.approx([1.0])
    assert fake.values("host_code") == [True]


# ---- no GPU here: clean errors, no crash -------------------------------------------------------

def test_plan_without_sidecar_names_the_missing_file(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(QualityNetError, match="sidecar model.plan.json is missing"):
        TrtRunner(plan).activate()


def _cuda_device_count() -> int:
    try:
        return int(gpu.cuda_call(gpu.cudart().cudaGetDeviceCount()))
    except QualityNetError:
        return 0


def _full_tensorrt() -> bool:
    return tensorrt_status().full is not None


requires_trt = pytest.mark.skipif(
    not (_full_tensorrt() and _cuda_device_count()),
    reason="needs the full TensorRT (builder, for iqa-export) and a CUDA GPU; neither is on this machine",
)


@pytest.mark.skipif(_cuda_device_count() > 0, reason="a GPU is present; the GPU tests cover this")
def test_plan_on_a_machine_without_gpu_is_a_clean_error(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    _meta(version_compatible=True).write_sidecar(plan)  # a plan the lean runtime installed here may load
    with pytest.raises(QualityNetError, match="no usable CUDA GPU"):
        TrtRunner(plan).activate()


@pytest.mark.skipif(_full_tensorrt(), reason="the full TensorRT is installed; this checks a lean-only machine")
def test_plain_plan_on_a_lean_only_machine_is_refused_before_deserialising(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt_lean")
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    _meta().write_sidecar(plan)
    with pytest.raises(QualityNetError, match="built without --version-compatible"):
        TrtRunner(plan).activate()


# ---- real TensorRT on a GPU (skipped here) -----------------------------------------------------

@pytest.fixture(scope="module")
def plan(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("plan")
    checkpoint = shutil.copy(tiny_checkpoint, folder / "model.pt")
    exporter = shutil.which("iqa-export") or str(Path(sys.executable).parent / "iqa-export")
    subprocess.run([exporter, "--fp16", str(checkpoint), "--batch", "1:8:16"], check=True, cwd=folder)
    return folder / "model.plan"


@pytest.mark.gpu
@pytest.mark.trt
@requires_trt
def test_trt_scores_match_pytorch_split_and_partial_batches(plan: Path, photo_dir: Path,
                                                            torch_reference: tuple[np.ndarray, float]) -> None:
    from qualitynet.export import TOLERANCES
    from qualitynet.runtime import Scorer

    paths = photo_paths(photo_dir) * 5  # 40 images: > the profile's max 16, and a partial last batch
    with Scorer(plan, batch_size=40, workers=2) as scorer:
        records = list(scorer.score_paths(paths))
        unit = scorer.meta.score_scale.to_unit(np.array([r.score for r in records]))
        batch = np.concatenate([scorer.preprocess(Image.open(p)) for p in paths[:3]])
        np.testing.assert_allclose(scorer.score_arrays(batch), [r.score for r in records[:3]], atol=1e-5)
    reference, floor = torch_reference
    tolerance = TOLERANCES["fp16"].widened(floor)  # the export's rule for FP16 vs PyTorch
    error = np.abs(unit - np.tile(reference, 5))
    assert not ((error > tolerance.atol) & (error > tolerance.rtol * np.abs(np.tile(reference, 5)))).any()
    assert spearmanr(unit[: len(reference)], reference).statistic >= tolerance.min_srocc


@pytest.mark.gpu
@pytest.mark.trt
@requires_trt
def test_trt_runner_frees_gpu_memory(plan: Path) -> None:
    free_before, _ = gpu.cuda_call(gpu.cudart().cudaMemGetInfo())
    for _ in range(3):
        with TrtRunner(plan) as runner:
            runner.infer(np.zeros((16, 3, 96, 96), np.float32))
    assert gpu.cuda_call(gpu.cudart().cudaMemGetInfo())[0] >= free_before - 64 * 2**20


@pytest.mark.gpu
@pytest.mark.trt
@requires_trt
def test_plan_for_another_gpu_is_refused(plan: Path, tmp_path: Path) -> None:
    moved = shutil.copy(plan, tmp_path / "model.plan")
    record = json.loads(Path(str(plan) + ".json").read_text())
    record["compute_capability"] = other_capability(record["compute_capability"])  # a P5000's plan too
    Path(str(moved) + ".json").write_text(json.dumps(record))
    with pytest.raises(QualityNetError, match="iqa-export --fp16"):
        TrtRunner(moved).activate()
