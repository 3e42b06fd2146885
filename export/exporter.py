"""The whole export, as ``iqa-export`` runs it: ONNX, FP16 ONNX, TensorRT, each verified.

Every artifact is checked on real photos before the next step starts, and the figures go to
``<model>.export.json`` after each step, so a failure leaves the files and the evidence
behind. Candidates run through the runtime's own runners (``OrtRunner``, ``TrtRunner``), so
the checks cover exactly what ``iqa-run`` computes, metadata reading included.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnxruntime

from qualitynet.artifact import BatchProfile, file_sha256
from qualitynet.export._io import atomic_write_bytes, ensure_writable_dir
from qualitynet.export.fp16 import convert_fp16
from qualitynet.export.freshness import stale_reason
from qualitynet.export.int8 import Int8Settings
from qualitynet.export.onnx import DEFAULT_OPSET, check_opset, export_onnx
from qualitynet.export.targets import TARGETS
from qualitynet.export.tensorrt import BuildSettings, build_engine, check_opset_for_tensorrt
from qualitynet.export.types import ExportResult, TensorRTUnavailableError, VerificationError
from qualitynet.export.verify import Reference, ScoreFn, load_photos, torch_scorer, verify
from qualitynet.runtime.ort_runner import OrtRunner
from qualitynet.runtime.trt_compat import tensorrt_status
from qualitynet.trainer.checkpoint import load_checkpoint, software_versions

__all__ = ["export_all"]

log = logging.getLogger(__name__)


def export_all(checkpoint_path: str | Path, out_dir: str | Path | None = None, *, fp16: bool = False,
               opset: int = DEFAULT_OPSET, photos: str | Path | Sequence[str | Path] | None = None,
               profile: BatchProfile = BatchProfile(), workspace: int = 4096,
               timing_cache: str | Path | None = None, opt_level: int = 3,
               require_tensorrt: bool = True, version_compatible: bool = False,
               exclude_lean_runtime: bool = False, int8: Int8Settings | None = None) -> ExportResult:
    """Export a checkpoint to ONNX (and, with ``fp16``, FP16 ONNX and a TensorRT engine), verifying each.

    Args:
        checkpoint_path: a ``model.pt`` written by ``iqa-train``.
        out_dir: output folder; default the checkpoint's folder. Files are named after the
            checkpoint: ``model.onnx``, ``model.fp16.onnx``, ``model.plan`` (+ ``.json``),
            ``model.export.json``.
        fp16: also write the FP16 ONNX model and build the TensorRT engine.
        opset: ONNX opset (17 is the highest TensorRT 8.6 parses).
        photos: verification photos (a folder or files); default the bundled ones.
        profile: TensorRT batch optimization profile.
        workspace: TensorRT workspace limit, MiB.
        timing_cache: TensorRT timing cache file (read and written).
        opt_level: TensorRT builder optimization level, 0-5.
        require_tensorrt: with ``fp16``, raise when TensorRT (or a GPU) is missing, after
            the ONNX files are written and verified; ``False`` logs it and returns.
        version_compatible: build a plan TensorRT's lean runtime and later releases of the same
            major version can run (see :func:`~qualitynet.export.tensorrt.build_engine`).
        exclude_lean_runtime: with ``version_compatible``, leave the lean runtime out of the plan;
            verifying it then needs TensorRT's lean runtime installed next to the builder.
        int8: also calibrate and write ``model.int8.onnx`` (ONNX Runtime, CPUs) and
            ``model.int8.trt.onnx`` (Q/DQ for TensorRT), each gated on held-out photos
            (``int8.gate_photos``, else ``photos``, else bundled photos never used for calibration), and build
            ``model.int8.plan`` where TensorRT and a GPU are present (see
            :func:`qualitynet.export.int8_step.export_int8`).

    Returns:
        What was written and measured (also in ``result.report``).

    Raises:
        VerificationError: an artifact disagrees with its reference, or an INT8 model fails
            its gate even with its most sensitive nodes in float; files and report kept.
        TensorRTUnavailableError: ``fp16`` and ``require_tensorrt`` but no TensorRT or GPU.
        QualityNetError: bad checkpoint, photos, opset or output folder.
    """
    checkpoint_path = Path(checkpoint_path)
    out = ensure_writable_dir(Path(out_dir) if out_dir is not None else checkpoint_path.parent)
    check_opset(opset)
    settings = BuildSettings(profile, workspace, Path(timing_cache) if timing_cache is not None else None, opt_level,
                             version_compatible, exclude_lean_runtime)
    if fp16:
        check_opset_for_tensorrt(opset, tensorrt_status().builder_version)
    gate_photos = int8.gate_photos if int8 is not None and int8.gate_photos is not None else photos
    if int8 is not None:
        from qualitynet.export.int8_step import check_held_out

        check_held_out(gate_photos, int8.photos)
    checkpoint = load_checkpoint(checkpoint_path)
    stem = checkpoint_path.stem
    result = ExportResult(
        checkpoint=checkpoint_path, config_name=checkpoint.model_config.name, opset=opset,
        report=out / f"{stem}.export.json", files={"onnx": TARGETS["onnx"].path(out, stem)},
        versions={**software_versions(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    )
    result.earlier = _earlier_report(result.report, file_sha256(checkpoint_path))
    inputs, result.photos = load_photos(photos, checkpoint.preprocess)
    log.info("verification photos: %d (%s)", len(inputs), "bundled" if photos is None else photos)

    with _timed(result, "onnx"):
        export_onnx(checkpoint_path, result.onnx, opset, checkpoint=checkpoint)
    log.info("wrote %s (opset %d) in %.1f s", result.onnx, opset, result.seconds["onnx"])
    torch_reference = Reference("torch", torch_scorer(checkpoint.build_model()), inputs)
    with OrtRunner(result.onnx, provider="cpu") as runner:
        _check(result, "onnx", runner.infer, torch_reference, "fp32")
        if int8 is not None:
            from qualitynet.export.int8_step import export_int8

            with _timed(result, "int8"):
                export_int8(result, checkpoint.preprocess, gate_photos, int8,
                            dataclasses.replace(settings, version_compatible=False, exclude_lean_runtime=False),
                            _write_report)
        if not fp16:
            return result
        onnx_reference = Reference(result.onnx.name, runner.infer, inputs)
        fp16_path = result.files["fp16_onnx"] = TARGETS["fp16_onnx"].path(out, stem)
        with _timed(result, "fp16"):
            convert_fp16(result.onnx, fp16_path)
        log.info("wrote %s in %.1f s", fp16_path, result.seconds["fp16"])
        with OrtRunner(fp16_path, provider="cpu") as fp16_runner:
            _check(result, "fp16_onnx", fp16_runner.infer, onnx_reference, "fp16")
        _build_and_check(result, onnx_reference, TARGETS["plan"].path(out, stem), settings, require_tensorrt)
    return result


def _build_and_check(result: ExportResult, reference: Reference, plan: Path, settings: BuildSettings,
                     require_tensorrt: bool) -> None:
    fp16_onnx = result.files["fp16_onnx"]
    try:
        with _timed(result, "tensorrt"):
            meta = build_engine(result.onnx, fp16_onnx, plan, settings)
    except TensorRTUnavailableError as exc:
        result.tensorrt_skipped = str(exc)
        _write_report(result)
        message = (
            f"no TensorRT engine built: {exc}. {result.onnx.name} and {fp16_onnx.name} are written and "
            f"verified (figures in {result.report}); meanwhile `iqa-run {fp16_onnx} photos/` scores with "
            "ONNX Runtime"
        )
        if require_tensorrt:
            raise TensorRTUnavailableError(message, result) from None
        log.warning("%s", message)
        return
    result.files["plan"] = plan
    from qualitynet.runtime.trt_runner import TrtRunner

    # This process has just built the plan, so the code it embeds (a version-compatible plan's lean runtime) is trusted.
    with TrtRunner(plan, allow_host_code=True) as runner:
        _check(result, "plan", runner.infer, reference, meta.precision)


def _check(result: ExportResult, key: str, candidate: ScoreFn, reference: Reference, precision: str) -> None:
    """Verify one artifact, record it in the report, and raise if it fails."""
    path = result.files[key]
    verification = result.verifications[TARGETS[key].figures] = verify(candidate, reference, path.name, precision)
    _write_report(result)
    if not verification:
        failed = next(comparison for comparison in verification.comparisons if not comparison)
        raise VerificationError(
            f"{path}: verification failed, {failed.summary()}; the files are kept and every figure is in "
            f"{result.report}"
        )


def _write_report(result: ExportResult) -> None:
    text = json.dumps(result.to_dict(), indent=2, allow_nan=False)
    atomic_write_bytes(result.report, (text + "\n").encode())


def _earlier_report(report: Path, checkpoint_sha256: str) -> dict[str, Any]:
    """What an earlier ``iqa-export`` of this checkpoint wrote to ``report`` about files this run may
    not write again (``--fp16`` then ``--int8``): the entries whose files are still exports of
    this checkpoint, so the report is merged into, not overwritten."""
    try:
        earlier = json.loads(report.read_text(encoding="utf-8"))
        files = dict(earlier["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    kept: dict[str, Any] = {"files": {}, "verifications": {}, "seconds": {}}
    for key, target in TARGETS.items():
        if key == "onnx" or key not in files or stale_reason(Path(files[key]), checkpoint_sha256) is not None:
            continue
        kept["files"][key] = files[key]
        section = earlier.get(target.section, {})
        if target.section == "verifications" and target.figures in section:
            kept["verifications"][target.figures] = section[target.figures]
        if target.section == "int8" and section:
            kept["int8"] = section
        if target.step in earlier.get("seconds", {}):
            kept["seconds"][target.step] = earlier["seconds"][target.step]
    return kept if kept["files"] else {}


@contextlib.contextmanager
def _timed(result: ExportResult, step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    result.seconds[step] = time.perf_counter() - start
