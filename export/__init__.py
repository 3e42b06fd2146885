"""Export stage: PyTorch checkpoint -> ONNX -> FP16 ONNX / INT8 ONNX -> TensorRT engines, each verified.

Example:
    >>> from qualitynet.export import export_all
    >>> result = export_all("runs/koniq/model.pt", fp16=True, require_tensorrt=False)  # doctest: +SKIP
    >>> result.verifications["onnx"].worst.max_abs  # doctest: +SKIP
    >>> int8 = export_all("runs/koniq/model.pt", int8=Int8Settings(photos="koniq/train"),
    ...                   photos="koniq/test")  # doctest: +SKIP
    >>> int8.int8["cpu"].figures()["srocc"]  # doctest: +SKIP
"""

from qualitynet.export.exporter import export_all
from qualitynet.export.fp16 import convert_fp16
from qualitynet.export.int8 import Int8Settings
from qualitynet.export.onnx import DEFAULT_OPSET, export_onnx
from qualitynet.export.tensorrt import BuildSettings, build_engine, build_int8_engine
from qualitynet.export.types import (
    Comparison,
    ExportResult,
    Int8Gate,
    TensorRTUnavailableError,
    Tolerance,
    Verification,
    VerificationError,
)
from qualitynet.export.verify import TOLERANCES, Reference, compare, load_photos, torch_scorer, verify

__all__ = [
    "DEFAULT_OPSET",
    "TOLERANCES",
    "BuildSettings",
    "Comparison",
    "ExportResult",
    "Int8Gate",
    "Int8Settings",
    "Reference",
    "TensorRTUnavailableError",
    "Tolerance",
    "Verification",
    "VerificationError",
    "build_engine",
    "build_int8_engine",
    "compare",
    "convert_fp16",
    "export_all",
    "export_onnx",
    "load_photos",
    "torch_scorer",
    "verify",
]
