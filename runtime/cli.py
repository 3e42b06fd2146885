"""``iqa-run``: score folders of photos with an exported model, a thin shell over :class:`Scorer`."""

from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from qualitynet._cli import cli_errors, progress, setup_logging
from qualitynet.errors import QualityNetError
from qualitynet.runtime.decode_pool import FAST_DECODE_DEFAULT, FAST_DECODE_HELP, with_decode_override
from qualitynet.runtime.discovery import iter_inputs, path_key, read_file_list
from qualitynet.runtime.ort_runner import PROVIDERS
from qualitynet.runtime.output import ModelIdentity, open_output
from qualitynet.runtime.scorer import DECODER_CHOICES, Scorer
from qualitynet.runtime.summary import RunStats
from qualitynet.runtime.writer import FORMATS, RecordWriter, format_for

if TYPE_CHECKING:
    from qualitynet.runtime.ray_scoring import RayScorer

__all__ = ["main"]

logger = logging.getLogger(__name__)


def _open_writer(output: Path | None, fmt: str, resume: bool, overwrite: bool, model: ModelIdentity,
                 allow_other_model: bool, retry_errors: bool) -> tuple[RecordWriter, set[str]]:
    if output is None:
        return RecordWriter.to_binary(sys.stdout.buffer, fmt), set()
    return open_output(output, fmt, resume=resume, overwrite=overwrite, model=model,
                       allow_other_model=allow_other_model, retry_errors=retry_errors)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("inputs", nargs=-1, type=click.Path(exists=True, path_type=str))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write rows here (default: stdout).")
