"""``iqa-export``: a thin command over :func:`qualitynet.export.export_all`."""

from __future__ import annotations

from pathlib import Path

import click

import qualitynet
from qualitynet._cli import cli_errors, setup_logging
from qualitynet.artifact import BatchProfile
from qualitynet.errors import QualityNetError
from qualitynet.export.calibration import DEFAULT_CALIB_COUNT
from qualitynet.export.exporter import export_all
from qualitynet.export.int8 import (
    CALIBRATION_METHODS,
    DEFAULT_MEAN_ABS_FRACTION,
    DEFAULT_MIN_SROCC,
    DEFAULT_RANK_RESOLUTION_FRACTION,
    Int8Settings,
)
from qualitynet.export.onnx import DEFAULT_OPSET
from qualitynet.export.targets import TARGETS
from qualitynet.export.types import ExportResult, TensorRTUnavailableError, Verification

__all__ = ["main"]


def _batch_profile(ctx: click.Context, param: click.Parameter, value: str) -> BatchProfile:
    try:
        return BatchProfile.parse(value)
    except QualityNetError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--fp16", is_flag=True, help="Also write the FP16 ONNX model and build a TensorRT engine (model.plan).")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder [default: the checkpoint's folder].")
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True,
              help="ONNX opset; TensorRT 8.6 (Pascal GPUs) parses at most 17.")
@click.option("--batch", "profile", default="1:16:64", show_default=True, callback=_batch_profile,
              help="TensorRT batch profile MIN:OPT:MAX; tactics are tuned for OPT.")
@click.option("--workspace", type=click.IntRange(min=1), default=4096, show_default=True,
              help="TensorRT workspace memory limit, MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="TensorRT timing cache file: read if present, written after the build (speeds up rebuilds).")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level (higher: slower build, maybe faster engine).")
@click.option("--version-compatible", is_flag=True,
              help="Build a plan that TensorRT's lean runtime and later TensorRT releases of the same major version "
                   "can run (it embeds the lean runtime; may be slower).")
@click.option("--exclude-lean-runtime", is_flag=True,
              help="With --version-compatible: leave the lean runtime out of the plan (smaller; runs only on the "
                   "lean runtime of the TensorRT version that built it).")
@click.option("--photos", type=click.Path(exists=True, path_type=Path),
              help="Folder of photos to verify on (first 32) [default: photos bundled with scikit-image].")
@click.option("--int8", is_flag=True,
              help="Also calibrate and write model.int8.onnx (CPUs) and model.int8.trt.onnx (TensorRT Q/DQ), each "
                   "gated on held-out photos (--gate-photos, up to 256); builds model.int8.plan where TensorRT and a "
                   "GPU are present.")
@click.option("--gate-photos", type=click.Path(exists=True, path_type=Path),
              help="INT8 gate: held-out photos, a folder or a dataset CSV with a group column (groups also "
                   "calibrated on leave the gate) [default: bundled photos never used for calibration].")
@click.option("--calib-photos", type=click.Path(exists=True, path_type=Path),
              help="INT8 calibration photos, like those you will score (a folder or a dataset CSV) [default: bundled "
                   "photos plus crops].")
@click.option("--calib-count", type=click.IntRange(min=1), default=DEFAULT_CALIB_COUNT, show_default=True,
              help="INT8 calibration inputs: the photos, then seeded crops of them.")
@click.option("--calib-method", type=click.Choice(sorted(CALIBRATION_METHODS)), default="minmax", show_default=True,
              help="How activation ranges are chosen from the calibration photos.")
@click.option("--min-srocc", type=click.FloatRange(-1, 1), default=DEFAULT_MIN_SROCC, show_default=True,
              help="INT8 gate: lowest SROCC against the FP32 model on the held-out photos (--gate-photos).")
@click.option("--max-abs-error", type=click.FloatRange(min=0, min_open=True),
              help="INT8 gate: also bound the max abs error against the FP32 model, on the MOS scale [default: "
                   "reported, not bounded].")
@click.option("--max-mean-error", type=click.FloatRange(min=0, min_open=True),
              help=f"INT8 gate: highest mean abs error against the FP32 model, on the MOS scale [default: "
                   f"{DEFAULT_MEAN_ABS_FRACTION:.0%} of the model's MOS range].")
@click.option("--rank-resolution", type=click.FloatRange(min=0),
              help=f"INT8 gate: photos the FP32 model scores at most this far apart (MOS scale) are ties; with "
                   f"SROCC under --min-srocc the ranks still pass when INT8 keeps the order of every two photos "
                   f"further apart; 0: SROCC alone [default: {DEFAULT_RANK_RESOLUTION_FRACTION:.0%} of the MOS "
                   f"range].")
@click.option("--require-speedup", type=click.FloatRange(min=0, min_open=True),
              help="INT8: fail the CPU model if it is not at least this many times as fast as FP32 here (batch 8) "
                   "[default: a slower one passes, with a warning].")
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path),
              help="Also write a Triton Inference Server model repository here (config.pbtxt + 1/model.*).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(qualitynet.__version__, "-V", "--version")
