"""FP32 ONNX -> INT8 Q/DQ ONNX, calibrated on real photos and gated on held-out ones.

Two graphs come out of one calibration, because the CPU and TensorRT want different ones:

- ``model.int8.onnx`` for ONNX Runtime on CPUs: on x86 unsigned 8-bit activations with
  signed 8-bit per-channel weights (the U8S8 kernels of AVX2/AVX-512/VNNI; signed
  activations ran 0.4-0.7x FP32 on an AVX2 CPU, issue 13), on ARM signed both.
- ``model.int8.trt.onnx`` for TensorRT: symmetric signed activations (zero point 0) and
  per-channel symmetric signed weights, float weights behind Q/DQ pairs, the form
  TensorRT's explicit quantization (8.6, 10.x, 11.x) parses.

Both are ``onnxruntime.quantization.quantize_static`` in QDQ format after
``quant_pre_process``; the activation ranges are measured once
(:class:`~qualitynet.export.calibration.PhotoDataReader`, MinMax, entropy or percentile)
into a calibration cache that every later quantization reuses.

Each graph then passes an accuracy gate on held-out photos against the FP32 model: SROCC
(default >= 0.99) and, if asked, a bound on the max abs error on the MOS scale. A graph
below the bound gets the standard remedy: its most sensitive nodes stay in float. Two
rankings are searched, and the passing graph with the fewest nodes in float is kept: each
quantized tensor by its own signal-to-quantization-noise ratio on the calibration photos
(ONNX Runtime's ``qdq_loss_debug``), and each block of the network (a module scope of the
exported graph) by the error in the score when that block alone is quantized. The first
finds a tensor that rounding damages locally; only the second sees an error that the layers
after it amplify, which is where a Gaussian process's mean over pooled features (the
deep-features model) is hurt: by its first blocks, while the SQNR ranks its last ones first
(issue 24). Over each ranking, the number kept in float is found by doubling then bisection,
as Polygraphy's ``debug precision`` bisects over layers. The kept nodes, the ranking that
kept them and the speed they cost are recorded; if even that fails the files stay and the
error carries the figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

from qualitynet.artifact import ArtifactMeta
from qualitynet.errors import QualityNetError
from qualitynet.export.calibration import DEFAULT_CALIB_COUNT, PhotoDataReader
from qualitynet.export.graph import pooled_tail
from qualitynet.export.onnx import read_meta, save_with_meta
from qualitynet.export.targets import TARGETS
from qualitynet.export.types import Int8Gate, Tolerance, Verification
from qualitynet.export.verify import Reference, compare, run_batched
from qualitynet.runtime.int8_fit import ARM, X86_NO_VNNI, int8_class
from qualitynet.runtime.ort_runner import OrtRunner
from qualitynet.runtime.runner import runner_for

__all__ = [
    "Block",
    "block_sensitivity",
    "CALIBRATION_METHODS",
    "calibrate",
    "DEFAULT_MEAN_ABS_FRACTION",
    "DEFAULT_MIN_SROCC",
    "DEFAULT_RANK_RESOLUTION_FRACTION",
    "float_tail",
    "Int8Settings",
    "Int8Target",
    "cpu_target",
    "network_blocks",
    "nodes_of",
    "pooled_tail",
    "score_chain",
    "sqnr_db",
    "gate",
    "quantize",
    "quantize_and_gate",
    "Sensitivity",
    "sensitive_nodes",
    "tensorrt_target",
]

log = logging.getLogger(__name__)

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
DEFAULT_MIN_SROCC = 0.99
# The gate's default bound on the mean abs error, as a fraction of the MOS scale's width
# (0.2 MOS on a 1-5 scale): ranking alone passes a model that is off by whole MOS points. The
# mean rather than the max: a trained model's MOS mapping is steep somewhere, and one photo
# there moves far (the demo's lite model: mean 0.05, max 0.96 MOS at SROCC 0.99); the max is
# reported, and bounded with --max-abs-error.
DEFAULT_MEAN_ABS_FRACTION = 0.05
# The gate's default rank resolution, as a fraction of the MOS scale's width (0.04 MOS on a 1-5
# scale): two photos the FP32 model scores closer than this count as a tie. SROCC alone failed a
# trained small model whose INT8 copy reversed only pairs at most 0.013 MOS apart (35 of its 48
# gate photos sat within 0.004 MOS of its ceiling), while passing a lite02 one that reversed pairs
# 0.27 MOS apart; the ranks pass on SROCC or on every order beyond the resolution kept.
DEFAULT_RANK_RESOLUTION_FRACTION = 0.01
CALIBRATOR_OPTIONS: dict[str, dict[str, Any]] = {"entropy": {"num_bins": 2048, "num_quantized_bins": 128}}
GATE_BATCH_SIZES = (1, 8)
# Calibration inputs the sensitivity ranking runs on: it keeps every intermediate tensor of
# every input in memory (ONNX Runtime's qdq_loss_debug), ~18 GB for the lite model at 64.
SENSITIVITY_INPUTS = 8
SPEED_BATCH = 8
# The block-wise ranking: at most this many blocks (module scopes), each measured on this many calibration inputs.
MAX_BLOCKS = 32
BLOCK_INPUTS = 16


@dataclass(frozen=True)
class Int8Target:
    """One quantized graph: whom it is for and how its tensors are quantized.

    Attributes:
        name: ``cpu`` (ONNX Runtime) or ``tensorrt``.
        artifact: the export target it is written as (a key of
            :data:`~qualitynet.export.targets.TARGETS`: ``int8_onnx``, ``int8_trt_onnx``).
        activations: ``QuantType`` of activations.
        symmetric_activations: zero point 0 for activations (TensorRT requires it).
        extra_options: further ``quantize_static`` options.
    """

    name: str
    artifact: str
    activations: QuantType
    symmetric_activations: bool
    extra_options: dict[str, Any] = field(default_factory=dict)
    reduce_range: bool = False
    instruction_set: str | None = None

    @property
    def suffix(self) -> str:
        """Its file name after the stem, e.g. ``.int8.onnx``."""
        return TARGETS[self.artifact].suffix

    def describe(self) -> dict[str, Any]:
        """The quantization, for the artifact record."""
        kind = "int8" if self.activations == QuantType.QInt8 else "uint8"
        weights = "int8 (7-bit range, reduce_range)" if self.reduce_range else "int8"
        return {"activations": f"{kind} per-tensor, {'symmetric' if self.symmetric_activations else 'asymmetric'}",
                "weights": f"{weights} per-channel, symmetric", "format": "QDQ",
                "bias": "float" if self.extra_options.get("QuantizeBias") is False else "int32",
                **({"instruction_set": self.instruction_set} if self.instruction_set else {})}


def cpu_target(machine: str | None = None, flags: set[str] | None = None) -> Int8Target:
    """The CPU graph for this machine's instruction set (``platform.machine()`` and ``/proc/cpuinfo`` by default).

    x86: uint8 activations, int8 per-channel weights (the U8S8 kernels; symmetric int8
    activations are slower than FP32 on AVX2), with ``reduce_range`` (7-bit weights) where
    the CPU has no VNNI, as ONNX Runtime's documentation asks for per-channel weights there
    (:mod:`qualitynet.runtime.int8_fit`). ARM: int8 both, which its dot-product kernels
    prefer. The instruction-set class goes into the artifact record.
    """
    isa = int8_class(flags, machine)
    arm = isa == ARM
    return Int8Target("cpu", "int8_onnx", QuantType.QInt8 if arm else QuantType.QUInt8, symmetric_activations=arm,
                      reduce_range=isa == X86_NO_VNNI, instruction_set=isa)


def tensorrt_target() -> Int8Target:
    """TensorRT's explicit quantization: symmetric int8 everywhere, float weights behind Q/DQ pairs,
    float biases (TensorRT's Q/DQ nodes take int8, not ONNX Runtime's int32 biases)."""
    return Int8Target("tensorrt", "int8_trt_onnx", QuantType.QInt8, symmetric_activations=True,
                      extra_options={"AddQDQPairToWeight": True, "DedicatedQDQPair": True, "QuantizeBias": False,
                                     "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1}})


@dataclass
class Int8Settings:
    """How to calibrate and gate.

    Attributes:
        photos: calibration photos (a folder or files); ``None``: the bundled ones
            (:data:`~qualitynet.export.calibration.CALIBRATION_SOURCES`) plus crops.
        gate_photos: the gate's held-out photos (a folder, files or a dataset CSV); ``None``:
            the export's verification photos when given, else bundled photos never used for
            calibration.
        count: calibration inputs (photos first, then seeded crops of them).
        seed: seed of the crops.
        method: ``minmax``, ``entropy`` or ``percentile``.
        min_srocc: the gate's lower bound on SROCC against the FP32 model.
        max_abs_mos: optional upper bound on the max abs error, MOS scale.
        mean_abs_mos: upper bound on the mean abs error, MOS scale; ``None``:
            :data:`DEFAULT_MEAN_ABS_FRACTION` of the model's MOS range.
        rank_resolution_mos: photos the FP32 model scores at most this far apart (MOS scale)
            are ties: the ranks pass with SROCC below ``min_srocc`` when the INT8 graph keeps
            the order of every two photos further apart; ``None``:
            :data:`DEFAULT_RANK_RESOLUTION_FRACTION` of the MOS range; 0: SROCC alone.
        remedy: keep the most sensitive tensors in float when the plain graph fails.
        max_float_fraction: a graph that passes only with more than this fraction of its
            quantized tensors in float is not worth calling INT8: the export fails (with
            the figures of the graph that passed).
        require_speedup: fail the CPU graph when it runs less than this many times as fast
            as FP32 on this CPU (``None``: a graph no faster than FP32 passes, with a warning).
    """

    photos: str | Path | None = None
    gate_photos: str | Path | None = None
    count: int = DEFAULT_CALIB_COUNT
    seed: int = 0
    method: str = "minmax"
    min_srocc: float = DEFAULT_MIN_SROCC
    max_abs_mos: float | None = None
    mean_abs_mos: float | None = None
    rank_resolution_mos: float | None = None
    remedy: bool = True
    max_float_fraction: float = 0.5
    require_speedup: float | None = None

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise QualityNetError(
                f"unknown calibration method {self.method!r}; choose {', '.join(CALIBRATION_METHODS)}")
        if not -1.0 <= self.min_srocc <= 1.0:
            raise QualityNetError(f"minimum SROCC {self.min_srocc} is not in [-1, 1]")
        for name, bound in (("max", self.max_abs_mos), ("mean", self.mean_abs_mos)):
            if bound is not None and bound <= 0:
                raise QualityNetError(f"{name} abs error bound {bound} must be positive")
        if self.rank_resolution_mos is not None and self.rank_resolution_mos < 0:
            raise QualityNetError(f"rank resolution {self.rank_resolution_mos} must not be negative")

    def mean_abs_bound(self, mos_range: float) -> float:
        """The gate's bound on the mean abs error, MOS scale."""
        return self.mean_abs_mos if self.mean_abs_mos is not None else DEFAULT_MEAN_ABS_FRACTION * mos_range

    def rank_resolution(self, mos_range: float) -> float:
        """The gate's rank resolution, MOS scale (0: SROCC alone judges the ranks)."""
        if self.rank_resolution_mos is not None:
            return self.rank_resolution_mos
        return DEFAULT_RANK_RESOLUTION_FRACTION * mos_range

    def calibration_record(self, inputs: int) -> dict[str, Any]:
        """What the artifact record says about the calibration."""
        return {"method": self.method, "inputs": inputs, "seed": self.seed,
                "photos": "bundled" if self.photos is None else str(self.photos)}


