"""``iqa-export --triton-repo``: a Triton model repository whose configs parse with Triton's own schema."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from qualitynet.artifact import ArtifactMeta, BatchProfile
from qualitynet.errors import QualityNetError
from qualitynet.export.cli import main
from qualitynet.export.onnx import read_meta
from qualitynet.export.triton import ARTIFACT_PARAMETER, check_config, write_triton_repo
from qualitynet.export.types import ExportResult

pytest.importorskip("tritonclient.grpc", reason="Triton's schema comes with tritonclient[grpc] (the serve extra)")


def _kind(value: int) -> str:
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2.ModelInstanceGroup.Kind.Name(value)


def test_cli_writes_a_repository_that_parses(varied_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["--out-dir", str(tmp_path / "out"), "--photos", str(photo_dir),
                                       "--batch", "1:8:32", "--triton-repo", str(repo), str(varied_checkpoint)])
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == [
        "qualitynet/1/model.onnx", "qualitynet/config.pbtxt"]
    assert (repo / "qualitynet/1/model.onnx").read_bytes() == (tmp_path / "out/model.onnx").read_bytes()
    config = check_config(repo / "qualitynet" / "config.pbtxt")
    meta = ArtifactMeta.from_json(config.parameters[ARTIFACT_PARAMETER].string_value)  # type: ignore[attr-defined]
    size = meta.preprocess.height
    assert config.name == "qualitynet" and config.platform == "onnxruntime_onnx"  # type: ignore[attr-defined]
    assert config.max_batch_size == 32  # type: ignore[attr-defined]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 32]  # type: ignore[attr-defined]
    (inp,), (out,) = config.input, config.output  # type: ignore[attr-defined]
    assert (inp.name, list(inp.dims), out.name, list(out.dims)) == ("image", [3, size, size], "quality", [1])
    assert _kind(config.instance_group[0].kind) == "KIND_AUTO"  # type: ignore[attr-defined]
    assert meta == read_meta(onnx.load(str(tmp_path / "out/model.onnx")))


def test_fp16_without_tensorrt_still_writes_the_onnx_repository(varied_checkpoint: Path, photo_dir: Path,
                                                                 tmp_path: Path) -> None:
    """The engine cannot be built here, yet model.onnx is written and verified: the repository gets it,
    the missing TensorRT model is explained, and the exit status still says the engine failed."""
    from qualitynet.runtime.trt_compat import tensorrt_status

    if tensorrt_status().full is not None:
        pytest.skip("TensorRT is installed here: the engine would be built")
    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["--fp16", "--out-dir", str(tmp_path / "out"), "--photos", str(photo_dir),
                                       "--triton-repo", str(repo), str(varied_checkpoint)])
    assert result.exit_code == 1, result.output
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file()) == [
        "qualitynet/1/model.onnx", "qualitynet/config.pbtxt"]
    check_config(repo / "qualitynet" / "config.pbtxt")
    assert "no qualitynet_trt model, since no TensorRT engine was built" in result.output
    assert "no TensorRT engine built" in result.output.splitlines()[-1]


def test_plan_model_uses_its_build_profile_and_gpu(tiny_export: ExportResult, tmp_path: Path) -> None:
    # The config is written from the plan's sidecar; the plan's bytes are only copied, so a file
    # standing in for an engine (none can be built without a GPU) checks everything written here.
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine bytes")
    meta = read_meta(onnx.load(str(tiny_export.onnx)))
    meta.batch_profile, meta.precision, meta.gpu_name = BatchProfile(1, 4, 16), "fp16", "NVIDIA H100"
    meta.write_sidecar(plan)
    written = write_triton_repo(tmp_path / "repo", tiny_export.onnx, plan, name="iqa")
    assert [p.parent.name for p in written] == ["iqa", "iqa_trt"]
    config = check_config(written[1])
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 16  # type: ignore[attr-defined]
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 16]  # type: ignore[attr-defined]
    assert _kind(config.instance_group[0].kind) == "KIND_GPU"  # type: ignore[attr-defined]
    assert (tmp_path / "repo/iqa_trt/1/model.plan.json").is_file()
    record = ArtifactMeta.from_json(config.parameters[ARTIFACT_PARAMETER].string_value)  # type: ignore[attr-defined]
    assert record.gpu_name == "NVIDIA H100" and record.precision == "fp16"


def test_a_broken_config_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "config.pbtxt"
    bad.write_text('name: "x"\nmax_batch_size: "many"\n')
    with pytest.raises(QualityNetError, match="not a valid Triton model config"):
        check_config(bad)
