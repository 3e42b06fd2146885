"""What part of an exported graph is the network's regressor: shared by the FP16 and INT8 conversions."""

from __future__ import annotations

import onnx

__all__ = ["pooled_tail"]


def pooled_tail(graph: onnx.GraphProto) -> list[str]:
    """The nodes after the network's last spatial tensor: from which no path leads to a tensor with
    spatial extent (a 4-D tensor larger than 1x1, or one of unknown shape).

    In QualityNet that is everything after the backbones' global pooling: the attention
    and the head, which work on pooled vectors; in the deep-features model the Gaussian
    process's mean; in the multi-level, multi-scale model the score-and-weight head. They
    cost a few million multiply-adds against the backbones' hundreds of millions, so FP16
    and INT8 gain nothing there, while rounding them, which every score depends on, costs
    accuracy (the Gaussian process's mean most: see :mod:`qualitynet.export.fp16`). (A
    squeeze-excitation branch inside a backbone leads back to spatial tensors, so it is not
    part of the tail.) Needs inferred shapes (``onnx.shape_inference``, ``quant_pre_process``).
    """
    shapes = {info.name: [d.dim_value if d.HasField("dim_value") else -1 for d in info.type.tensor_type.shape.dim]
              for info in [*graph.value_info, *graph.output] if info.type.tensor_type.HasField("shape")}

    def spatial(tensor: str) -> bool:
        dims = shapes.get(tensor)
        return dims is None or (len(dims) == 4 and not (0 < dims[2] * dims[3] == 1 and min(dims[2:]) > 0))

    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    leads_to_spatial: dict[str, bool] = {}
    for node in reversed(graph.node):  # consumers come later in a topologically sorted graph
        leads_to_spatial[node.name] = any(spatial(out) or any(leads_to_spatial.get(user.name, True)
                                                              for user in consumers.get(out, []))
                                          for out in node.output)
    return [node.name for node in graph.node if not leads_to_spatial[node.name]]