def preprocess_for_quantization(fp32_path: Path, out_path: Path) -> Path:
    """``quant_pre_process`` (shape inference, ONNX Runtime's basic graph optimisations), then a
    name for every node, since nodes are kept in float by name and the optimiser adds unnamed ones.

    Runs in ``out_path``'s folder (a scratch folder): files ONNX Runtime writes to the
    working directory stay there.

    Raises:
        QualityNetError: ONNX Runtime cannot prepare the graph (names the file and the reason).
    """
    source, target = fp32_path.resolve(), out_path.resolve()  # before the chdir: relative paths name the caller's
    try:
        with _ort_quiet(), contextlib.chdir(target.parent):
            quant_pre_process(str(source), str(target))
    except Exception as exc:  # noqa: BLE001 - shape inference raises bare Exceptions
        raise QualityNetError(f"{fp32_path}: ONNX Runtime cannot prepare it for quantization ({type(exc).__name__}: "
                              f"{str(exc).strip()[:200]}); re-export it with iqa-export") from None
    model = onnx.load(str(out_path))
    taken = {node.name for node in model.graph.node}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = next(name for name in (f"{node.op_type}_{i}_{n}" for n in range(len(taken) + 1))
                             if name not in taken)
            taken.add(node.name)
    onnx.save(model, str(out_path))
    return out_path


