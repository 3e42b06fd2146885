"""``iqa-export``: a thin command over :func:`qualitynet.export.export_all`."""

from __future__ import annotations

from pathlib import Path

import click

import qualitynet
from qualitynet._cli import cli_errors, setup_logging
from qualitynet.artifact import BatchProfile
from qualitynet.errors import QualityNetError
from qualitynet.export.onnx import DEFAULT_OPSET
from qualitynet.export.pipeline import export_all
from qualitynet.export.types import ExportResult

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
@click.option("--triton-repo", type=click.Path(file_okay=False, path_type=Path),
              help="Also write a Triton Inference Server model repository here (config.pbtxt + 1/model.*).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
@click.version_option(qualitynet.__version__, "-V", "--version")
@cli_errors
def main(checkpoint: Path, fp16: bool, out_dir: Path | None, opset: int, profile: BatchProfile, workspace: int,
         timing_cache: Path | None, opt_level: int, version_compatible: bool, exclude_lean_runtime: bool,
         photos: Path | None, triton_repo: Path | None, quiet: bool) -> None:
    """Export CHECKPOINT (a model.pt from iqa-train) to a verified ONNX model.

    Writes model.onnx (FP32, dynamic batch, preprocessing and score scale in its metadata)
    and checks it against PyTorch on real photos at batch 1 and all photos at once. With
    --fp16 also writes model.fp16.onnx and, where TensorRT and a GPU are present, builds
    model.plan with its model.plan.json sidecar; each is checked against model.onnx. The
    figures go to model.export.json. Exits 1 if a check fails (files are kept) or if
    --fp16 cannot build the engine (the ONNX files are still written and checked).

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
    result = export_all(checkpoint, out_dir, fp16=fp16, opset=opset, photos=photos, profile=profile,
                        workspace=workspace, timing_cache=timing_cache, opt_level=opt_level,
                        version_compatible=version_compatible, exclude_lean_runtime=exclude_lean_runtime)
    if triton_repo is not None:
        from qualitynet.export.triton import write_triton_repo

        for config in write_triton_repo(triton_repo, result.onnx, result.plan, profile=profile):
            click.echo(f"Triton model: {config.parent}", err=True)
    if not quiet:
        click.echo(summary(result), err=True)


def summary(result: ExportResult) -> str:
    """A few lines for humans: each artifact, its build time and its worst agreement."""
    lines = []
    for key, path in (("onnx", result.onnx), ("fp16_onnx", result.fp16_onnx), ("plan", result.plan)):
        check = result.verifications.get(key)
        if path is None or check is None:
            continue
        worst = check.worst
        step = {"onnx": "onnx", "fp16_onnx": "fp16", "plan": "tensorrt"}[key]
        lines.append(
            f"{path.name}: built in {result.seconds.get(step, 0):.1f} s; vs {check.reference} on {check.photos} "
            f"photos: max abs error {worst.max_abs:.1e}, SROCC {worst.srocc:.4f}: {'ok' if check else 'FAILED'}"
        )
    lines.append(f"figures: {result.report}")
    return "\n".join(lines)