@cli_errors
def main(checkpoint: Path, fp16: bool, out_dir: Path | None, opset: int, profile: BatchProfile, workspace: int,
         timing_cache: Path | None, opt_level: int, version_compatible: bool, exclude_lean_runtime: bool,
         photos: Path | None, int8: bool, gate_photos: Path | None, calib_photos: Path | None, calib_count: int,
         calib_method: str, min_srocc: float, max_abs_error: float | None, max_mean_error: float | None,
         rank_resolution: float | None, require_speedup: float | None, triton_repo: Path | None, quiet: bool) -> None:
    """Export CHECKPOINT (a model.pt from iqa-train) to a verified ONNX model.

    Writes model.onnx (FP32, dynamic batch, preprocessing and score scale in its metadata)
    and checks it against PyTorch on real photos at batch 1 and all photos at once. With
    --fp16 also writes model.fp16.onnx and, where TensorRT and a GPU are present, builds
    model.plan with its model.plan.json sidecar; each is checked against model.onnx. The
    figures go to model.export.json. Exits 1 if a check fails (files are kept) or if
    --fp16 cannot build the engine (the ONNX files are still written and checked, and
    --triton-repo still gets the ONNX model).

    With --int8 (e.g. --int8 --calib-photos train/ --gate-photos test/) also calibrates on
    --calib-photos and writes model.int8.onnx (ONNX Runtime on CPUs) and model.int8.trt.onnx
    (Q/DQ for TensorRT), each judged against model.onnx on held-out photos (--gate-photos; never
    the calibration photos, by content, nor their groups when both are dataset CSVs) by
    SROCC (--min-srocc; or, below it, no two photos more than --rank-resolution apart swapped)
    and mean abs error (--max-mean-error; also the max abs error with --max-abs-error). A model
    that fails keeps its most sensitive tensors, or the blocks that move its score most, in
    float until it passes (the fewer float nodes win); if only a mostly-float graph passes,
    exits 1 with the figures (files and report kept).

    \b
    Example:
        iqa-export runs/koniq/model.pt
        iqa-export --fp16 --batch 1:32:128 --timing-cache trt.cache runs/koniq/model.pt
    """
    setup_logging(quiet)
    if exclude_lean_runtime and not version_compatible:
        raise click.UsageError("--exclude-lean-runtime applies only with --version-compatible")
    if version_compatible and not fp16:
        raise click.UsageError("--version-compatible applies to the TensorRT plan, which only --fp16 builds")
    if int8 and gate_photos is None and photos is not None:
        click.echo("note: --photos as the INT8 gate's photos (used so here) is deprecated; give them with "
                   "--gate-photos (--photos is the verification photos)", err=True)
    int8_settings = Int8Settings(photos=calib_photos, gate_photos=gate_photos, count=calib_count, method=calib_method,
                                 min_srocc=min_srocc, max_abs_mos=max_abs_error, mean_abs_mos=max_mean_error,
                                 rank_resolution_mos=rank_resolution, require_speedup=require_speedup) if int8 else None
    try:
        result = export_all(checkpoint, out_dir, fp16=fp16, opset=opset, photos=photos, profile=profile,
                            workspace=workspace, timing_cache=timing_cache, opt_level=opt_level,
                            version_compatible=version_compatible, exclude_lean_runtime=exclude_lean_runtime,
                            int8=int8_settings)
    except TensorRTUnavailableError as exc:
        if triton_repo is not None and exc.result is not None:  # the ONNX model is written and verified
            _write_triton_repo(triton_repo, exc.result, profile)
            click.echo(f"Triton: no qualitynet_trt model, since no TensorRT engine was built "
                       f"({exc.result.tensorrt_skipped})", err=True)
        raise
    if triton_repo is not None:
        _write_triton_repo(triton_repo, result, profile)
    if not quiet:
        click.echo(summary(result), err=True)


def _write_triton_repo(repo: Path, result: ExportResult, profile: BatchProfile) -> None:
    from qualitynet.export.triton import write_triton_repo

    for config in write_triton_repo(repo, result.onnx, result.file("plan"), profile=profile):
        click.echo(f"Triton model: {config.parent}", err=True)


def summary(result: ExportResult) -> str:
    """A few lines for humans: each artifact, its build time and its worst agreement."""
    lines = []
    for key, path in result.files.items():
        check = result.check(key)
        if not isinstance(check, Verification):
            continue
        worst = check.worst
        lines.append(
            f"{path.name}: built in {result.seconds.get(TARGETS[key].step, 0):.1f} s; vs {check.reference} on "
            f"{check.photos} photos: max abs error {worst.max_abs:.1e}, SROCC {worst.srocc:.4f}: "
            f"{'ok' if check else 'FAILED'}"
        )
    for gate in result.int8.values():
        lines.append(gate.describe())
        if gate.speed_note:
            lines.append(f"  note: {gate.speed_note}")
    lines.append(f"figures: {result.report}")
    return "\n".join(lines)