def calibrate(pre_path: Path, reader: PhotoDataReader, method: str, cache: Path, work: Path) -> Path:
    """Measure every activation's range on the calibration photos into ONNX Runtime's calibration cache.

    Done here rather than inside ``quantize_static``, which would pass its entropy calibrator
    128 histogram bins for 128 quantized bins: one candidate threshold, i.e. MinMax (measured:
    identical scales). TensorRT's entropy calibrator uses 2048 bins, and so does this one.

    Returns:
        ``cache``, which every :func:`quantize` call then reads.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    calibrator = create_calibrator(pre_path, [], augmented_model_path=str(work / "augmented.onnx"),
                                   calibrate_method=CALIBRATION_METHODS[method],
                                   extra_options=CALIBRATOR_OPTIONS.get(method, {}))
    with _ort_quiet():
        calibrator.collect_data(reader)
        save_tensors_data(calibrator.compute_data(), cache)
    return cache


@contextlib.contextmanager
def _ort_quiet() -> Iterator[None]:
    """ONNX Runtime's quantizer logs through the root logger and prints its progress to stdout
    (advice this module follows, per-bias notes): both go to this module's debug log instead."""
    root = logging.getLogger()
    level, captured = root.level, io.StringIO()
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        root.setLevel(level)
        if captured.getvalue().strip():
            log.debug("onnxruntime.quantization: %s", captured.getvalue().strip())


