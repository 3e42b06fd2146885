"""The INT8 step of ``iqa-export --int8``: calibrate once, quantize and gate both graphs, build the engine.

Runs after the FP32 ONNX model is verified. The gate's photos are held out: ``--gate-photos``
when given, else the bundled photos the calibration never sees
(:data:`~qualitynet.export.calibration.GATE_SOURCES`) plus crops. Held out means two
things, both checked and recorded: no gate photo has the content (file SHA-256) of a
calibration photo, and, where the photos come from a dataset CSV with a ``group`` column
(the layout ``iqa-train --dataset csv`` reads; crops and distortions of one scene share a
group), no gate photo shares a group with the calibration photos: such photos leave the
gate (the bundled calibration photos are one group per scene, named like the demo's).
Figures go to the export report after each graph, and the report is written however the
step ends, so a failure leaves them behind.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from qualitynet.artifact import ArtifactMeta, PreprocessCfg, file_sha256
from qualitynet.errors import QualityNetError
from qualitynet.export.calibration import (
    CALIBRATION_SOURCES,
    GATE_SOURCES,
    PhotoDataReader,
    calibration_inputs,
    photo_inputs,
)
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
from qualitynet.export.targets import TARGETS
from qualitynet.export.tensorrt import BuildSettings, build_int8_engine
from qualitynet.export.types import ExportResult, Int8Gate, TensorRTUnavailableError, VerificationError, ranks_line
from qualitynet.export.verify import Reference, load_photos
from qualitynet.runtime.discovery import expand_photos
from qualitynet.runtime.ort_runner import OrtRunner

__all__ = ["GATE_COUNT", "GATE_LIMIT", "HeldOut", "check_held_out", "export_int8", "gate_inputs", "listed_photos"]

log = logging.getLogger(__name__)

GATE_COUNT = 48  # bundled held-out inputs: 6 photos and 42 crops
GATE_LIMIT = 256  # at most this many of a --gate-photos folder


Photos = str | Path | Sequence[str | Path]


def listed_photos(photos: Photos) -> tuple[list[str], list[str] | None]:
    """The image files of a folder, a list of files, one file or a dataset CSV, and their groups
    (a CSV's ``group`` column; ``None`` where no groups are known).

    Raises:
        QualityNetError: a CSV that is not a dataset CSV.
    """
    if isinstance(photos, (str, Path)) and Path(photos).suffix.lower() == ".csv":
        from qualitynet.trainer.datasets import load_dataset

        index = load_dataset("csv", csv_path=photos)
        with open(photos, newline="", encoding="utf-8") as handle:
            grouped = "group" in (csv.DictReader(handle).fieldnames or [])
        return [str(path) for path in index.paths], list(index.groups) if grouped else None
    return expand_photos(photos), None


class HeldOut:
    """The gate's photos with what keeps them apart from the calibration photos.

    Attributes:
        photos: the gate photos left (``None``: the bundled held-out half).
        calibration: the calibration photos as files (``None``: the bundled half).
        record: how they were made disjoint, for the export report.
    """

    def __init__(self, photos: list[str] | None, calibration: list[str] | None, record: dict[str, Any]) -> None:
        self.photos, self.calibration, self.record = photos, calibration, record


def check_held_out(photos: Photos | None, calib_photos: Photos | None) -> HeldOut:
    """Make the gate photos disjoint from the calibration photos, by content and by group (cheap: run it first).

    A gate photo with the SHA-256 of a calibration photo is refused; one sharing a group
    with the calibration photos (both groups known) leaves the gate.

    Raises:
        QualityNetError: a photo is in both sets, or no gate photo is left.
    """
    calibration, calib_groups = listed_photos(calib_photos) if calib_photos is not None else (None, None)
    if calib_photos is None:
        calib_groups = list(CALIBRATION_SOURCES)
    if photos is None:
        return HeldOut(None, calibration, {"disjoint_by": ["scene (the bundled photos' two halves)"]})
    gate, gate_groups = listed_photos(photos)
    record: dict[str, Any] = {"disjoint_by": ["content (file SHA-256)"]}
    if calibration:
        hashes = {file_sha256(Path(path)): path for path in calibration}
        shared = [(path, hashes[digest]) for path in gate if (digest := file_sha256(Path(path))) in hashes]
        if shared:
            raise QualityNetError(
                f"{len(shared)} photo(s) are both calibration and gate photos (e.g. {shared[0][0]} has the content "
                f"of {shared[0][1]}); the INT8 gate must judge on held-out photos: give --gate-photos and "
                "--calib-photos disjoint sets")
    if gate_groups is None or calib_groups is None:
        record["groups"] = ("unknown (give --gate-photos and --calib-photos as dataset CSVs with a group column to "
                            "check)")
        return HeldOut(gate, calibration, record)
    common = sorted(set(gate_groups) & set(calib_groups))
    kept = [path for path, group in zip(gate, gate_groups, strict=True) if group not in common]
    record["disjoint_by"].append("group")
    if common:
        record["left_out"] = {"groups": common, "photos": len(gate) - len(kept)}
        log.info("INT8 gate: %d photo(s) of %d group(s) also calibrated on (%s) left out of the gate",
                 len(gate) - len(kept), len(common), ", ".join(common[:4]))
    if len(kept) < 2:
        raise QualityNetError(f"{photos}: every gate photo but {len(kept)} shares a group with the calibration photos "
                              f"({', '.join(common[:4])}); give --calib-photos from other groups")
    return HeldOut(kept, calibration, record)


def gate_inputs(held_out: HeldOut, cfg: PreprocessCfg) -> tuple[np.ndarray, list[str]]:
    """The held-out photos of the INT8 gate: ``held_out.photos`` (at most :data:`GATE_LIMIT`), or by
    default :data:`GATE_COUNT` inputs from the bundled photos never used for calibration.

    Raises:
        QualityNetError: the photos cannot be read.
    """
    if held_out.photos is None:
        return photo_inputs(None, cfg, GATE_COUNT, seed=1, bundled=GATE_SOURCES)
    return load_photos(held_out.photos, cfg, limit=GATE_LIMIT)


def export_int8(result: ExportResult, cfg: PreprocessCfg, photos: Photos | None, settings: Int8Settings,
                build: BuildSettings, write_report: Callable[[ExportResult], None]) -> None:
    """Write and gate ``<stem>.int8.onnx`` and ``<stem>.int8.trt.onnx``; build ``<stem>.int8.plan`` if possible.

    Args:
        result: the export so far (its FP32 ONNX model is verified); updated in place.
        cfg: the model's preprocessing.
        photos: the gate's held-out photos: a folder, files or a dataset CSV (``None``:
            bundled ones never used for calibration).
        settings: calibration and gate settings.
        build: the engine's build settings (as for the FP16 engine, without version compatibility).
        write_report: writes ``result`` to its report file; called after each graph and
            however the step ends (an error is recorded as ``int8.error``).

    Raises:
        VerificationError: a graph fails its gate even with its sensitive tensors in float
            (both graphs are written and gated first; files and figures kept).
    """
    try:
        _export_int8(result, cfg, photos, settings, build, write_report)
    except BaseException as exc:
        if not isinstance(exc, VerificationError):
            result.int8_info["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        write_report(result)


def _export_int8(result: ExportResult, cfg: PreprocessCfg, photos: Photos | None, settings: Int8Settings,
                 build: BuildSettings, write_report: Callable[[ExportResult], None]) -> None:
    stem = result.onnx.name.removesuffix(".onnx")
    out = result.onnx.parent
    result.int8_info["incomplete"] = True
    held = check_held_out(photos, settings.photos)
    calib, _ = calibration_inputs(held.calibration, cfg, settings.count, settings.seed)
    held_out, names = gate_inputs(held, cfg)
    result.int8_info.update({**settings.calibration_record(len(calib)), "gate_photos": len(names),
                             "gate_source": "bundled (held out)" if photos is None else str(photos), **held.record})
    log.info("INT8: calibrating on %d inputs (%s), gating on %d held-out photos", len(calib), settings.method,
             len(names))
    meta = read_meta(onnx.load(str(result.onnx)), str(result.onnx))
    with OrtRunner(result.onnx, provider="cpu") as runner, work_dir() as scratch:
        work = Path(scratch)
        reference = Reference(result.onnx.name, runner.infer, held_out)
        pre = preprocess_for_quantization(result.onnx, work / "pre.onnx")
        cache = work / "calibration.json"
        calibrate(pre, PhotoDataReader(cfg.input_name, calib), settings.method, cache, work)
        for target in (cpu_target(), tensorrt_target()):
            path = result.files[target.artifact] = TARGETS[target.artifact].path(out, stem)
            result.int8[target.name] = quantize_and_gate(
                pre, path, target, settings, cache, meta, reference, calib, work,
                fp32_path=result.onnx if target.name == "cpu" else None)
            write_report(result)
        if result.int8["tensorrt"]:
            _build_engine(result, calib, TARGETS["int8_plan"].path(out, stem), build, reference, settings)
    del result.int8_info["incomplete"]
    failed = [gate for gate in result.int8.values() if not gate]
    if failed:
        raise VerificationError("; ".join(_failure(gate) for gate in failed) +
                                f"; the files are kept and every figure is in {result.report}")


def _failure(gate: Int8Gate) -> str:
    figures = gate.figures()
    if gate.refusal:
        return f"{gate.model} fails the INT8 gate: {gate.refusal}"
    most = max((probe.get("tensors_in_float", 0) for probe in gate.probes), default=0)
    kept = f" even with its {most} most sensitive tensors in float" if most else ""
    return (f"{gate.model} fails the INT8 gate{kept}: SROCC {figures['srocc']:.4f} (needs >= {figures['min_srocc']}, "
            f"or no order reversed beyond the resolution: {ranks_line(figures)}), "
            f"mean abs error {figures['mean_abs_mos']:.3f} MOS (needs <= {figures['mean_abs_bound_mos']:.3f}), max abs "
            f"error {figures['max_abs_mos']:.3f} MOS (bound {figures['max_abs_bound_mos']}) on {figures['photos']} "
            "held-out photos")


def _build_engine(result: ExportResult, calib: np.ndarray, plan: Path, build: BuildSettings, reference: Reference,
                  settings: Int8Settings) -> None:
    """Build the INT8 engine where TensorRT and a GPU are present and gate it like the ONNX graphs."""
    try:
        build_int8_engine(result.onnx, result.files["int8_trt_onnx"], plan, calib, build)
    except TensorRTUnavailableError as exc:
        result.int8_info["engine_skipped"] = str(exc)
        log.info("no INT8 TensorRT engine: %s; %s runs on ONNX Runtime meanwhile", exc, result.files["int8_onnx"])
        return
    result.files["int8_plan"] = plan
    check = gate(plan, reference, settings, result.int8["tensorrt"].mos_range)
    mos_range = result.int8["tensorrt"].mos_range
    result.int8["tensorrt_plan"] = Int8Gate("tensorrt_plan", plan.name, check, check, mos_range,
                                            mean_abs_bound_mos=settings.mean_abs_bound(mos_range))
    meta = ArtifactMeta.read_sidecar(plan)  # the engine's own gate, not the Q/DQ graph's
    meta.extra = {**meta.extra, "int8": {**meta.extra.get("int8", {}),
                                         "gate": result.int8["tensorrt_plan"].summary_dict()}}
    meta.write_sidecar(plan)
