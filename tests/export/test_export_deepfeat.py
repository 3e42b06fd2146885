"""The deep-features + Gaussian-process model through iqa-export (ONNX, FP16, INT8 with their gates),
iqa-run and iqa-bench: one graph with the backbone, the flips, the kernel and the MOS mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import Result
from int8_cli import int8_export
from mos_scoring import assert_iqa_run_scores_as_torch

from qualitynet.bench.run import BenchSettings, run_bench
from qualitynet.export import export_all, load_photos
from qualitynet.export.fp16 import convert_fp16, fp32_tail
from qualitynet.export.onnx import read_meta
from qualitynet.runtime.ort_runner import OrtRunner
from qualitynet.trainer.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def int8_cli(deepfeat_checkpoint: Path, photo_dir: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> tuple[Result, Path]:
    """``iqa-export --int8`` of a copy of the fitted checkpoint in a folder of its own, with the default gates."""
    return int8_export(deepfeat_checkpoint, tmp_path_factory.mktemp("deepfeat-int8"), photo_dir)


def test_export_cli_with_int8_passes_the_gates(int8_cli: tuple[Result, Path]) -> None:
    result, checkpoint = int8_cli
    assert result.exit_code == 0, result.output
    assert "model.onnx: built" in result.output and "FAILED" not in result.output
    for name in ("model.onnx", "model.int8.onnx", "model.int8.trt.onnx"):
        assert (checkpoint.parent / name).is_file()
    report = json.loads((checkpoint.parent / "model.export.json").read_text())
    assert report["int8"]["cpu"]["passed"] and report["int8"]["tensorrt"]["passed"]


def test_onnx_agrees_with_torch(deepfeat_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    result = export_all(deepfeat_checkpoint, tmp_path, fp16=True, photos=photo_dir, require_tensorrt=False)
    fp32, fp16 = result.verifications["onnx"], result.verifications["fp16_onnx"]
    assert fp32 and fp32.worst.max_abs < 1e-4 and fp32.worst.srocc > 0.999
    assert fp16 and fp16.worst.srocc >= 0.95
    graph = onnx.load(str(result.onnx))
    ops = {node.op_type for node in graph.graph.node}
    assert {"MatMul", "Sqrt", "Exp", "Slice"} <= ops  # the kernel and the flip are in the graph
    meta = read_meta(graph)
    checkpoint = load_checkpoint(deepfeat_checkpoint)
    assert meta.config_name == "deepfeat-test" and meta.mos_mapping == checkpoint.mos_mapping
    assert meta.extra["model_config"]["factory"] == "qualitynet.trainer.deepfeat:deepfeat_gpr"


def test_fp16_keeps_the_gaussian_process_in_fp32(deepfeat_onnx: Path, photo_dir: Path, tmp_path: Path) -> None:
    """Its mean sums kernel values near 1 times weights summing to hundreds in absolute value: computed in FP16
    (or from FP16-rounded intermediates or constants) it moved scores by 0.004-0.16 on the unit scale (issue 24);
    kept FP32, 0.002-0.003."""
    fp16_path = convert_fp16(deepfeat_onnx, tmp_path / "model.fp16.onnx")
    model = onnx.shape_inference.infer_shapes(onnx.load(str(fp16_path)))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    types |= {init.name: init.data_type for init in model.graph.initializer}
    tail = set(fp32_tail(onnx.load(str(deepfeat_onnx))))
    gp = [node for node in model.graph.node if node.name in tail and node.name.startswith("/model/regressor/")]
    assert {"MatMul", "Sqrt", "Exp"} <= {node.op_type for node in gp}
    fp16_inputs = [(node.name, name) for node in gp for name in node.input
                   if types.get(name) == onnx.TensorProto.FLOAT16]
    assert not fp16_inputs  # every input of every GP node is FP32: no FP16 round trip on the way
    assert read_meta(model).extra["fp16_fp32_tail"] == fp32_tail(onnx.load(str(deepfeat_onnx)))
    inputs, _ = load_photos(photo_dir, read_meta(model).preprocess)
    with OrtRunner(deepfeat_onnx, provider="cpu") as fp32, OrtRunner(fp16_path, provider="cpu") as fp16:
        assert np.abs(fp16.infer(inputs) - fp32.infer(inputs)).max() < 5e-3  # the FP16 gate: the backbone's share


def test_iqa_run_scores_on_the_mos_scale_as_torch_does(deepfeat_onnx: Path, deepfeat_checkpoint: Path,
                                                      photo_dir: Path) -> None:
    got = assert_iqa_run_scores_as_torch(deepfeat_onnx, deepfeat_checkpoint, photo_dir)
    assert len(got) == 8


def test_bench_measures_model_only_and_end_to_end(int8_cli: tuple[Result, Path], photo_dir: Path) -> None:
    settings = BenchSettings(batch_sizes=(2,), warmup=1, iters=2, images=photo_dir, e2e_batch_size=4,
                             e2e_workers=1, quiet=True, device="cpu", e2e_rounds=1)
    report = run_bench(int8_cli[1], settings)
    model_only = {(p.backend, p.precision): p for p in report.points if p.mode == "model-only"}
    assert {("torch-eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")} <= set(model_only)
    assert model_only["onnxruntime", "fp32"].max_abs_error < 1e-3 and model_only["onnxruntime", "fp32"].srocc > 0.99
    assert any(p.mode != "model-only" for p in report.points)
    assert json.dumps(report.to_dict(), allow_nan=False)
