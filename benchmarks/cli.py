"""``iqa-bench``: PyTorch eager vs ONNX Runtime vs TensorRT, side by side; and the project's other
measurements as subcommands (``iqa-bench runtime``, ``ray``, ``serve-load``, ...).

``iqa-bench CHECKPOINT ...`` is the benchmark itself (the group's default command, ``iqa-bench
bench``), so every command line written before the subcommands existed means what it meant.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

import qualitynet
from qualitynet._cli import cli_errors, setup_logging
from qualitynet.cpus import usable_cpus

__all__ = ["main"]

_CONTEXT = {"help_option_names": ["-h", "--help"]}
F = TypeVar("F", bound=Callable[..., Any])


class _DefaultGroup(click.Group):
    """A group whose first argument, when it names no subcommand, goes to the ``bench`` command."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help", "--version"):
            args = ["bench", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DefaultGroup, context_settings=_CONTEXT)
@click.version_option(qualitynet.__version__)
def main() -> None:
    """Benchmark the backends of a model, and run the project's other measurements.

    iqa-bench CHECKPOINT [OPTIONS] is iqa-bench bench CHECKPOINT [OPTIONS]: PyTorch eager against
    ONNX Runtime and TensorRT (see iqa-bench bench --help). Every subcommand records the machine
    and the load average beside its figures.

    \b
    Example:
      iqa-bench runs/koniq/model.pt --json bench.json --markdown
      iqa-bench runtime --out-dir runs/bench-runtime
      iqa-bench compare old.json new.json
    """


@main.command("bench", context_settings=_CONTEXT)
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
@click.option("--e2e-workers", type=click.IntRange(0),
              help="Decode processes (default: iqa-run's, one per core with the model on the CPU, else cores - 1).")
@click.option("--e2e-limit", type=click.IntRange(1), help="Use at most N images of --images.")
@click.option("--e2e-rounds", type=click.IntRange(1), default=3, show_default=True,
              help="Alternating rounds of the naive loop and each pipeline; the speed-up is their median ratio.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write every figure as JSON.")
