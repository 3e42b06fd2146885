"""TensorRT backend: the GPU-free logic here, the API checked against the real lean bindings and
the stubs, and the end-to-end tests marked ``trt``/``gpu`` (they skip without TensorRT and a GPU)."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

import qualitynet.runtime as runtime_pkg
from qualitynet.artifact import ArtifactMeta, BatchProfile, PreprocessCfg, ScoreScale
from qualitynet.errors import QualityNetError
from qualitynet.runtime.trt_compat import (
    batch_limits,
    check_plan_compat,
    find_io_tensors,
    import_tensorrt,
    plan_chunks,
    same_release,
)
from qualitynet.runtime.trt_runner import TrtRunner

from runtime_helpers import photo_paths
from trt_stubs import mypy_errors

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
    check_plan_compat(_meta(extra={"version_compatible": True}), Path("m.plan"), "10.15.0", "8.6")


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

def test_import_tensorrt_falls_back_to_the_lean_runtime() -> None:
    module = import_tensorrt()
    assert hasattr(module, "Runtime") and hasattr(module, "__version__")
    if module.__name__ != "tensorrt":
        assert module.__name__.startswith("tensorrt_lean")


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


def test_every_tensorrt_and_cuda_name_used_exists_in_the_real_bindings() -> None:
    """Names read off ``trt``, ``runtime``, ``engine``, ``context`` and ``rt`` in the backend exist."""
    trt = pytest.importorskip("tensorrt_lean")
    cudart = pytest.importorskip("cuda.bindings.runtime")
    owners = {"trt": trt, "runtime": trt.Runtime, "engine": trt.ICudaEngine, "context": trt.IExecutionContext,
              "_engine": trt.ICudaEngine, "_context": trt.IExecutionContext, "rt": cudart}
    used = set()
    for name in TRT_FILES:
        used |= _used_attributes((RUNTIME_DIR / name).read_text(), set(owners))
    missing = sorted(f"{var}.{attr}" for var, attr in used if not hasattr(owners[var], attr))
    assert not missing, f"not in tensorrt_lean {trt.__version__} / cuda.bindings: {missing}"
    must_use = {("context", "execute_async_v3"), ("context", "set_input_shape"), ("context", "set_tensor_address"),
                ("engine", "get_tensor_name"), ("engine", "get_tensor_mode"), ("engine", "get_tensor_profile_shape"),
                ("rt", "cudaMallocHost"), ("rt", "cudaMemcpyAsync"), ("rt", "cudaStreamSynchronize")}
    assert must_use <= used
    assert trt.Logger.WARNING is not None and trt.TensorIOMode.INPUT != trt.TensorIOMode.OUTPUT
    assert np.dtype(trt.nptype(trt.DataType.FLOAT)) == np.float32


def test_no_bindings_api() -> None:
    """The v2/bindings API, removed in TensorRT 10, must not appear."""
    source = "\n".join((RUNTIME_DIR / name).read_text() for name in TRT_FILES)
    for removed in ("get_binding", "binding_is_input", "execute_v2", "execute_async_v2", "num_bindings",
                    "max_batch_size"):
        assert removed not in source


def test_runtime_type_checks_against_tensorrt_stubs(tmp_path: Path) -> None:
    """mypy over the whole runtime, the TensorRT backend against tensorrt-stubs."""
    files = [str(p.relative_to(RUNTIME_DIR.parent)) for p in sorted(RUNTIME_DIR.glob("*.py"))]
    errors, output = mypy_errors(files, tmp_path)
    assert errors == [], output


# ---- no GPU here: clean errors, no crash -------------------------------------------------------

def test_plan_without_sidecar_names_the_missing_file(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    with pytest.raises(QualityNetError, match="sidecar model.plan.json is missing"):
        TrtRunner(plan).activate()


def _cuda_device_count() -> int:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return 0
    error, count = cudart.cudaGetDeviceCount()
    return count if error == cudart.cudaError_t.cudaSuccess else 0


def _full_tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


requires_trt = pytest.mark.skipif(
    not (_full_tensorrt() and _cuda_device_count()),
    reason="needs the full TensorRT (builder, for iqa-export) and a CUDA GPU; neither is on this machine",
)


@pytest.mark.skipif(_cuda_device_count() > 0, reason="a GPU is present; the GPU tests cover this")
def test_plan_on_a_machine_without_gpu_is_a_clean_error(tmp_path: Path) -> None:
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"\0" * 16)
    _meta().write_sidecar(plan)
    with pytest.raises(QualityNetError, match="no usable CUDA GPU"):
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
        batch = np.stack([scorer.preprocess(Image.open(p)) for p in paths[:3]])
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
    from cuda.bindings import runtime as cudart

    free_before = cudart.cudaMemGetInfo()[1]
    for _ in range(3):
        with TrtRunner(plan) as runner:
            runner.infer(np.zeros((16, 3, 96, 96), np.float32))
    assert cudart.cudaMemGetInfo()[1] >= free_before - 64 * 2**20


@pytest.mark.gpu
@pytest.mark.trt
@requires_trt
def test_plan_for_another_gpu_is_refused(plan: Path, tmp_path: Path) -> None:
    moved = shutil.copy(plan, tmp_path / "model.plan")
    record = json.loads(Path(str(plan) + ".json").read_text())
    record["compute_capability"] = "6.1"
    Path(str(moved) + ".json").write_text(json.dumps(record))
    with pytest.raises(QualityNetError, match="iqa-export --fp16"):
        TrtRunner(moved).activate()