def quantize(pre_path: Path, out_path: Path, target: Int8Target, cache: Path, calibration: dict[str, Any],
             meta: ArtifactMeta, keep_float: Sequence[str] = ()) -> Path:
    """Quantize a pre-processed FP32 model to a Q/DQ model with its artifact record.

    Args:
        pre_path: the model after :func:`preprocess_for_quantization`.
        out_path: where to write.
        target: which graph (:func:`cpu_target`, :func:`tensorrt_target`).
        cache: the activation ranges, from :func:`calibrate`.
        calibration: :meth:`Int8Settings.calibration_record` (its ``method`` is used).
        meta: the FP32 model's record; the copy written says ``precision: int8``.
        keep_float: node names left in float.

    Returns:
        ``out_path``.
    """
    tmp = out_path.with_name(out_path.name + ".quant.tmp")
    score_nodes = float_tail(onnx.load(str(pre_path), load_external_data=False).graph)
    try:
        with _ort_quiet():
            quantize_static(
                str(pre_path), str(tmp), None, quant_format=QuantFormat.QDQ, per_channel=True,
                reduce_range=target.reduce_range, activation_type=target.activations, weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[calibration["method"]],
                nodes_to_exclude=[*score_nodes, *keep_float], calibration_cache_path=str(cache),
                extra_options={"ActivationSymmetric": target.symmetric_activations, "WeightSymmetric": True,
                               **target.extra_options},
            )
        model = onnx.load(str(tmp))
    finally:
        tmp.unlink(missing_ok=True)
    record = ArtifactMeta.from_dict(meta.to_dict())
    record.precision = "int8"
    record.extra = {**record.extra, "int8": {"target": target.name, **target.describe(), "calibration": calibration,
                                             "score_chain_in_float": score_nodes, "kept_in_float": list(keep_float)}}
    save_with_meta(model, record, out_path)
    return out_path


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def float_tail(graph: onnx.GraphProto) -> list[str]:
    """The nodes no INT8 graph quantizes, each once: the pooled tail (:func:`pooled_tail`) and the score
    chain (:func:`score_chain`)."""
    return _flat([pooled_tail(graph), score_chain(graph)])


def score_chain(graph: onnx.GraphProto) -> list[str]:
    """The nodes from the last weighted op (Conv, Gemm, MatMul with a constant weight) to the outputs.

    They stay in float: the score's resolution is the point of an IQA model, and 8 bits over
    the range the calibration photos happened to span (which rarely covers every quality the
    model will score) clip and round it. That is the head's last layer, its sigmoid, scale
    and offset and the MOS mapping; a few scalar operations at the end of the network.
    """
    constants = {init.name for init in graph.initializer}
    constants |= {out for node in graph.node if node.op_type == "Constant" for out in node.output}
    producers = {out: node for node in graph.node for out in node.output}
    chain: dict[str, onnx.NodeProto] = {}
    stack = [output.name for output in graph.output]
    while stack:  # upstream from the outputs, stopping at (and keeping) weighted ops
        node = producers.get(stack.pop())
        if node is None or node.name in chain:
            continue
        chain[node.name] = node
        if not (node.op_type in WEIGHTED_OPS and any(name in constants for name in node.input[1:])):
            stack.extend(name for name in node.input if name not in constants)
    return [node.name for node in graph.node if node.name in chain]


def gate(path: Path, reference: Reference, settings: Int8Settings, mos_range: float,
         batch_sizes: Sequence[int] = GATE_BATCH_SIZES) -> Verification:
    """Score the held-out photos with an INT8 model (ONNX or TensorRT plan) and judge it against the FP32 reference.

    Passes when at every batch size the ranks agree (SROCC >= ``settings.min_srocc``, or no two
    photos the FP32 model scores more than :meth:`Int8Settings.rank_resolution` apart change
    order), the mean abs error is at most :meth:`Int8Settings.mean_abs_bound` on the MOS scale
    and, with ``settings.max_abs_mos``, no score is off by more than that.
    """
    start = time.perf_counter()
    atol = np.inf if settings.max_abs_mos is None else settings.max_abs_mos / mos_range
    bounds = Tolerance(atol=atol, rtol=0.0, min_srocc=settings.min_srocc,
                       rank_resolution=settings.rank_resolution(mos_range) / mos_range)
    mean_bound = settings.mean_abs_bound(mos_range) / mos_range
    label = f"{path.name} vs {reference.name}"
    with runner_for(path, provider="cpu" if path.suffix == ".onnx" else None) as runner:
        comparisons = [compare(reference.scores, run_batched(runner.infer, reference.inputs, size), bounds, label,
                               size, rank_spread=0.0) for size in batch_sizes]
    comparisons = [dataclasses.replace(c, passed=c.passed and c.mean_abs <= mean_bound) for c in comparisons]
    return Verification(path.name, reference.name, len(reference.inputs), comparisons, time.perf_counter() - start)


