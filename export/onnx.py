"""PyTorch checkpoint -> self-describing FP32 ONNX model.

The model is exported in eval mode with named I/O (``PreprocessCfg.input_name``, NCHW
float32 in; ``PreprocessCfg.output_name``, unit-scale score ``(N, 1)`` out, after the
checkpoint's MOS mapping, which the graph contains), a dynamic
batch axis, as one self-contained file, checked with ``onnx.checker``, and carries the
:class:`~qualitynet.artifact.ArtifactMeta` record in ``metadata_props``.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from qualitynet.artifact import ONNX_METADATA_KEY, ArtifactMeta, file_sha256
from qualitynet.errors import QualityNetError
from qualitynet.export._io import atomic_write_bytes, ensure_writable_dir
from qualitynet.export.tensorrt_ops import ops_tensorrt_8_6_cannot_parse
from qualitynet.trainer.backbones import static_same_padding
from qualitynet.trainer.checkpoint import Checkpoint, load_checkpoint, software_versions

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "check_opset", "export_onnx", "read_meta", "save_with_meta"]

log = logging.getLogger(__name__)

# TensorRT 8.6 (the last release for Pascal) parses opset <= 17, so 17 is the default.
DEFAULT_OPSET = 17
# The range the TorchScript exporter of torch 2.x emits and that this toolkit tests.
MIN_OPSET = 13
MAX_OPSET = 20
BATCH_AXIS = "batch"


def check_opset(opset: int) -> None:
    """Refuse an opset outside ``MIN_OPSET..MAX_OPSET`` with the reason.

    Raises:
        QualityNetError: ``opset`` is out of range.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise QualityNetError(
            f"ONNX opset {opset} is not supported: the TorchScript exporter used here writes opsets "
            f"{MIN_OPSET}-{MAX_OPSET}; use --opset {DEFAULT_OPSET} (the default, which TensorRT 8.6 also parses)"
        )


def artifact_meta(checkpoint: Checkpoint, checkpoint_path: Path, opset: int) -> ArtifactMeta:
    """The artifact record of an FP32 ONNX export of ``checkpoint``."""
    return ArtifactMeta(
        config_name=checkpoint.model_config.name,
        preprocess=checkpoint.preprocess,
        score_scale=checkpoint.score_scale,
        precision="fp32",
        checkpoint_sha256=file_sha256(checkpoint_path),
        versions={**software_versions(), "onnx": onnx.__version__, "onnx_opset": str(opset)},
        extra={"dataset": checkpoint.dataset, "model_config": checkpoint.model_config.to_dict()},
        mos_mapping=checkpoint.mos_mapping,
    )


