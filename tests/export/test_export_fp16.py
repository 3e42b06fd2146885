"""The FP16 ONNX model: FP32 I/O kept, FP16 inside, reductions and the regressor after the last spatial tensor
kept FP32, verified against FP32."""

from __future__ import annotations

import onnx

from qualitynet.export import ExportResult
from qualitynet.export.fp16 import FP16_OP_BLOCK_LIST, fp32_tail
from qualitynet.export.onnx import read_meta

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def test_fp16_model_keeps_fp32_io_and_records_its_precision(tiny_export: ExportResult) -> None:
    assert tiny_export.file("fp16_onnx") is not None and tiny_export.file("fp16_onnx").name == "model.fp16.onnx"
    model = onnx.load(str(tiny_export.file("fp16_onnx")))
    onnx.checker.check_model(model, full_check=True)
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [FLOAT]
    tail = set(fp32_tail(onnx.load(str(tiny_export.onnx))))
    weights = {t.name: t.data_type for t in model.graph.initializer if t.dims}
    used_by_tail = {name for node in model.graph.node if node.name in tail for name in node.input}
    backbone = [dtype for name, dtype in weights.items() if name not in used_by_tail]
    assert tail and sum(dtype == FLOAT16 for dtype in backbone) > 0.9 * len(backbone)
    assert all(weights[name] == FLOAT for name in used_by_tail if name in weights)  # the regressor stays FP32
    meta = read_meta(model)
    assert meta.precision == "fp16"
    assert meta.checkpoint_sha256 == read_meta(onnx.load(str(tiny_export.onnx))).checkpoint_sha256
    assert "ReduceMean" in meta.extra["fp16_op_block_list"]


def test_reductions_run_in_fp32(tiny_export: ExportResult) -> None:
    assert tiny_export.file("fp16_onnx") is not None
    model = onnx.shape_inference.infer_shapes(onnx.load(str(tiny_export.file("fp16_onnx"))))
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *model.graph.input]}
    kept = [n for n in model.graph.node if n.op_type in FP16_OP_BLOCK_LIST]
    assert kept, "the tiny model has ReduceMean nodes (attention)"
    assert all(types[n.input[0]] == FLOAT for n in kept)
    assert any(types.get(n.input[0]) == FLOAT16 for n in model.graph.node if n.op_type == "Conv")


def test_fp16_verification_against_fp32(tiny_export: ExportResult) -> None:
    check = tiny_export.verifications["fp16_onnx"]
    assert check and check.reference == "model.onnx"
    assert [c.batch_size for c in check.comparisons] == [1, 8]
    worst = check.worst
    assert 0 < worst.max_abs < 0.05  # FP16 really differs, and not by much
    assert worst.srocc >= 0.95