@click.option("--format", "fmt", type=click.Choice(FORMATS),
              help="Output format (default: from the --output suffix, .jsonl/.ndjson or else csv).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1), help="Images per inference.")
@click.option("--workers", type=click.IntRange(0),
              help="Decode processes (default: every core when the model runs on the CPU, else every core but one; "
                   "0 decodes in the main process).")
@click.option("--recursive/--no-recursive", default=True, show_default=True, help="Walk sub-folders.")
@click.option("--resume", is_flag=True,
              help="Skip files already in --output (error rows included) and append the rest.")
@click.option("--retry-errors", is_flag=True,
              help="With --resume, remove the rows that carry an error and score those files again (e.g. after "
                   "a missing mount is back).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output instead of refusing.")
@click.option("--allow-other-model", is_flag=True,
              help="With --resume, append even when the earlier rows came from another model.")
@click.option("--fast-decode/--exact-decode", default=FAST_DECODE_DEFAULT, help=FAST_DECODE_HELP)
@click.option("--decoder", type=click.Choice(DECODER_CHOICES), default="pillow", show_default=True,
              help="Who decodes: pillow (the model's record, in --workers processes), nvimgcodec (JPEGs on the GPU "
                   "with nvJPEG, batched; pip install 'qualitynet[gpu-decode]') or nvimgcodec-cpu. nvJPEG's pixels "
                   "differ slightly: the first batch is scored both ways and the run refused when the scores move "
                   "too far.")
@click.option("--files-from", type=click.File("r", encoding="utf-8", errors="surrogateescape"),
              help="Also score the paths listed in this file, one per line ('-' for stdin).")
@click.option("--provider", type=click.Choice(["auto", *PROVIDERS]), default="auto", show_default=True,
              help="ONNX Runtime execution provider (auto: tensorrt, then cuda, then cpu).")
@click.option("--threads", type=click.IntRange(1),
              help="ONNX Runtime intra-op threads (default: the CPUs this process may use).")
@click.option("--allow-plan-host-code", is_flag=True,
              help="Let the full TensorRT run the lean runtime embedded in a --version-compatible plan: code from "
                   "the plan file, so only for plans you trust (TensorRT's lean runtime needs no such permission).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Score on a Ray cluster (pip install 'qualitynet[ray]'): ADDRESS (host:port, ray://host:10001, "
                   "auto: the last `ray start` here); left out: RAY_ADDRESS when set, else a new local instance.")
@click.option("--ray-actors", type=click.IntRange(1), help="With --ray: scoring actors (default: one per CPU or GPU).")
@click.option("--ray-gpus", type=click.FloatRange(0), default=0, show_default=True,
              help="With --ray: GPUs per actor (1, or 0.5 to share one).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar, log or summary; only errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="qualitynet")
@cli_errors
def main(model: Path, inputs: tuple[str, ...], output: Path | None, fmt: str | None, batch_size: int,
         workers: int | None, recursive: bool, resume: bool, retry_errors: bool, overwrite: bool,
         allow_other_model: bool,
         fast_decode: bool | None, decoder: str, files_from: TextIO | None, provider: str, threads: int | None,
         allow_plan_host_code: bool, ray_address: str | None, ray_actors: int | None, ray_gpus: float,
         quiet: bool, verbose: bool) -> None:
    """Score image files with MODEL (.plan or .onnx) and write path,score,error rows.

    INPUTS are folders (walked for JPEG, PNG, WebP, BMP and TIFF files, and suffix-less
    image files) or single files. Files that cannot be read get a row with the error and
    do not stop the run. Rows are flushed after every batch, so an interrupted run keeps
    its rows; --resume continues it (files whose rows carry an error are not tried again
    unless --retry-errors). The output is locked while a run writes it, and
    OUTPUT.iqa-run.json records the model and working directory of each run, so --resume
    refuses another model and works from any directory. Exit status: 0 when every
    readable image was scored, 1 when the model cannot be loaded, the output cannot be
    written or nothing could be scored, 2 for usage errors, 130/143 when interrupted by
    Ctrl-C/SIGTERM.

    \b
    Example:
        iqa-run model.plan photos/ -o scores.csv
        iqa-run model.fp16.onnx photos/ -o scores.jsonl --resume
        find /data -name '*.jpg' | iqa-run model.onnx --files-from - > scores.csv
    """
    setup_logging(quiet=quiet, verbose=verbose)
    if not inputs and files_from is None:
        raise click.UsageError("give at least one folder or file, or --files-from")
    if resume and output is None:
        raise click.UsageError("--resume needs --output (the file to continue)")
    if retry_errors and not resume:
        raise click.UsageError("--retry-errors applies only with --resume")
    if decoder != "pillow" and ray_address is not None:
        raise click.UsageError("--decoder applies without --ray (Ray's actors decode with Pillow)")
    fmt = format_for(output, fmt)
    with _open_scorer(model, ray_address, ray_actors, ray_gpus, provider=None if provider == "auto" else provider,
                      threads=threads, batch_size=batch_size, workers=workers, fast_decode=fast_decode,
                      allow_host_code=allow_plan_host_code, decoder=decoder) as scorer:
        preprocess = with_decode_override(scorer.meta.preprocess, fast_decode)
        logger.info("%s", preprocess.describe())
        identity = ModelIdentity.of(scorer.meta, model, preprocess, decoder)
        writer, done = _open_writer(output, fmt, resume, overwrite, identity, allow_other_model, retry_errors)
        sources = itertools.chain(inputs, read_file_list(files_from) if files_from is not None else ())
        todo: Iterator[str] = (p for p in iter_inputs(sources, recursive) if path_key(p) not in done)
        if isinstance(scorer, Scorer) and decoder != "pillow":
            sample = list(itertools.islice(todo, scorer.batch_size))
            scorer.check_decoder(sample)
            todo = itertools.chain(sample, todo)
        stats = RunStats()  # the rate counts from here: model loading excluded
        try:
            with progress(quiet=quiet, unit="img", desc="scoring") as bar:
                for batch in scorer.score_batches(todo):
                    writer.write_batch(batch)
                    stats.add(batch)
                    bar.update(len(batch))
        finally:
            writer.close()
    _finish(stats, len(done))


def _open_scorer(model: Path, ray_address: str | None, ray_actors: int | None, ray_gpus: float, *,
                 workers: int | None, decoder: str, **options: Any) -> Scorer | RayScorer:
    """This process's :class:`Scorer`, or with ``--ray`` the same scoring in a Ray actor pool (which decodes
    with Pillow)."""
    if ray_address is None:
        return Scorer(model, workers=workers, decoder=decoder, **options)
    from qualitynet.runtime.ray_scoring import RayScorer

    return RayScorer(model, address=ray_address or None, actors=ray_actors, gpus_per_actor=ray_gpus,
                     workers=workers or 0, **options)


def _finish(stats: RunStats, already: int) -> None:
    """Log the summary; fail when nothing could be scored."""
    if already:
        logger.info("skipped the %d files already in the output", already)
    logger.info("%s", stats.summary())
    if stats.failed:
        logger.warning("%d file(s) could not be scored; their rows carry the error", stats.failed)
    if stats.scored == 0 and (stats.failed or not already):
        found = "no image could be scored" if stats.failed else "no image files found"
        raise QualityNetError(f"{found}; check the paths (and --recursive)")
