"""Value types of the export stage: tolerances, parity results and the export summary.

Only the standard library and numpy, so the benchmark can read a result without torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qualitynet.errors import QualityNetError

__all__ = ["Comparison", "ExportResult", "Tolerance", "TensorRTUnavailableError", "Verification", "VerificationError"]


class VerificationError(QualityNetError):
    """An exported model disagrees with its reference beyond the tolerance; files are kept."""


class TensorRTUnavailableError(QualityNetError):
    """TensorRT's builder (or a GPU for it) is missing; the ONNX files are written and verified."""


@dataclass(frozen=True)
class Tolerance:
    """When two score lists agree (unit scale, i.e. the network's raw output).

    As in Polygraphy's ``CompareFunc.simple``, one score fails only if it exceeds *both*
    the absolute and the relative bound; the lists must also rank the photos alike,
    ``SROCC >= min_srocc``. ``atol`` suits a trained model; a model that amplifies
    rounding (an untrained one, typically) gets ``atol`` widened to ``sensitivity`` times
    its measured noise floor (see :meth:`widened`).
    """

    atol: float
    rtol: float
    min_srocc: float
    sensitivity: float = 10.0

    def widened(self, noise_floor: float) -> Tolerance:
        """This tolerance with ``atol >= sensitivity * noise_floor``."""
        return dataclasses.replace(self, atol=max(self.atol, self.sensitivity * noise_floor))


@dataclass
class Comparison:
    """Agreement of one candidate run with the reference; truthy when it passes.

    Attributes:
        label: what was compared, e.g. ``"model.onnx vs torch"``.
        batch_size: the candidate's batch size.
        tolerance: the bounds it was judged against (already widened for the noise floor).
        noise_floor: how far the reference itself moves when its input is perturbed by one
            rounding step at the candidate's precision.
        max_abs: largest absolute difference, i.e. the ``atol`` actually needed.
        max_rel: largest difference relative to the reference, the ``rtol`` actually needed.
        mean_abs: mean absolute difference.
        median_abs: median absolute difference.
        p90_abs: 90th percentile of the absolute difference.
        srocc: Spearman rank correlation of the two score lists.
        mismatches: how many scores exceed both ``atol`` and ``rtol``.
        passed: no mismatch and ``srocc >= tolerance.min_srocc``.
    """

    label: str
    batch_size: int
    tolerance: Tolerance
    noise_floor: float
    max_abs: float
    max_rel: float
    mean_abs: float
    median_abs: float
    p90_abs: float
    srocc: float
    mismatches: int
    passed: bool

    def __bool__(self) -> bool:
        return self.passed

    def summary(self) -> str:
        """One line for humans."""
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.label}, batch {self.batch_size}: max abs {self.max_abs:.2e} (atol {self.tolerance.atol:.1e}), "
            f"max rel {self.max_rel:.2e} (rtol {self.tolerance.rtol:.0e}), SROCC {self.srocc:.4f} "
            f"(>= {self.tolerance.min_srocc}): {verdict}"
        )


@dataclass
class Verification:
    """A candidate model checked against a reference at several batch sizes; truthy on pass."""

    candidate: str
    reference: str
    photos: int
    comparisons: list[Comparison]
    seconds: float

    @property
    def passed(self) -> bool:
        """Every batch size passed."""
        return all(self.comparisons)

    @property
    def worst(self) -> Comparison:
        """The comparison with the largest absolute error (what a summary should show)."""
        return max(self.comparisons, key=lambda c: c.max_abs)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form for ``<model>.export.json`` (NaN and infinity become null)."""
        ready: dict[str, Any] = _json_ready({**dataclasses.asdict(self), "passed": self.passed})
        return ready


@dataclass
class ExportResult:
    """What :func:`qualitynet.export.export_all` wrote and measured.

    Attributes:
        checkpoint: the source checkpoint.
        config_name: its model configuration.
        opset: the ONNX opset exported.
        onnx: the FP32 ONNX model.
        fp16_onnx: the FP16 ONNX model, when asked for.
        plan: the TensorRT engine, when built.
        report: the ``<model>.export.json`` holding all figures below.
        seconds: wall time of each step (``onnx``, ``fp16``, ``tensorrt``, ...).
        verifications: parity of each artifact with its reference, keyed by artifact.
        tensorrt_skipped: why no engine was built, when one was asked for and not built.
        photos: the verification photos, in score order.
        versions: software versions of the export.
    """

    checkpoint: Path
    config_name: str
    opset: int
    onnx: Path
    report: Path
    fp16_onnx: Path | None = None
    plan: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    verifications: dict[str, Verification] = field(default_factory=dict)
    tensorrt_skipped: str | None = None
    photos: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """Every verification so far passed."""
        return all(self.verifications.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: what ``<model>.export.json`` holds."""
        files = {"checkpoint": self.checkpoint, "onnx": self.onnx, "fp16_onnx": self.fp16_onnx, "plan": self.plan}
        return {
            "config_name": self.config_name,
            "opset": self.opset,
            "files": {key: str(path) for key, path in files.items() if path is not None},
            "seconds": {key: round(value, 2) for key, value in self.seconds.items()},
            "passed": self.passed,
            "verifications": {key: value.to_dict() for key, value in self.verifications.items()},
            "tensorrt_skipped": self.tensorrt_skipped,
            "photos": self.photos,
            "versions": self.versions,
        }


def _json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (an undefined SROCC, an infinite error) as ``None``."""
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
