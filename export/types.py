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
from qualitynet.export.targets import TARGETS

__all__ = [
    "Comparison",
    "ExportResult",
    "Int8Gate",
    "Tolerance",
    "TensorRTUnavailableError",
    "Verification",
    "VerificationError",
    "ranks_line",
]


class VerificationError(QualityNetError):
    """An exported model disagrees with its reference beyond the tolerance; files are kept."""


class TensorRTUnavailableError(QualityNetError):
    """TensorRT's builder (or a GPU for it) is missing; the ONNX files are written and verified.

    Raised by :func:`~qualitynet.export.export_all`, it carries the export's ``result`` (what was
    written), so a caller can still use the ONNX files (e.g. write the Triton repository).
    """

    def __init__(self, message: str, result: ExportResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class Tolerance:
    """When two score lists agree (unit scale, i.e. the network's raw output).

    As in Polygraphy's ``CompareFunc.simple``, one score fails only if it exceeds *both*
    the absolute and the relative bound; the lists must also rank the photos alike,
    ``SROCC >= min_srocc``, or, with a ``rank_resolution``, keep the order of every two photos
    the reference scores more than ``rank_resolution`` apart (closer ones count as ties: a
    model whose scores crowd at one end of its scale has SROCC measure the order of
    differences nobody can see). ``atol`` suits a trained model; a model that amplifies
    rounding (an untrained one, typically) gets ``atol`` widened to ``sensitivity`` times
    its measured noise floor (see :meth:`widened`).
    """

    atol: float
    rtol: float
    min_srocc: float
    sensitivity: float = 10.0
    rank_resolution: float = 0.0

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
        flipped_gap: the largest gap between two reference scores whose order the candidate reverses.
        mismatches: how many scores exceed both ``atol`` and ``rtol``.
        passed: no mismatch, and ``srocc >= tolerance.min_srocc`` or (with a rank resolution)
            ``flipped_gap <= tolerance.rank_resolution``.
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
    flipped_gap: float
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
            f"(>= {self.tolerance.min_srocc}{self._resolution()}): {verdict}"
        )

    def _resolution(self) -> str:
        if not self.tolerance.rank_resolution:
            return ""
        return (f", or every order beyond {self.tolerance.rank_resolution:.2e} kept: "
                f"largest reversed gap {self.flipped_gap:.2e}")


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


def _worst_gap(check: Verification) -> float:
    gaps = [c.flipped_gap for c in check.comparisons]
    return math.nan if any(math.isnan(gap) for gap in gaps) else max(gaps)


def ranks_line(figures: dict[str, Any]) -> str:
    """How far apart (MOS) the farthest two photos whose order INT8 reverses are, beside the gate's resolution."""
    gap = figures["flipped_gap_mos"]
    if gap is None or math.isnan(gap):
        return "ranks undefined (constant scores)"
    order = "every order kept" if gap == 0 else f"orders reversed only within {gap:.3f} MOS"
    return f"{order} (resolution {figures['rank_resolution_mos']:.3f})"