@dataclass
class Sensitivity:
    """One quantized tensor: its signal-to-quantization-noise ratio and the nodes that keep it in float.

    Attributes:
        tensor: an activation or weight name.
        sqnr_db: its SQNR, dB (lower: more damaged by rounding).
        nodes: for an activation its producer and its consumers (its Q/DQ pair goes only
            when none of them is quantized); for a weight the node using it.
    """

    tensor: str
    sqnr_db: float
    nodes: list[str]


def sensitive_nodes(qdq_path: Path, float_path: Path, inputs: np.ndarray, input_name: str,
                    work: Path) -> list[Sensitivity]:
    """Quantized tensors of a Q/DQ model, most sensitive first.

    Activations are measured on ``inputs`` (the calibration photos: the gate's photos stay
    unseen): each tensor before and after its QuantizeLinear/DequantizeLinear pair, with
    ONNX Runtime's ``qdq_loss_debug``. Where the quantizer removed a ReLU/ReLU6 and let the
    quantization range clamp instead, the tensor before the pair is the convolution's raw
    output: the activation is applied to it first, or the clamping it replaces would count
    as noise (it ranked every ReLU6 output of EfficientNet-Lite "most damaged", ~0.1 dB).
    Weights are compared, dequantized, with their float originals in ``float_path`` (the
    model that was quantized).
    """
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    augmented = work / "sensitivity.onnx"
    with _ort_quiet():
        modify_model_output_intermediate_tensors(str(qdq_path), str(augmented))
        activations = collect_activations(str(augmented), PhotoDataReader(input_name, inputs),
                                          execution_providers=["CPUExecutionProvider"])
    model = onnx.load(str(qdq_path))
    producers = {out: node for node in model.graph.node for out in node.output}
    removed = {name: bounds for name, bounds in _activation_bounds(onnx.load(str(float_path))).items()
               if name in producers and producers[name].op_type not in ("Relu", "Clip")}
    errors = {name: sqnr_db([np.clip(a, *removed[name]) for a in match["pre_qdq"]] if name in removed
                            else match["pre_qdq"], match["post_qdq"])
              for name, match in create_activation_matching(activations).items()}
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    originals = {init.name: onnx.numpy_helper.to_array(init)
                 for init in onnx.load(str(float_path)).graph.initializer}
    found: dict[str, Sensitivity] = {}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.name:
            continue
        for tensor in node.input:
            dq = producers.get(tensor)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = producers.get(dq.input[0])
            source = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else dq.input[0]
            if source not in found:
                if source in errors:
                    producer = producers.get(source)
                    nodes = [producer.name] if producer is not None and producer.name else []
                    found[source] = Sensitivity(source, float(errors[source]), nodes)
                elif source in initializers or dq.input[0] in initializers:
                    found[source] = Sensitivity(source, _weight_sqnr(dq, q, initializers, originals), [])
                else:
                    continue
            if node.name not in found[source].nodes:
                found[source].nodes.append(node.name)
    return sorted(found.values(), key=lambda item: item.sqnr_db)


