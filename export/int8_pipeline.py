"""The INT8 step of ``iqa-export --int8``: calibrate once, quantize and gate both graphs, build the engine.

Runs after the FP32 ONNX model is verified. The gate's photos are held out: ``--photos``
when given (and then they must not be calibration photos), else the bundled photos the
calibration never sees (:data:`~qualitynet.export.calibration.GATE_SOURCES`) plus crops.
Figures go to the export report after each graph, so a failure leaves them behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from qualitynet.artifact import BatchProfile, PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.export.calibration import GATE_SOURCES, PhotoDataReader, calibration_inputs, photo_inputs
from qualitynet.export.int8 import (
    Int8Settings,
    calibrate,
    cpu_target,
    gate,
    preprocess_for_quantization,
    quantize_and_gate,
    tensorrt_target,
    work_dir,
)
from qualitynet.export.onnx import read_meta
from qualitynet.export.types import ExportResult, Int8Gate, TensorRTUnavailableError, VerificationError
from qualitynet.export.verify import Reference, load_photos
from qualitynet.runtime.discovery import iter_folder
from qualitynet.runtime.ort_runner import OrtRunner

__all__ = ["GATE_COUNT", "GATE_LIMIT", "check_held_out", "export_int8", "gate_inputs"]

log = logging.getLogger(__name__)

GATE_COUNT = 48  # bundled held-out inputs: 6 photos and 42 crops
GATE_LIMIT = 256  # at most this many of a --photos folder


def check_held_out(photos: str | Path | Sequence[str | Path] | None, calib_photos: str | Path | None) -> None:
    """Refuse gate photos that are also calibration photos (cheap: run it before any work).

    Raises:
        QualityNetError: a photo is in both sets.
    """
    if photos is None or calib_photos is None:
        return  # the bundled gate and calibration photos are disjoint halves
    shared = _files(photos) & _files(calib_photos)
    if shared:
        raise QualityNetError(
            f"{len(shared)} photo(s) are both calibration and gate photos (e.g. {sorted(shared)[0]}); the INT8 "
            "gate must judge on held-out photos: give --photos and --calib-photos disjoint folders")


def gate_inputs(photos: str | Path | Sequence[str | Path] | None, cfg: PreprocessCfg,
                calib_photos: str | Path | None) -> tuple[np.ndarray, list[str]]:
    """The held-out photos of the INT8 gate: ``photos`` (at most :data:`GATE_LIMIT`), or by
    default :data:`GATE_COUNT` inputs from the bundled photos never used for calibration.

    Raises:
        QualityNetError: a photo is also a calibration photo, or the photos cannot be read.
    """
    check_held_out(photos, calib_photos)
    if photos is None:
        return photo_inputs(None, cfg, GATE_COUNT, seed=1, bundled=GATE_SOURCES)
    return load_photos(photos, cfg, limit=GATE_LIMIT)


def _files(photos: str | Path | Sequence[str | Path]) -> set[str]:
    if isinstance(photos, (str, Path)):
        paths = list(iter_folder(photos)) if Path(photos).is_dir() else [str(photos)]
    else:
        paths = [str(path) for path in photos]
    return {str(Path(path).resolve()) for path in paths}


def export_int8(result: ExportResult, cfg: PreprocessCfg, photos: str | Path | Sequence[str | Path] | None,
                settings: Int8Settings, profile: BatchProfile, workspace: int, timing_cache: str | Path | None,
                opt_level: int, write_report: Callable[[ExportResult], None]) -> None:
    """Write and gate ``<stem>.int8.onnx`` and ``<stem>.int8.trt.onnx``; build ``<stem>.int8.plan`` if possible.

    Args:
        result: the export so far (its FP32 ONNX model is verified); updated in place.
        cfg: the model's preprocessing.
        photos: the gate's held-out photos (``None``: bundled ones never used for calibration).
        settings: calibration and gate settings.
        profile / workspace / timing_cache / opt_level: as for the FP16 engine.
        write_report: writes ``result`` to its report file.

    Raises:
        VerificationError: a graph fails its gate even with its sensitive nodes in float
            (both graphs are written and gated first; files and figures kept).
    """
    stem = result.onnx.name.removesuffix(".onnx")
    out = result.onnx.parent
    calib, _ = calibration_inputs(settings.photos, cfg, settings.count, settings.seed)
    held_out, names = gate_inputs(photos, cfg, settings.photos)
    result.int8_info = {**settings.calibration_record(len(calib)), "gate_photos": len(names),
                        "gate_source": "bundled (held out)" if photos is None else str(photos)}
    log.info("INT8: calibrating on %d inputs (%s), gating on %d held-out photos", len(calib), settings.method,
             len(names))
    meta = read_meta(onnx.load(str(result.onnx)), str(result.onnx))
    with OrtRunner(result.onnx, provider="cpu") as runner, work_dir() as scratch:
        work = Path(scratch)
        reference = Reference(result.onnx.name, runner.infer, held_out)
        pre = preprocess_for_quantization(result.onnx, work / "pre.onnx")
        cache = work / "calibration.json"
        calibrate(pre, PhotoDataReader(cfg.input_name, calib), settings.method, cache, work)
        for target, attribute in ((cpu_target(), "int8_onnx"), (tensorrt_target(), "int8_trt_onnx")):
            path = out / f"{stem}{target.suffix}"
            setattr(result, attribute, path)
            result.int8[target.name] = quantize_and_gate(
                pre, path, target, settings, cache, meta, reference, calib, work,
                fp32_path=result.onnx if target.name == "cpu" else None)
            write_report(result)
        if result.int8["tensorrt"]:
            _build_engine(result, calib, out / f"{stem}.int8.plan", profile, workspace, timing_cache, opt_level,
                          reference, settings)
        write_report(result)
    failed = [gate for gate in result.int8.values() if not gate]
    if failed:
        raise VerificationError("; ".join(_failure(gate) for gate in failed) +
                                f"; the files are kept and every figure is in {result.report}")


def _failure(gate: Int8Gate) -> str:
    figures = gate.figures()
    most = max((probe["tensors_in_float"] for probe in gate.probes), default=0)
    kept = f" even with its {most} most sensitive tensors in float" if most else ""
    return (f"{gate.model} fails the INT8 gate{kept}: SROCC {figures['srocc']:.4f} (needs >= {figures['min_srocc']}), "
            f"max abs error {figures['max_abs_mos']:.3f} MOS on {figures['photos']} held-out photos")


def _build_engine(result: ExportResult, calib: np.ndarray, plan: Path, profile: BatchProfile, workspace: int,
                  timing_cache: str | Path | None, opt_level: int, reference: Reference,
                  settings: Int8Settings) -> None:
    """Build the INT8 engine where TensorRT and a GPU are present and gate it like the ONNX graphs."""
    from qualitynet.export.tensorrt_int8 import build_int8_engine

    assert result.int8_trt_onnx is not None
    try:
        build_int8_engine(result.onnx, result.int8_trt_onnx, plan, calib, profile, workspace, timing_cache,
                          opt_level)
    except TensorRTUnavailableError as exc:
        result.int8_info["engine_skipped"] = str(exc)
        log.info("no INT8 TensorRT engine: %s; %s runs on ONNX Runtime meanwhile", exc, result.int8_onnx)
        return
    result.int8_plan = plan
    check = gate(plan, reference, settings, mos_range=result.int8["tensorrt"].mos_range)
    result.int8["tensorrt_plan"] = Int8Gate("tensorrt_plan", plan.name, check, check, result.int8["tensorrt"].mos_range)