@dataclass
class Int8Gate:
    """The accuracy gate of one INT8 graph on held-out photos, against the FP32 model; truthy on pass.

    Attributes:
        target: ``cpu`` (ONNX Runtime) or ``tensorrt`` (the Q/DQ graph for TensorRT).
        model: the INT8 ONNX file's name.
        verification: the final graph's comparisons (unit scale; ``mos_range`` converts).
        plain: the plain INT8 graph's comparisons (the same as ``verification`` when nothing is kept).
        mos_range: width of the MOS scale, to report errors on it.
        kept_in_float: nodes the remedy left in float, most sensitive first.
        sensitivity_db: SQNR of each quantized tensor, dB, when the remedy ran.
        block_error_mos: each block's score error (mean abs, MOS scale) when it alone is
            quantized, when the remedy ran.
        ranking: which ranking the kept nodes come from (``tensors`` or ``blocks``), when nodes are kept.
        probes: each graph the remedy tried (tensors or blocks kept, SROCC, max abs MOS, passed).
        speed_img_s: ONNX Runtime CPU images/s at batch 8 (``fp32``, ``int8`` or
            ``int8_plain``/``int8_mixed``), for the CPU graph.
        refusal: why a graph whose figures pass is failed all the same (it passes only with
            most of its tensors in float); empty otherwise.
        speed_note: set when the final graph runs no faster than FP32 on this CPU.
        mean_abs_bound_mos: the gate's bound on the mean abs error, MOS scale.
    """

    target: str
    model: str
    verification: Verification
    plain: Verification
    mos_range: float
    kept_in_float: list[str] = field(default_factory=list)
    sensitivity_db: dict[str, float] = field(default_factory=dict)
    block_error_mos: dict[str, float] = field(default_factory=dict)
    ranking: str = ""
    probes: list[dict[str, Any]] = field(default_factory=list)
    speed_img_s: dict[str, float] = field(default_factory=dict)
    refusal: str = ""
    speed_note: str = ""
    mean_abs_bound_mos: float | None = None

    @property
    def passed(self) -> bool:
        """The final graph passed (and is an INT8 model)."""
        return self.verification.passed and not self.refusal

    def __bool__(self) -> bool:
        return self.passed

    def figures(self, check: Verification | None = None) -> dict[str, Any]:
        """Worst SROCC and max/mean abs error (MOS scale) of ``check`` (default the final graph), with the bounds."""
        check = self.verification if check is None else check
        return {"srocc": min(c.srocc for c in check.comparisons), "max_abs_mos": check.worst.max_abs * self.mos_range,
                "mean_abs_mos": max(c.mean_abs for c in check.comparisons) * self.mos_range,
                "flipped_gap_mos": _worst_gap(check) * self.mos_range,
                "min_srocc": check.comparisons[0].tolerance.min_srocc,
                "rank_resolution_mos": check.comparisons[0].tolerance.rank_resolution * self.mos_range,
                "max_abs_bound_mos": check.comparisons[0].tolerance.atol * self.mos_range,
                "mean_abs_bound_mos": self.mean_abs_bound_mos, "photos": check.photos,
                "passed": check.passed and (check is not self.verification or not self.refusal)}

    def describe(self) -> str:
        """One line for humans: the gate's figures, what was kept in float, the speed-up, the verdict."""
        figures = self.figures()
        kept = f", {len(self.kept_in_float)} sensitive nodes kept in float" if self.kept_in_float else ""
        speed = self.speed_img_s
        faster = (f", {speed.get('int8', speed.get('int8_mixed', 0)) / speed['fp32']:.2f}x FP32 on this CPU at batch 8"
                  if speed.get("fp32") else "")
        return (f"{self.model}: INT8 ({self.target}) vs model.onnx on {figures['photos']} held-out photos: "
                f"mean abs error {figures['mean_abs_mos']:.3f} MOS (bound {figures['mean_abs_bound_mos']:.3f}), "
                f"max {figures['max_abs_mos']:.3f}, SROCC {figures['srocc']:.4f}, {ranks_line(figures)}{kept}"
                f"{faster}: {'ok' if self else 'FAILED'}")

    def summary_dict(self) -> dict[str, Any]:
        """The figures the artifact record keeps (JSON-ready)."""
        ready: dict[str, Any] = _json_ready({
            **self.figures(), "plain": self.figures(self.plain), "kept_in_float": self.kept_in_float,
            **({"ranking": self.ranking} if self.ranking else {}),
            "speed_img_s": {k: round(v, 1) for k, v in self.speed_img_s.items()}, "probes": self.probes,
            **({"refusal": self.refusal} if self.refusal else {}),
            **({"speed_note": self.speed_note} if self.speed_note else {})})
        return ready

    def to_dict(self) -> dict[str, Any]:
        """Everything, for ``<model>.export.json``."""
        ready: dict[str, Any] = _json_ready({
            "target": self.target, "model": self.model, **self.summary_dict(),
            "sensitivity_db": self.sensitivity_db, "block_error_mos": self.block_error_mos,
            "verification": self.verification.to_dict()})
        return ready