def _activation_bounds(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """The output of every ReLU and constant-bounded Clip of a float model, with its bounds."""
    constants = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    constants.update({node.output[0]: onnx.numpy_helper.to_array(node.attribute[0].t) for node in model.graph.node
                      if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value"})
    bounds: dict[str, tuple[float, float]] = {}
    for node in model.graph.node:
        if node.op_type == "Relu":
            bounds[node.output[0]] = (0.0, math.inf)
        elif node.op_type == "Clip":
            low, high = (float(constants[name]) if name in constants else default
                         for name, default in zip([*node.input[1:3], "", ""][:2], (-math.inf, math.inf),
                                                  strict=True))
            bounds[node.output[0]] = (low, high)
    return bounds


def nodes_of(ranked: Sequence[Sensitivity]) -> list[str]:
    """The nodes that keep ``ranked`` tensors in float, each once, in rank order."""
    return _flat([item.nodes for item in ranked])


def sqnr_db(signal: np.ndarray | Sequence[np.ndarray], quantized: np.ndarray | Sequence[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio, dB, of ``quantized`` against ``signal`` (arrays of any rank,
    scalars included, or lists of them): infinite when they are equal (an all-zero tensor
    quantizes exactly), where ONNX Runtime's helper cannot concatenate scalars and rates an
    exact zero tensor 0 dB, i.e. "most damaged"."""
    x = np.concatenate([np.ravel(a) for a in (signal if isinstance(signal, (list, tuple)) else [signal])])
    y = np.concatenate([np.ravel(a) for a in (quantized if isinstance(quantized, (list, tuple)) else [quantized])])
    noise = float(np.linalg.norm(x.astype(np.float64) - y.astype(np.float64)))
    if noise == 0.0:
        return math.inf
    return 20.0 * math.log10(max(float(np.linalg.norm(x.astype(np.float64))), np.finfo(np.float64).tiny) / noise)


def _weight_sqnr(dq: onnx.NodeProto, q: onnx.NodeProto | None, initializers: dict[str, np.ndarray],
                 originals: dict[str, np.ndarray]) -> float:
    """SQNR of one quantized weight (a scalar one too): its float original against its dequantized value."""
    scale = initializers[dq.input[1]]
    zero = initializers[dq.input[2]].astype(np.float32) if len(dq.input) > 2 else np.zeros_like(scale)
    weight: np.ndarray | None
    quantized: np.ndarray | None
    if q is not None and q.input[0] in initializers:  # a float weight behind a Q/DQ pair
        weight, quantized = initializers[q.input[0]], None
    else:  # an int8 weight behind a DequantizeLinear, named <original>_quantized
        weight = originals.get(dq.input[0].removesuffix("_quantized"))
        quantized = initializers[dq.input[0]].astype(np.float32)
    if weight is None:
        return float("inf")
    shape = [1] * weight.ndim
    if scale.ndim:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        shape[min(axis, weight.ndim - 1)] = -1  # a per-channel bias (rank 1) has its channels on axis 0
    s, z = scale.reshape(shape), zero.reshape(shape if zero.ndim else ())
    if quantized is None:
        quantized = np.clip(np.round(weight / s) + z, -128, 127)
    return sqnr_db(weight, (quantized - z) * s)


@dataclass
class _Probe:
    kept: int
    path: Path
    verification: Verification


def quantize_and_gate(pre_path: Path, out_path: Path, target: Int8Target, settings: Int8Settings,
                      cache: Path, meta: ArtifactMeta, reference: Reference,
                      calib_inputs: np.ndarray, work: Path, fp32_path: Path | None = None) -> Int8Gate:
    """Quantize for ``target``, gate it, and if it fails keep the fewest sensitive nodes in float that pass.

    Two searches: over every quantized tensor (activations, the graph's input, weights,
    biases) ranked by SQNR (:func:`sensitive_nodes`), and over the network's blocks ranked
    by the score error each causes alone (:func:`block_sensitivity`); each one's last
    candidate is the float graph, where it stops. Of the passing graphs, the one with the
    fewest nodes in float is kept (``ranking`` says which search found it). A graph that
    passes only with more than ``settings.max_float_fraction`` of its tensors (or of its
    nodes, by blocks) in float fails all the same (it is not an INT8 model), with its
    figures recorded.

    The final model is at ``out_path`` whatever the outcome (the passing mixed graph, else
    the plain INT8 one); its record holds the gate's figures. With ``fp32_path`` the
    speeds of FP32, plain INT8 and (when nodes are kept) the mixed graph are measured on
    ONNX Runtime's CPU provider, at batch :data:`SPEED_BATCH`: what the kept nodes cost.

    Returns:
        The gate's figures, ``passed`` or not.
    """
    mos_range = meta.score_scale.high - meta.score_scale.low
    calibration = settings.calibration_record(len(calib_inputs))
    quantize(pre_path, out_path, target, cache, calibration, meta)
    plain = gate(out_path, reference, settings, mos_range)
    log.info("%s: plain INT8 %s", out_path.name, _figures(plain, mos_range))
    result = Int8Gate(target=target.name, model=out_path.name, verification=plain, plain=plain, mos_range=mos_range,
                      mean_abs_bound_mos=settings.mean_abs_bound(mos_range))
    if not plain and settings.remedy:
        ranked = sensitive_nodes(out_path, pre_path, calib_inputs[:SENSITIVITY_INPUTS], meta.preprocess.input_name,
                                 work)
        result.sensitivity_db = {item.tensor: round(item.sqnr_db, 2) for item in ranked}
        blocks = block_sensitivity(pre_path, target, cache, calibration, meta, calib_inputs[:BLOCK_INPUTS], work)
        result.block_error_mos = {block.scope: round(block.error * mos_range, 4) for block in blocks}
        searches = {"tensors": [item.nodes for item in ranked], "blocks": [block.nodes for block in blocks]}
        bounds = {"tensors": int(settings.max_float_fraction * len(ranked)),
                  "blocks": _fewest_over(searches["blocks"], settings.max_float_fraction * len(nodes_of(ranked)))}
        found: dict[str, tuple[_Probe, list[str]]] = {}
        for unit, groups in searches.items():
            def build(k: int, unit: str = unit, groups: list[list[str]] = groups) -> Path:
                return quantize(pre_path, work / f"{unit}{k}{target.suffix}", target, cache, calibration, meta,
                                _flat(groups[:k]))

            probe = _bisect(build, lambda path: gate(path, reference, settings, mos_range), len(groups), result,
                            bounds[unit], unit)
            if probe is not None:
                found[unit] = (probe, _flat(groups[:probe.kept]))
        within = {unit: hit for unit, hit in found.items() if hit[0].kept <= bounds[unit]}
        if found and not within:
            unit = "tensors" if "tensors" in found else "blocks"
            probe, total = found[unit][0], len(searches[unit])
            result.refusal = (f"it passes only with {probe.kept} of its {total} quantized {unit} in float "
                              f"(more than {settings.max_float_fraction:.0%}): not an INT8 model")
            result.verification = probe.verification
        if within:
            result.ranking, (probe, kept) = min(within.items(), key=lambda item: len(item[1][1]))
            if fp32_path is not None:
                result.speed_img_s["int8_plain"] = throughput(out_path, reference.inputs)
            probe.path.replace(out_path)
            result.verification = probe.verification
            result.kept_in_float = kept
            log.info("%s: the %d most sensitive of %d quantized %s kept in float, by %d nodes (%s%s): %s",
                     out_path.name, probe.kept, len(searches[result.ranking]), result.ranking, len(kept),
                     ", ".join(kept[:4]), ", ..." if len(kept) > 4 else "", _figures(probe.verification, mos_range))
        else:
            quantize(pre_path, out_path, target, cache, calibration, meta)  # the plain graph, kept
    if fp32_path is not None:
        _judge_speed(result, fp32_path, out_path, reference.inputs, settings.require_speedup)
    _record_gate(out_path, result)
    return result


def _judge_speed(result: Int8Gate, fp32_path: Path, path: Path, inputs: np.ndarray,
                 required: float | None) -> None:
    """Measure FP32 and the final graph in alternating rounds; say so when INT8 does not pay here
    (and fail the gate below ``required``)."""
    key = "int8_mixed" if result.kept_in_float else "int8"
    fp32, int8 = speed_ratio(fp32_path, path, inputs)
    result.speed_img_s.update({"fp32": fp32, key: int8})
    ratio = int8 / fp32
    if ratio < max(1.0, required or 0.0):
        result.speed_note = (f"{path.name} runs {ratio:.2f}x FP32 at batch {SPEED_BATCH} on this CPU "
                             f"({int8_class()}): INT8 does not pay here; model.onnx is as fast")
        log.warning("%s", result.speed_note)
    if required is not None and ratio < required:
        result.refusal = f"it runs {ratio:.2f}x FP32 on this CPU, below --require-speedup {required}"


def _flat(groups: Sequence[Sequence[str]]) -> list[str]:
    """The nodes of ``groups``, each once, in order."""
    return list(dict.fromkeys(node for group in groups for node in group))


def _fewest_over(groups: Sequence[Sequence[str]], nodes: float) -> int:
    """The largest ``k`` whose first ``k`` groups hold at most ``nodes`` nodes."""
    return next((k - 1 for k in range(1, len(groups) + 1) if len(_flat(groups[:k])) > nodes), len(groups))


@dataclass
class Block:
    """One block of a network (a module scope of its exported graph) and what quantizing it alone costs.

    Attributes:
        scope: the scope, e.g. ``/model/features/stages.1/stages.1.0``.
        error: mean abs error of the score, unit scale, with only this block quantized.
        nodes: its quantizable nodes.
    """

    scope: str
    error: float
    nodes: list[str]


def network_blocks(graph: onnx.GraphProto, exclude: Sequence[str] = (), most: int = MAX_BLOCKS
                   ) -> dict[str, list[str]]:
    """The graph's nodes (less ``exclude`` and Q/DQ) grouped by module scope, at the deepest level with at
    most ``most`` groups.

    An exporter names a node by the module path that made it (torch: ``/model/features/stages.1/
    stages.1.0/conv_dw/Conv``): the scopes one level deep are the network's largest parts, each
    level down finer blocks. A node with a shorter path is its own group at deeper levels.
    """
    skipped = set(exclude)
    names = [node.name for node in graph.node if node.name and node.name not in skipped
             and node.op_type not in ("QuantizeLinear", "DequantizeLinear")]
    chosen: dict[str, list[str]] = {"": names}
    for depth in range(1, max((name.count("/") for name in names), default=0) + 1):
        groups: dict[str, list[str]] = {}
        for name in names:
            groups.setdefault("/".join(name.split("/")[:depth + 1]), []).append(name)
        if len(groups) > most:
            break
        chosen = groups
    return chosen


def block_sensitivity(pre_path: Path, target: Int8Target, cache: Path, calibration: dict[str, Any],
                      meta: ArtifactMeta, inputs: np.ndarray, work: Path) -> list[Block]:
    """The network's blocks (:func:`network_blocks`), the one whose quantization alone moves the score most
    first: each measured as a graph with only that block quantized, against the float graph, on ``inputs``
    (calibration photos: the gate's stay unseen)."""
    graph = onnx.load(str(pre_path), load_external_data=False).graph
    groups = network_blocks(graph, float_tail(graph))
    every = _flat(list(groups.values()))
    with OrtRunner(pre_path, provider="cpu") as runner:
        reference = run_batched(runner.infer, inputs, SPEED_BATCH)
    blocks = []
    for scope, nodes in groups.items():
        members = set(nodes)
        path = quantize(pre_path, work / f"block{target.suffix}", target, cache, calibration, meta,
                        [node for node in every if node not in members])
        with OrtRunner(path, provider="cpu") as runner:
            error = float(np.mean(np.abs(run_batched(runner.infer, inputs, SPEED_BATCH) - reference)))
        blocks.append(Block(scope, error, nodes))
    return sorted(blocks, key=lambda block: -block.error)


def _is_float(path: Path) -> bool:
    """No quantization left in the graph."""
    return not any(node.op_type in ("QuantizeLinear", "DequantizeLinear")
                   for node in onnx.load(str(path), load_external_data=False).graph.node)


def _bisect(build: Callable[[int], Path], judge: Callable[[Path], Verification], candidates: int,
            result: Int8Gate, acceptable: int, unit: str = "tensors") -> _Probe | None:
    """The smallest ``k <= candidates`` whose graph, with the ``k`` most sensitive ``unit`` (tensors or blocks)
    in float, passes:
    doubling, then bisection (the search Polygraphy's ``debug precision`` runs over layers).
    ``None`` when even the graph with all of them in float (the float graph) fails. Once
    every ``k`` left exceeds ``acceptable`` the bisection stops: the passing graph found is
    not an INT8 model whatever its exact ``k``."""
    tried: dict[int, _Probe] = {}

    def attempt(k: int) -> _Probe:
        path = build(k)
        tried[k] = _Probe(k, path, judge(path))
        result.probes.append({f"{unit}_in_float": k, "srocc": _srocc(tried[k].verification),
                              "max_abs_mos": tried[k].verification.worst.max_abs * result.mos_range,
                              "passed": tried[k].verification.passed, "float_graph": _is_float(path)})
        log.info("keeping the %d most sensitive %s in float: %s", k, unit,
                 "passes" if tried[k].verification else "still fails")
        return tried[k]

    if not candidates:
        return None
    low, high = 0, 1  # plain INT8 (nothing kept) is known to fail
    while high < candidates and not attempt(high).verification:
        low, high = high, min(2 * high, candidates)
    if high not in tried and not attempt(high).verification:
        return None  # the float graph fails: no quantization is to blame
    while high - low > 1 and low < acceptable:
        middle = (low + high) // 2
        if attempt(middle).verification:
            high = middle
        else:
            low = middle
    return tried[high]


def _record_gate(path: Path, result: Int8Gate) -> None:
    """Write the gate's figures into the model's artifact record."""
    model = onnx.load(str(path))
    meta = read_meta(model, str(path))
    meta.extra = {**meta.extra, "int8": {**meta.extra["int8"], "kept_in_float": result.kept_in_float,
                                         "gate": result.summary_dict()}}
    save_with_meta(model, meta, path)


def _srocc(check: Verification) -> float:
    return min(c.srocc for c in check.comparisons)


def _figures(check: Verification, mos_range: float) -> str:
    return (f"SROCC {_srocc(check):.4f}, max abs {check.worst.max_abs * mos_range:.3f} MOS on {check.photos} "
            f"held-out photos: {'ok' if check else 'below the bound'}")


def throughput(path: Path, inputs: np.ndarray, batch_size: int = SPEED_BATCH, seconds: float = 2.0,
               threads: int | None = None) -> float:
    """Images per second of a model on ONNX Runtime's CPU provider (warm-up excluded; at least ``seconds``)."""
    batch = np.ascontiguousarray(inputs[np.arange(batch_size) % len(inputs)])
    with OrtRunner(path, provider="cpu", threads=threads) as runner:
        for _ in range(3):
            runner.infer(batch)
        return _timed_rate(runner, batch, seconds)


def _timed_rate(runner: OrtRunner, batch: np.ndarray, seconds: float) -> float:
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < seconds:
        runner.infer(batch)
        runs += 1
    return runs * len(batch) / (time.perf_counter() - start)


def speed_ratio(first: Path, second: Path, inputs: np.ndarray, batch_size: int = SPEED_BATCH, rounds: int = 4,
                seconds: float = 0.5) -> tuple[float, float]:
    """Images per second of two models on ONNX Runtime's CPU provider, timed in alternating rounds
    (both sessions open; the median round of each), so that a load changing meanwhile
    hits both alike."""
    batch = np.ascontiguousarray(inputs[np.arange(batch_size) % len(inputs)])
    with OrtRunner(first, provider="cpu") as a, OrtRunner(second, provider="cpu") as b:
        for runner in (a, b):
            for _ in range(3):
                runner.infer(batch)
        rates: tuple[list[float], list[float]] = ([], [])
        for _ in range(rounds):
            for runner, found in zip((a, b), rates, strict=True):
                found.append(_timed_rate(runner, batch, seconds))
    return float(np.median(rates[0])), float(np.median(rates[1]))


def work_dir() -> tempfile.TemporaryDirectory[str]:
    """A scratch folder for the pre-processed model, the calibration cache and the probes."""
    return tempfile.TemporaryDirectory(prefix="qualitynet-int8-")
