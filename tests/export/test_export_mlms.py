"""The multi-level, multi-scale Swin model through iqa-export (ONNX, FP16, INT8 with their gates) and iqa-run: one
static graph (apart from the batch) at opset 17 whose operators TensorRT 8.6 parses, the MOS mapping inside."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import Result
from int8_cli import int8_export
from mlms_test_config import MLMS_TEST
from mos_scoring import assert_iqa_run_scores_as_torch

from qualitynet.export import export_all
from qualitynet.export.onnx import read_meta
from qualitynet.export.tensorrt_ops import ops_tensorrt_8_6_cannot_parse
from qualitynet.trainer.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def int8_cli(mlms_checkpoint: Path, photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Result, Path]:
    """``iqa-export --int8`` of a copy of the trained checkpoint in a folder of its own, with the default gates."""
    return int8_export(mlms_checkpoint, tmp_path_factory.mktemp("mlms-int8"), photo_dir)


def test_int8_export_passes_both_gates(int8_cli: tuple[Result, Path]) -> None:
    result, checkpoint = int8_cli
    assert result.exit_code == 0, result.output
    assert "FAILED" not in result.output
    report = json.loads((checkpoint.parent / "model.export.json").read_text())
    assert report["int8"]["cpu"]["passed"] and report["int8"]["tensorrt"]["passed"]
    trt_graph = onnx.load(str(checkpoint.parent / "model.int8.trt.onnx"))
    assert not ops_tensorrt_8_6_cannot_parse(trt_graph)
    assert any(node.op_type == "QuantizeLinear" for node in trt_graph.graph.node)


def test_onnx_and_fp16_agree_with_torch(mlms_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    result = export_all(mlms_checkpoint, tmp_path, fp16=True, photos=photo_dir, require_tensorrt=False)
    fp32, fp16 = result.verifications["onnx"], result.verifications["fp16_onnx"]
    assert fp32 and fp32.worst.max_abs < 1e-4 and fp32.worst.srocc > 0.999
    assert fp16  # the FP16 gate: atol 0.005 on the unit scale, SROCC
    graph = onnx.load(str(result.onnx))
    meta = read_meta(graph)
    assert meta.config_name == MLMS_TEST.name and meta.extra["model_config"]["factory"].endswith(":mlms_from_config")
    assert meta.mos_mapping == load_checkpoint(mlms_checkpoint).mos_mapping


def test_graph_is_static_but_the_batch_and_tensorrt_8_6_parses_it(mlms_onnx: Path) -> None:
    graph = onnx.load(str(mlms_onnx))
    assert graph.opset_import[0].version == 17
    ops = {node.op_type for node in graph.graph.node}
    assert not ops_tensorrt_8_6_cannot_parse(graph)
    assert {"MatMul", "Softmax", "LayerNormalization", "Conv"} <= ops  # Swin attention, fusion, backbone
    assert "Shape" not in ops  # no shape arithmetic: every size but the batch's is a constant
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]
            for value in (*graph.graph.input, *graph.graph.output)]
    assert dims == [["batch", 3, 96, 96], ["batch", 1]]


def test_an_op_tensorrt_8_6_lacks_is_named() -> None:
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Unique", ["x"], ["y"]), onnx.helper.make_node("Relu", ["y"], ["z"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
        [onnx.helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, [None])]))
    assert ops_tensorrt_8_6_cannot_parse(model) == ["Unique"]


def test_iqa_run_scores_on_the_mos_scale_as_torch_does(mlms_onnx: Path, mlms_checkpoint: Path,
                                                      photo_dir: Path) -> None:
    got = assert_iqa_run_scores_as_torch(mlms_onnx, mlms_checkpoint, photo_dir)
    assert len(got) == 8
    assert np.ptp(got) > 0.01  # scores differ from photo to photo