@click.option("--markdown", is_flag=True, help="Print the table as Markdown.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Throughput vs batch size PNG.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or logs on stderr.")
@cli_errors
def bench(checkpoint: Path, onnx: Path | None, engine: Path | None, out_dir: Path | None, batch_sizes: str | None,
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
    gpu = torch.cuda.is_available() and device != "cpu"
    sizes = _ints(batch_sizes, "--batch-sizes") if batch_sizes else (1, 8, 32) if gpu else (1, 8)
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


@main.command(context_settings=_CONTEXT)
@click.argument("old", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("new", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def compare(old: Path, new: Path) -> None:
    """Old and new figures of two --json reports side by side, as a Markdown table.

    Rows are matched on mode, backend, precision, device and batch size.

    \b
    Example:
      iqa-bench compare results/small-cpu.json runs/small-cpu.json
    """
    from qualitynet.bench.compare import compare as compare_reports

    click.echo(compare_reports(old, new))


@main.command(context_settings=_CONTEXT)
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", type=click.IntRange(1), default=200, show_default=True)
@click.option("--size", default="1024x768", show_default=True, help="WIDTHxHEIGHT.")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True, help="JPEG quality.")
@click.option("--grain", type=click.FloatRange(0), default=0.0, show_default=True,
              help="Camera-like sensor grain, grey levels.")
def photos(folder: Path, count: int, size: str, quality: int, grain: float) -> None:
    """Make photo-like JPEGs for end-to-end runs in FOLDER (only when fewer than --count are there).

    Seeded crops of the bundled photos, offline; the same files every time.

    \b
    Example:
      iqa-bench photos runs/bench-cpu/photos_1024x768 --count 200
      iqa-bench photos runs/camera --count 24 --size 4000x3000 --grain 6
    """
    from qualitynet.bench.fixtures import photo_folder

    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{size!r} is not WIDTHxHEIGHT, e.g. 1024x768", param_hint="--size") from None
    made = photo_folder(folder, count, (width, height), quality, grain)
    click.echo(f"{len(made)} JPEGs of {width}x{height} in {folder}", err=True)


@main.command(context_settings=_CONTEXT)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--config", default="small", show_default=True, help="Model configuration.")
def untrained(path: Path, config: str) -> None:
    """Write a randomly initialised model (BatchNorm calibrated on real photos) to PATH, once.

    Speed does not depend on the weights: speed benchmarks of a configuration use these.

    \b
    Example:
      iqa-bench untrained runs/bench-cpu/paper/model.pt --config qualitynet
    """
    from qualitynet.bench.fixtures import untrained_checkpoint

    untrained_checkpoint(path, config)


def _out_dir(default: str) -> Callable[[F], F]:
    return click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(default),
                        show_default=True, help="Working folder: photos, models and the JSON report.")


@main.command(context_settings=_CONTEXT)
@_out_dir("runs/bench-runtime")
@click.option("--count", type=click.IntRange(1), default=200, show_default=True, help="1024x768 JPEGs.")
@click.option("--threads", type=click.IntRange(1), help="Intra-op threads of torch and ONNX Runtime "
              "(default: the CPUs this process may use).")
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A trained model.pt (default: the random-weight small config).")
@cli_errors
def runtime(out_dir: Path, count: int, threads: int | None, checkpoint: Path | None) -> None:
    """iqa-run against the naive PyTorch loop, decode-only rates, and the effect of fast decoding.

    Writes OUT_DIR/runtime_throughput.json and prints it.

    \b
    Example:
      iqa-bench runtime --out-dir runs/bench-runtime --checkpoint demo-output/run/model.pt
    """
    from qualitynet.bench.runtime_throughput import measure_runtime

    measure_runtime(out_dir, count, threads or usable_cpus(), checkpoint)


@main.command(context_settings=_CONTEXT)
@_out_dir("runs/bench-runtime")
@click.option("--count", type=click.IntRange(1), default=200, show_default=True, help="1024x768 JPEGs.")
@click.option("--threads", type=click.IntRange(1), help="ONNX Runtime threads of the plain iqa-run "
              "(default: the CPUs this process may use).")
@cli_errors
def ray(out_dir: Path, count: int, threads: int | None) -> None:
    """iqa-run against iqa-run --ray (a local Ray instance) on the same photos.

    Writes OUT_DIR/ray_throughput.json and prints it.

    \b
    Example:
      iqa-bench ray --out-dir runs/bench-runtime
    """
    from qualitynet.bench.ray_throughput import measure_ray

    measure_ray(out_dir, count, threads or usable_cpus())


@main.command("serve-load", context_settings=_CONTEXT)
@_out_dir("runs/bench-serve")
@click.option("--requests", type=click.IntRange(1), default=200, show_default=True, help="Requests per level at most.")
@click.option("--seconds", type=click.FloatRange(0), default=60.0, show_default=True, help="Time per level at most.")
@click.option("--clients", default="1,8,32", show_default=True, help="Comma-separated client counts, a level each.")
@click.option("--max-batch-size", type=click.IntRange(1), default=32, show_default=True)
@cli_errors
def serve_load(out_dir: Path, requests: int, seconds: float, clients: str, max_batch_size: int) -> None:
    """A bounded load test of iqa-serve on 127.0.0.1: img/s and p50/p99 latency per client count.

    Runs in the serve venv (scripts/test-serve.sh makes .venv-serve). Writes
    OUT_DIR/serve_load.json and prints it.

    \b
    Example:
      .venv-serve/bin/iqa-bench serve-load --out-dir runs/bench-serve
    """
    from qualitynet.bench.serve_load import measure_serving

    measure_serving(out_dir, requests, seconds, _ints(clients, "--clients"), max_batch_size)


@main.command("perf-analyzer", context_settings=_CONTEXT)
@click.option("--perf-analyzer", "binary", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="The perf_analyzer binary.")
@click.option("--cuda-runtime", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Folder holding libcudart.so.12.")
@_out_dir("runs/bench-perf-analyzer")
@click.option("--concurrency", default="1,2,4,8,16", show_default=True, help="Comma-separated requests in flight.")
@click.option("--protocols", default="http,grpc", show_default=True, help="http, grpc or both.")
@click.option("--requests", type=click.IntRange(1), default=50, show_default=True,
              help="Requests per measurement window.")
@click.option("--max-trials", type=click.IntRange(1), default=6, show_default=True,
              help="Measurement windows per level at most.")
@click.option("--stability", type=click.FloatRange(0), default=50.0, show_default=True,
              help="%% within which 3 windows must agree (perf_analyzer's default 10 is never met on a loaded "
                   "machine).")
@click.option("--timeout", type=click.FloatRange(1), default=240.0, show_default=True,
              help="Seconds per perf_analyzer run at most.")
@click.option("--images", type=click.IntRange(1), default=16, show_default=True, help="Distinct JPEGs cycled.")
@click.option("--max-batch-size", type=click.IntRange(1), default=32, show_default=True)
@cli_errors
def perf_analyzer(binary: Path, cuda_runtime: Path, out_dir: Path, concurrency: str, protocols: str, requests: int,
                  max_trials: int, stability: float, timeout: float, images: int, max_batch_size: int) -> None:
    """NVIDIA's perf_analyzer against iqa-serve on 127.0.0.1, over HTTP and gRPC.

    Runs in the serve venv; how to get the binary: the module docstring of
    qualitynet.bench.perf_analyzer. Writes OUT_DIR/perf_analyzer.json and prints it.

    \b
    Example:
      .venv-serve/bin/iqa-bench perf-analyzer --perf-analyzer /tmp/pa/perf_analyzer --cuda-runtime /tmp/pa/lib
    """
    from qualitynet.bench.perf_analyzer import PerfAnalyzerSettings, measure_perf_analyzer

    chosen = tuple(p for p in protocols.split(",") if p)
    if not chosen or set(chosen) - {"http", "grpc"}:
        raise click.BadParameter(f"{protocols!r}: choose http, grpc or http,grpc", param_hint="--protocols")
    measure_perf_analyzer(PerfAnalyzerSettings(
        perf_analyzer=binary, cuda_runtime=cuda_runtime, out_dir=out_dir,
        concurrency=_ints(concurrency, "--concurrency"), protocols=chosen, requests=requests, max_trials=max_trials,
        stability=stability, timeout=timeout, images=images, max_batch_size=max_batch_size))


@main.command("gpu-check", context_settings=_CONTEXT)
@click.option("--device", type=click.Choice(["auto", "cpu"]), default="auto", show_default=True,
              help="auto: the GPU, or a 'no CUDA device' report; cpu: rehearse on the CPU.")
@click.option("--quick", is_flag=True, help="The tiny config, tiny iteration counts.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Where gpu-<device>.json and .md go.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/gpu-check"),
              show_default=True, help="Where checkpoints and exports are made.")
@click.option("--budget", type=click.FloatRange(0), default=360.0, show_default=True,
              help="Seconds after which no further config is started.")
def gpu_check(device: str, quick: bool, out: Path, work: Path, budget: float) -> None:
    """Every GPU figure the project needs, in one run of a few minutes (untrained models).

    Without a CUDA device it says so and exits 0, unless --device cpu asks for the CPU
    rehearsal. benchmarks/scripts/gpu_check.sh runs it on a lent machine.

    \b
    Example:
      iqa-bench gpu-check
      iqa-bench gpu-check --device cpu --quick --out /tmp/gpu-check
    """
    from qualitynet.bench.gpu_check import run_gpu_check

    run_gpu_check(device, quick, out, work, budget)


@main.command(context_settings=_CONTEXT)
@click.option("--old", required=True, help="Git ref of the baseline (e.g. the commit before a change).")
@click.option("--new", default="WORKTREE", show_default=True, help="Git ref, or WORKTREE for the files as they are.")
@click.option("--repeats", type=click.IntRange(1), default=3, show_default=True, help="Runs per version, alternated.")
@click.option("--count", type=click.IntRange(1), default=200, show_default=True, help="1024x768 JPEGs.")
@_out_dir("runs/bench-runtime")
@click.argument("extra", nargs=-1)
@cli_errors
def ab(old: str, new: str, repeats: int, count: int, out_dir: Path, extra: tuple[str, ...]) -> None:
    """iqa-run img/s of two versions of the code on the same photos, runs alternated (A B A B ...).

    Each version is a git ref of the checkout you are in (or WORKTREE), unpacked into a
    temporary import tree; EXTRA (after --) are more iqa-run options. Writes
    OUT_DIR/iqa_run_ab.json and prints it.

    \b
    Example:
      iqa-bench ab --old HEAD~1 --repeats 5 -- --workers 1
    """
    from qualitynet.bench.ab import compare_versions

    compare_versions(old, new, repeats, count, out_dir, list(extra))


@main.command("runs-table", context_settings=_CONTEXT)
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@cli_errors
def runs_table_command(runs: tuple[Path, ...]) -> None:
    """Training runs side by side: each RUN folder's test metrics (metrics.json) as a Markdown table.

    \b
    Example:
      iqa-bench runs-table runs/lite-compare/lite-frozen runs/lite-compare/lite02-frozen
    """
    from qualitynet.bench.runs_table import runs_table

    click.echo(runs_table(list(runs)))

def _ints(text: str, hint: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers, e.g. 1,8,32",
                                 param_hint=hint) from None
    if not values or min(values) < 1:
        raise click.BadParameter("give integers >= 1", param_hint=hint)
    return values


if __name__ == "__main__":
    main()
