"""``iqa-bench``: PyTorch eager vs ONNX Runtime vs TensorRT, side by side."""

from __future__ import annotations

from pathlib import Path

import click

import qualitynet
from qualitynet._cli import cli_errors, setup_logging

__all__ = ["main"]


def _batch_sizes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers, e.g. 1,8,32") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter("batch sizes must be >= 1")
    return sizes


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--onnx", type=click.Path(path_type=Path), help="Reuse this FP32 ONNX (and its .fp16.onnx sibling).")
@click.option("--engine", type=click.Path(path_type=Path), help="Reuse this TensorRT plan.")
@click.option("--out-dir", type=click.Path(path_type=Path), help="Where missing artifacts are exported.")
@click.option("--batch-sizes", help="Comma-separated (default 1,8,32 on GPU; 1,8 on CPU).")
@click.option("--warmup", type=click.IntRange(0), default=10, show_default=True, help="Untimed batches per point.")
@click.option("--iters", type=click.IntRange(1), default=50, show_default=True,
              help="Timed batches per point (minimum).")
@click.option("--min-seconds", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Keep timing a point until this much time is spent.")
@click.option("--max-seconds", type=click.FloatRange(0), help="Stop timing a point after this long (>= 3 batches).")
@click.option("--threads", type=click.IntRange(0), default=0,
              help="Intra-op threads for torch and ONNX Runtime, model-only and end to end (0: every core).")
@click.option("--torch-variants", default="", help="Also time PyTorch FP16 as: cudagraph, compile (CUDA only).")
@click.option("--device", default="auto", show_default=True, help="PyTorch device: auto, cpu, cuda.")
@click.option("--photos", type=click.Path(path_type=Path), help="Photos for inputs and accuracy (default: bundled).")
@click.option("--images", type=click.Path(path_type=Path), help="Folder for the end-to-end run (decode included).")
@click.option("--e2e-batch-size", type=click.IntRange(1), default=8, show_default=True)
@click.option("--e2e-workers", type=click.IntRange(0), help="Decode processes (default: cores - 1).")
@click.option("--e2e-limit", type=click.IntRange(1), help="Use at most N images of --images.")
@click.option("--e2e-rounds", type=click.IntRange(1), default=3, show_default=True,
              help="Alternating rounds of the naive loop and each pipeline; the speed-up is their median ratio.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write every figure as JSON.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Throughput vs batch size PNG.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or logs on stderr.")
@click.version_option(qualitynet.__version__)
@cli_errors
def main(checkpoint: Path, onnx: Path | None, engine: Path | None, out_dir: Path | None, batch_sizes: str | None,
         warmup: int, iters: int, min_seconds: float, max_seconds: float | None, threads: int, torch_variants: str,
         device: str, photos: Path | None,
         images: Path | None, e2e_batch_size: int, e2e_workers: int | None, e2e_limit: int | None, e2e_rounds: int,
         json_path: Path | None, markdown: bool, plot_path: Path | None, quiet: bool) -> None:
    """Measure throughput, latency and accuracy of every backend against PyTorch eager.

    Exports the ONNX models next to CHECKPOINT first when they are missing or were exported
    from another checkpoint (the SHA-256 they record); a stale --onnx/--engine is refused.
    Every backend is timed host batch in to host scores out; model-only points time
    pre-processed batches; --images adds end-to-end points (decode included)
    against the naive per-image loop. Table on stdout; logs on stderr.

    \b
    Example:
      iqa-bench runs/koniq/model.pt --json bench.json --plot bench.png
      iqa-bench runs/demo/model.pt --images photos/ --batch-sizes 1,8 --markdown
      iqa-bench model.pt --batch-sizes 1,8,32,64 --torch-variants cudagraph,compile   # on a GPU
    """
    import torch

    from qualitynet.bench.report import format_table, plot_throughput, write_json
    from qualitynet.bench.run import BenchSettings, run_bench
    from qualitynet.bench.subjects import TORCH_VARIANTS

    setup_logging(quiet)
    variants = tuple(v for v in torch_variants.split(",") if v)
    unknown = sorted(set(variants) - set(TORCH_VARIANTS))
    if unknown:
        raise click.BadParameter(f"unknown {', '.join(unknown)}; choose from {', '.join(TORCH_VARIANTS)}",
                                 param_hint="--torch-variants")
    sizes = _batch_sizes(batch_sizes) or ((1, 8, 32) if torch.cuda.is_available() and device != "cpu" else (1, 8))
    settings = BenchSettings(batch_sizes=sizes, warmup=warmup, iters=iters, min_seconds=min_seconds,
                             max_seconds=max_seconds, torch_variants=variants, threads=threads, device=device,
                             images=images, e2e_batch_size=e2e_batch_size, e2e_workers=e2e_workers,
                             e2e_limit=e2e_limit, e2e_rounds=e2e_rounds, photos=photos, quiet=quiet)
    report = run_bench(checkpoint, settings, onnx=onnx, engine=engine, out_dir=out_dir)
    click.echo(format_table(report, markdown))
    if json_path:
        write_json(report, json_path)
    if plot_path:
        plot_throughput(report, plot_path)