def export_onnx(checkpoint_path: str | Path, out_path: str | Path | None = None, opset: int = DEFAULT_OPSET,
                checkpoint: Checkpoint | None = None) -> Path:
    """Export a QualityNet checkpoint to ONNX with its artifact record.

    Args:
        checkpoint_path: a ``model.pt`` written by ``iqa-train``.
        out_path: where to write; default ``<stem>.onnx`` next to the checkpoint.
        opset: ONNX opset (``MIN_OPSET..MAX_OPSET``); 17 is the highest TensorRT 8.6 parses.
        checkpoint: the checkpoint already loaded from ``checkpoint_path``, to skip loading it again.

    Returns:
        The path of the written ONNX file.

    Raises:
        QualityNetError: bad checkpoint, unsupported opset, or the output cannot be written.
    """
    checkpoint_path = Path(checkpoint_path)
    out = Path(out_path) if out_path is not None else checkpoint_path.with_suffix(".onnx")
    check_opset(opset)
    checkpoint = checkpoint or load_checkpoint(checkpoint_path)
    ensure_writable_dir(out.parent)
    model = checkpoint.build_model()
    cfg = checkpoint.preprocess
    static_same_padding(model, cfg.height, cfg.width)  # the batch is the only dynamic axis
    dummy = torch.zeros(2, 3, cfg.height, cfg.width)  # batch 2: nothing gets specialised to 1
    tmp = out.with_name(out.name + ".torch.tmp")
    start = time.perf_counter()
    # The TorchScript exporter (dynamo=False), deliberately: it writes opset 17, the highest
    # TensorRT 8.6 (Pascal) parses, and takes ~9 s on the paper model where the dynamo
    # exporter needs opset 18+ and ~35 s (issue 3's figures). It is deprecated, so its
    # deprecation warnings are silenced for this call only.
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            torch.onnx.export(
                model,
                (dummy,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=[cfg.input_name],
                output_names=[cfg.output_name],
                dynamic_axes={cfg.input_name: {0: BATCH_AXIS}, cfg.output_name: {0: BATCH_AXIS}},
                do_constant_folding=True,
            )
        log.debug("torch.onnx.export took %.1f s", time.perf_counter() - start)
        graph = onnx.load(str(tmp))
        fold_pads_into_convs(graph)
        unparsed = ops_tensorrt_8_6_cannot_parse(graph)
        if unparsed:
            log.warning("%s: operators TensorRT 8.6 (the last release for Pascal GPUs) cannot parse: %s; ONNX Runtime "
                        "and newer TensorRT releases may still run it", out, ", ".join(unparsed))
        save_with_meta(graph, artifact_meta(checkpoint, checkpoint_path, opset), out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def fold_pads_into_convs(model: onnx.ModelProto) -> int:
    """Merge each constant zero ``Pad`` of the spatial axes that feeds only a ``Conv`` into that
    convolution's own (possibly asymmetric) ``pads``, as ONNX allows and PyTorch's ``Conv2d`` does not.

    PyTorch exports a constant pad as a small subgraph computing the pads (a reversal of
    its argument order); it is evaluated here (``onnx.reference``) when it depends on no
    graph input, then removed with the ``Pad``.

    Returns:
        How many ``Pad`` nodes were folded.
    """
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {output.name for output in graph.output}
    folded = 0
    for pad in [node for node in graph.node if node.op_type == "Pad"]:
        users = consumers.get(pad.output[0], [])
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        if (not users or any(user.op_type != "Conv" or list(user.input).index(pad.output[0]) != 0 for user in users)
                or mode != "constant" or pad.output[0] in outputs or len(pad.input) > 3):
            continue
        pads, value = (_constant(model, name) if name else np.zeros(()) for name in [*pad.input[1:3], ""][:2])
        if pads is None or value is None or np.any(value) or pads.shape != (8,) or np.any(pads[[0, 1, 4, 5]]):
            continue
        for conv in users:  # the exporter shares one Pad between identical stems
            own = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
            merged = [int(a) + int(b) for a, b in zip(own, pads[[2, 3, 6, 7]], strict=True)]
            kept = [a for a in conv.attribute if a.name not in ("pads", "auto_pad")]
            del conv.attribute[:]
            conv.attribute.extend([*kept, onnx.helper.make_attribute("pads", merged)])
            conv.input[0] = pad.input[0]
        graph.node.remove(pad)
        folded += 1
    _remove_dead_nodes(graph)
    return folded


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    """The value of tensor ``name`` if it depends on no graph input, else None."""
    graph = model.graph
    producers = {out: node for node in graph.node for out in node.output}
    initializers = {init.name: init for init in graph.initializer}
    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    needed: dict[int, onnx.NodeProto] = {}
    stack = [name]
    while stack:
        tensor = stack.pop()
        if not tensor or tensor in initializers:
            continue
        node = producers.get(tensor)
        if node is None:
            return None  # a graph input
        if id(node) not in needed:
            needed[id(node)] = node
            stack.extend(node.input)
    from onnx.reference import ReferenceEvaluator

    nodes = [node for node in graph.node if id(node) in needed]  # graph order is topological
    used = {tensor for node in nodes for tensor in node.input}
    sub = onnx.helper.make_graph(nodes, "constant", [], [onnx.helper.make_tensor_value_info(name, 0, None)],
                                 [init for init in graph.initializer if init.name in used])
    (value,) = ReferenceEvaluator(onnx.helper.make_model(sub, opset_imports=list(model.opset_import))).run(None, {})
    return np.asarray(value)


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes (and initializers) whose results nothing uses, until none is left."""
    while True:
        used = {tensor for node in graph.node for tensor in node.input} | {out.name for out in graph.output}
        dead = [node for node in graph.node if not any(out in used for out in node.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    for init in [init for init in graph.initializer if init.name not in used]:
        graph.initializer.remove(init)


def save_with_meta(model: onnx.ModelProto, meta: ArtifactMeta, out: Path) -> None:
    """Store ``meta`` in ``model.metadata_props``, check the model and write it atomically.

    Raises:
        QualityNetError: the output cannot be written.
        onnx.checker.ValidationError: the model is invalid (a bug, so it keeps its traceback).
    """
    kept = [prop for prop in model.metadata_props if prop.key != ONNX_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ONNX_METADATA_KEY, value=meta.to_json())
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(out, model.SerializeToString())  # one self-contained file (models < 2 GB)


def read_meta(model: onnx.ModelProto, source: str = "model") -> ArtifactMeta:
    """The artifact record of an ONNX model this toolkit wrote (export side; the runtime uses ORT).

    Raises:
        QualityNetError: the model carries no record.
    """
    for prop in model.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            return ArtifactMeta.from_json(prop.value, source)
    raise QualityNetError(f"{source}: no QualityNet metadata ({ONNX_METADATA_KEY!r}); export it with iqa-export")