@dataclass
class ExportResult:
    """What :func:`qualitynet.export.export_all` wrote and measured.

    Attributes:
        checkpoint: the source checkpoint.
        config_name: its model configuration.
        opset: the ONNX opset exported.
        report: the ``<model>.export.json`` holding all figures below.
        files: the files written, by target (:data:`~qualitynet.export.targets.TARGETS`: ``onnx``,
            ``fp16_onnx``, ``plan``, ``int8_onnx``, ``int8_trt_onnx``, ``int8_plan``); ``onnx`` always.
        seconds: wall time of each step (``onnx``, ``fp16``, ``tensorrt``, ...).
        verifications: parity of each artifact with its reference, keyed by artifact.
        tensorrt_skipped: why no engine was built, when one was asked for and not built.
        photos: the verification photos, in score order.
        versions: software versions of the export.
        int8: the INT8 gates by graph (``cpu``, ``tensorrt``, ``tensorrt_plan``).
        int8_info: the calibration and gate photos used, why no INT8 engine was built, and
            ``error`` / ``incomplete`` when the INT8 step did not finish.
        earlier: entries of an earlier report of this checkpoint for files this run did not
            write (still exports of it), merged into this report's.
    """

    checkpoint: Path
    config_name: str
    opset: int
    report: Path
    files: dict[str, Path]
    seconds: dict[str, float] = field(default_factory=dict)
    verifications: dict[str, Verification] = field(default_factory=dict)
    tensorrt_skipped: str | None = None
    photos: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    int8: dict[str, Int8Gate] = field(default_factory=dict)
    int8_info: dict[str, Any] = field(default_factory=dict)
    earlier: dict[str, Any] = field(default_factory=dict)

    @property
    def onnx(self) -> Path:
        """The FP32 ONNX model (always written first)."""
        return self.files["onnx"]

    def file(self, target: str) -> Path | None:
        """The file written for ``target`` (a key of ``TARGETS``), or None."""
        return self.files.get(target)

    def check(self, target: str) -> Verification | Int8Gate | None:
        """The check of ``target``'s file so far (where ``TARGETS`` says its figures live), or None."""
        entry = TARGETS[target]
        checks: dict[str, Verification] | dict[str, Int8Gate] = (
            self.verifications if entry.section == "verifications" else self.int8)
        return checks.get(entry.figures)

    @property
    def passed(self) -> bool:
        """Every verification and INT8 gate so far passed (and no INT8 step is unfinished or failed)."""
        return (all(self.verifications.values()) and all(self.int8.values())
                and not {"error", "incomplete"} & set(self.int8_info))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: what ``<model>.export.json`` holds."""
        written = {key: str(path) for key, path in {"checkpoint": self.checkpoint, **self.files}.items()}
        earlier = self.earlier
        verifications = {**earlier.get("verifications", {}),
                         **{key: value.to_dict() for key, value in self.verifications.items()}}
        int8 = ({**self.int8_info, **{k: v.to_dict() for k, v in self.int8.items()}}
                if self.int8 or self.int8_info else earlier.get("int8"))
        gates = [gate for gate in (int8 or {}).values() if isinstance(gate, dict) and "passed" in gate]
        int8_passed = all(gate["passed"] for gate in gates) and not {"error", "incomplete"} & set(int8 or {})
        return {
            "config_name": self.config_name,
            "opset": self.opset,
            "files": {**{k: v for k, v in earlier.get("files", {}).items() if k not in written}, **written},
            "seconds": {**earlier.get("seconds", {}), **{key: round(value, 2) for key, value in self.seconds.items()}},
            "passed": all(v.get("passed", False) for v in verifications.values()) and int8_passed,
            "verifications": verifications,
            "tensorrt_skipped": self.tensorrt_skipped,
            "photos": self.photos,
            "versions": self.versions,
            **({"int8": int8} if int8 else {}),
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
