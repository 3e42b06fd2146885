"""The deep-features + Gaussian-process model through iqa-export (ONNX, FP16, INT8 with their gates),
iqa-run and iqa-bench: one graph with the backbone, the flips, the kernel and the MOS mapping."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from int8_cli import int8_export
from mos_scoring import assert_iqa_run_scores_as_torch

from qualitynet.bench.run import BenchSettings, run_bench
from qualitynet.export import export_all, load_photos
from qualitynet.export.cli import main as export_main
from qualitynet.export.fp16 import convert_fp16, fp32_tail
from qualitynet.export.int8 import network_blocks, pooled_tail, preprocess_for_quantization, score_chain
from qualitynet.export.onnx import read_meta
from qualitynet.runtime.ort_runner import OrtRunner
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.cli import train_command
from qualitynet.trainer.demo_dataset import make_view_dataset
from qualitynet.trainer.model import get_config
from qualitynet.trainer.recipes import recipe_for
from qualitynet.trainer.train import TrainSettings


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


def test_int8_blocks_are_the_backbones_module_scopes(deepfeat_onnx: Path, tmp_path: Path) -> None:
    """What the block-wise INT8 ranking quantizes one at a time: the backbone's blocks; the Gaussian process stays
    out (it is never quantized)."""
    graph = onnx.load(str(preprocess_for_quantization(deepfeat_onnx, tmp_path / "pre.onnx"))).graph
    tail = [*pooled_tail(graph), *score_chain(graph)]
    blocks = network_blocks(graph, tail)
    assert "/model/features/stages.1/stages.1.0" in blocks and len(blocks) <= 32
    backbone = [scope for scope in blocks if scope.startswith("/model/features/stages.")]
    assert len(backbone) >= 8  # the stem, each MBConv block, ...; the rest is the flip before it
    grouped = [node for nodes in blocks.values() for node in nodes]
    assert sorted(grouped) == sorted(node.name for node in graph.node if node.name not in set(tail))
    assert not any(node.startswith("/model/regressor/") for node in grouped)
    stages = {scope.rsplit("/", 1)[0] for scope in backbone}
    others = [scope for scope in blocks if scope not in backbone]
    assert set(network_blocks(graph, tail, most=len(stages) + len(others))) == stages | set(others)


@pytest.mark.slow
def test_int8_of_the_demo_trained_model_passes_with_its_first_blocks_in_float(tmp_path: Path) -> None:
    """deepfeat-lite fitted as iqa-train fits it on the demo's data (iqa-demo's photos and view, seed-0 split) misses
    the INT8 SROCC gate plain (0.976 on the bundled held-out photos). Ranked by SQNR, the remedy passed only with 91 of
    its 204 tensors (68 nodes) in float, and that graph ran 0.61x FP32 (issue 24): the late linear projections
    round worst locally, but the score moves with the first blocks' rounding, which every later layer and the
    Gaussian process's mean carry. Ranked by each block's effect on the score, two blocks in float pass."""
    view = TrainSettings(config="lite02", **recipe_for("lite02")).preprocess(get_config("lite02"))  # type: ignore[arg-type]
    csv_path = make_view_dataset(tmp_path / "data", view)
    run = tmp_path / "run"
    args = ["--dataset", "csv", "--csv", str(csv_path), "--config", "deepfeat-lite", "--pretrained",
            "--freeze-backbones", "--out", str(run), "--quiet"]
    trained = CliRunner().invoke(train_command, args)
    assert trained.exit_code == 0, trained.output
    exported = CliRunner().invoke(export_main, [str(run / "model.pt"), "--int8"])
    assert exported.exit_code == 0, exported.output
    cpu = json.loads((run / "model.export.json").read_text())["int8"]["cpu"]
    assert not cpu["plain"]["passed"]  # the case this is about
    assert cpu["passed"] and 0 < len(cpu["kept_in_float"]) <= 8 and cpu["ranking"] == "blocks"
    assert max(cpu["block_error_mos"].values()) == cpu["block_error_mos"]["/model/features/stages.0/stages.0.0"]
