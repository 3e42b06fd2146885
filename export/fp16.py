"""FP32 ONNX -> FP16 ONNX for strongly typed TensorRT builds (10.12+ and 11.x).

Weights and activations become FP16; the model's input and output stay FP32 (so the
runtime feeds and reads the same arrays whatever the precision), and the operators that
overflow or lose too much in FP16 stay FP32 behind Cast nodes. The converter is
``onnxruntime.transformers.float16``, which ships inside onnxruntime (no new dependency).
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from qualitynet.export.onnx import read_meta, save_with_meta

__all__ = ["FP16_OP_BLOCK_LIST", "convert_fp16"]

log = logging.getLogger(__name__)

# Kept in FP32: the converter's defaults (operators with no FP16 kernel), plus reductions,
# whose sums overflow FP16's 65504 (the attention modules average over up to 2560
# channels), and exponentials and powers. Everything else, convolutions included, is FP16.
FP16_OP_BLOCK_LIST = sorted(
    set(DEFAULT_OP_BLOCK_LIST)
    | {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Exp", "Pow", "Softmax"}
)


def convert_fp16(onnx_path: str | Path, out_path: str | Path | None = None) -> Path:
    """Write an FP16 copy of an FP32 ONNX model exported by :func:`~qualitynet.export.export_onnx`.

    Args:
        onnx_path: the FP32 model (with its artifact record).
        out_path: where to write; default ``<stem>.fp16.onnx`` next to it.

    Returns:
        The path of the FP16 model, whose record says ``precision: fp16``.

    Raises:
        QualityNetError: the model has no artifact record, or the output cannot be written.
    """
    onnx_path = Path(onnx_path)
    out = Path(out_path) if out_path is not None else onnx_path.with_name(f"{onnx_path.stem}.fp16.onnx")
    model = onnx.load(str(onnx_path))
    meta = read_meta(model, str(onnx_path))
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_OP_BLOCK_LIST)
    # The converter appends the input/output Casts at the end; ONNX requires nodes in order.
    OnnxModel.graph_topological_sort(fp16.graph, is_deterministic=True)
    meta.precision = "fp16"
    meta.extra = {**meta.extra, "fp16_op_block_list": FP16_OP_BLOCK_LIST, "fp16_source": onnx_path.name}
    save_with_meta(fp16, meta, out)
    log.debug("FP16 model written to %s", out)
    return out
