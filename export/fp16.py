"""FP32 ONNX -> FP16 ONNX for strongly typed TensorRT builds (10.12+ and 11.x).

Weights and activations become FP16; the model's input and output stay FP32 (so the
runtime feeds and reads the same arrays whatever the precision), and the operators that
overflow or lose too much in FP16 stay FP32 behind Cast nodes. The converter is
``onnxruntime.transformers.float16``, which ships inside onnxruntime (no new dependency).

The regressor after the network's last spatial tensor (:func:`~qualitynet.export.graph.pooled_tail`)
stays FP32 too, by node (the converter's ``node_block_list``): it costs little, and the
deep-features model's Gaussian-process mean cannot be computed in FP16. Its weights are
large and alternate in sign (a demo-trained fit: 306 points, sum of absolute weights 2,600),
and its kernel values lie near 1, where FP16 resolves 5e-4: the mean computed in FP16 from
exact features was off by up to 0.11 on the unit scale, against 0.002 from FP16 backbone
features (measured in PyTorch, 12 bundled photos; issue 24).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import onnx
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel

from qualitynet.export.graph import pooled_tail
from qualitynet.export.onnx import read_meta, save_with_meta

__all__ = ["FP16_OP_BLOCK_LIST", "convert_fp16", "fp32_nodes", "fp32_tail"]

log = logging.getLogger(__name__)

# Kept in FP32: the converter's defaults (operators with no FP16 kernel), plus reductions,
# whose sums overflow FP16's 65504 (the attention modules average over up to 2560
# channels), and exponentials and powers. Everything else, convolutions included, is FP16.
FP16_OP_BLOCK_LIST = sorted(
    set(DEFAULT_OP_BLOCK_LIST)
    | {"ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Exp", "Pow", "Softmax"}
)


def fp32_tail(model: onnx.ModelProto) -> list[str]:
    """The names of the regressor's nodes, kept FP32 in FP16 models (see the module docstring)."""
    return [name for name in pooled_tail(onnx.shape_inference.infer_shapes(model).graph) if name]


def fp32_nodes(model: onnx.ModelProto, tail: Collection[str] | None = None) -> list[onnx.NodeProto]:
    """The nodes an FP16 model keeps in FP32, in the ONNX graph and in a TensorRT FP16 engine alike: the
    operators of :data:`FP16_OP_BLOCK_LIST` and the regressor (``tail``: :func:`fp32_tail`, if already known)."""
    regressor = set(fp32_tail(model) if tail is None else tail)
    return [node for node in model.graph.node if node.op_type in FP16_OP_BLOCK_LIST or node.name in regressor]


def _cast_to(node: onnx.NodeProto) -> int | None:
    """The element type a Cast node casts to (``None`` for any other node)."""
    return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None


def _drop_round_trips(graph: onnx.GraphProto, fp32_nodes: set[str]) -> int:
    """Remove the FP32 -> FP16 -> FP32 Cast pairs the converter puts between two FP32 nodes.

    The converter casts every output of a node it keeps in FP32 to FP16, and casts it back
    before the next FP32 node: between two FP32 nodes each tensor (constants included) is
    rounded to FP16 on the way, the model's output too. The FP32 consumer reads the FP32
    tensor instead (the output's cast becomes an FP32 -> FP32 one).

    Returns:
        How many FP32 casts were bypassed.
    """
    producers = {out: node for node in graph.node for out in node.output}
    fp32_tensors = {out for node in graph.node if node.name in fp32_nodes for out in node.output}
    fp32_tensors |= {value.name for value in graph.input if value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    bypassed: dict[str, str] = {}
    for node in graph.node:
        down = producers.get(node.input[0]) if node.op_type == "Cast" else None
        if (_cast_to(node) == onnx.TensorProto.FLOAT and down is not None
                and _cast_to(down) == onnx.TensorProto.FLOAT16 and down.input[0] in fp32_tensors):
            bypassed[node.output[0]] = down.input[0]
    outputs = {value.name for value in graph.output}
    for node in graph.node:
        node.input[:] = [bypassed.get(name, name) for name in node.input]
        if node.output[0] in bypassed and node.output[0] in outputs:  # a graph output: the cast becomes FP32 -> FP32
            node.input[0] = bypassed[node.output[0]]
    while True:  # a bypassed cast, then the FP16 cast before it, is left without consumers
        used = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if node.op_type == "Cast" and node.output[0] not in used]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    return len(bypassed)


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
    tail = fp32_tail(model)
    kept = {node.name for node in fp32_nodes(model, tail)}
    fp16 = convert_float_to_float16(model, keep_io_types=True, op_block_list=FP16_OP_BLOCK_LIST,
                                    node_block_list=tail)
    _drop_round_trips(fp16.graph, kept)
    # The converter appends the input/output Casts at the end; ONNX requires nodes in order.
    OnnxModel.graph_topological_sort(fp16.graph, is_deterministic=True)
    meta.precision = "fp16"
    meta.extra = {**meta.extra, "fp16_op_block_list": FP16_OP_BLOCK_LIST, "fp16_fp32_tail": tail,
                  "fp16_source": onnx_path.name}
    save_with_meta(fp16, meta, out)
    log.debug("FP16 model written to %s", out)
    return out
