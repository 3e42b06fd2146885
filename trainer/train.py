"""The training loop, in the shape of torchvision's reference ``train.py``.

The paper's recipe is the default: Adam lr 1e-4, batch 10, MAE + 10 (1 - PLCC), learning
rate reduced when the validation loss stalls for 2 epochs (floor 1e-8), early stopping,
at most 100 epochs. Values the paper leaves open are settings with documented defaults:
LR reduction factor 0.1 (Keras' and PyTorch's default), early-stopping patience 5 epochs,
split 70/10/20 by content group.

Outputs in ``out_dir``: ``model.pt`` (best validation loss), ``last.pt`` (resumable),
``split.json``, ``history.csv``, ``training_curves.png``, ``metrics.json`` (test set),
``test_scatter.png``. After training, ``model.pt`` gains a MOS mapping fitted on the
validation split (:mod:`qualitynet.trainer.mos_mapping`); test metrics are reported after
it and, labelled ``before_mos_mapping``, before it.

A run can collapse: the network's validation predictions become constant, and SROCC and
PLCC are undefined. Such an epoch is reported in one line and never replaces a best
checkpoint that ranks; undefined metrics are written as ``undefined`` (history.csv) and
``null`` (metrics.json), never as NaN. A run whose every epoch collapsed still writes its
files (``model.pt`` from the epoch of lowest validation loss) and says so in
``TrainResult.collapsed``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import cast

import torch

from qualitynet._cli import progress
from qualitynet.artifact import FIVE_CROPS, PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import (
    Checkpoint,
    create_network,
    load_checkpoint,
    network_entry,
    save_checkpoint,
    software_versions,
)
from qualitynet.trainer.datasets import DatasetIndex, Split, check_images, make_split
from qualitynet.trainer.deepfeat import DEEPFEAT_CONFIGS, DeepFeatConfig
from qualitynet.trainer.distributed import World
from qualitynet.trainer.loss import MaePlccLoss
from qualitynet.trainer.metrics import compute_metrics, degenerate_reason, format_value, json_metrics
from qualitynet.trainer.mlms import MLMS_CONFIGS, MlmsConfig, MlmsIqa
from qualitynet.trainer.model import ModelConfig, QualityNet
from qualitynet.trainer.mos_mapping import apply_mos_mapping, fit_mos_mapping
from qualitynet.trainer.plots import plot_history, plot_scatter
from qualitynet.trainer.rng import restore_rng_state, rng_state
from qualitynet.trainer.torch_data import CropMean, IqaDataset, ScoredDataset, crop_mean, default_workers, predict

__all__ = ["COLLAPSE_CAUSES", "BestEpoch", "TrainSettings", "TrainResult", "evaluate", "resolve_device", "score_run",
           "train", "train_one_epoch"]

log = logging.getLogger(__name__)

COLLAPSE_CAUSES = ("likely causes: a learning rate too high for this model (try --lr 10x lower), scores that do not "
                   "vary with the images (check the score column), or backbone features that do not vary "
                   "(--freeze-backbones without --pretrained)")


@dataclass
class TrainSettings:
    """Every knob of a training run (the CLI's options map one to one).

    ``config`` None means ``qualitynet`` for a new run and the checkpoint's own when resuming.
    """

    config: str | None = None
    epochs: int = 100
    batch_size: int = 10
    lr: float = 1e-4
    lr_factor: float = 0.1
    lr_patience: int = 2
    min_lr: float = 1e-8
    early_stop_patience: int = 5
    lambda_mae: float = 1.0
    lambda_plcc: float = 10.0
    split_ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    pretrained: bool = False
    freeze_backbones: bool = False
    device: str = "auto"
    seed: int = 0
    workers: int = -1
    max_steps: int | None = None
    quiet: bool = False
    view: str = "resize"
    crops: tuple[str, ...] = FIVE_CROPS
    short_side: int = 0
    decode: str = "full"
    decode_side: int | None = None

    def preprocess(self, config: ModelConfig | DeepFeatConfig | MlmsConfig) -> PreprocessCfg:
        """``config``'s preprocessing with this run's view and decode (see :class:`PreprocessCfg`)."""
        cfg = config.preprocess().with_view(self.view, self.crops, self.short_side)
        return cfg.with_decode(self.decode, self.decode_side)


@dataclass
class TrainResult:
    """Where the run's files are and what it scored on the test split."""

    out_dir: Path
    best_epoch: int
    epochs_run: int
    interrupted: bool
    test_metrics: dict[str, float]
    seconds: float
    raw_test_metrics: dict[str, float] = field(default_factory=dict)
    collapsed: str | None = None
    """Set when every epoch's validation predictions were degenerate: why, in one line."""


@dataclass
class BestEpoch:
    """Which epoch's weights are kept: a ranking epoch beats a collapsed one, then lower validation
    loss wins (a loss that is not a number counts as infinite)."""

    epoch: int = 0
    loss: float = math.inf
    collapsed: bool = False

    def offer(self, epoch: int, loss: float, collapsed: bool) -> bool:
        """Make ``epoch`` the best if it beats the current best; returns whether it did."""
        loss = loss if math.isfinite(loss) else math.inf
        better = self.epoch == 0 or (collapsed, loss) < (self.collapsed, self.loss)
        if better:
            self.epoch, self.loss, self.collapsed = epoch, loss, collapsed
        return better


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when available, else ``cpu``; refuse an absent CUDA device."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise QualityNetError(f"--device {device}: no CUDA device is available here; use --device cpu")
    return device


def train_one_epoch(model: torch.nn.Module, loader: torch.utils.data.DataLoader, criterion: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, device: str, epoch: int, max_steps: int | None = None,
                    quiet: bool = False) -> float:
    """One pass over the training data; returns the mean batch loss."""
    model.train()
    total, steps = 0.0, 0
    bar = progress(loader, quiet=quiet, desc=f"epoch {epoch}", unit="batch", leave=False)
    for images, targets in bar:
        loss = criterion(model(images.to(device)), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, steps = total + loss.item(), steps + 1
        bar.set_postfix(loss=f"{total / steps:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.1e}")
        if max_steps is not None and steps >= max_steps:
            break
    return total / max(steps, 1)


def evaluate(model: torch.nn.Module, dataset: ScoredDataset, criterion: MaePlccLoss, device: str, batch_size: int,
             workers: int) -> tuple[dict[str, float], str | None]:
    """Metrics on a whole split and, when its predictions cannot be ranked, why
    (:func:`~qualitynet.trainer.metrics.degenerate_reason`); ``loss`` is the training objective over
    the split (unit scale)."""
    pred, target = predict(model, dataset, batch_size, device, workers)
    scale = dataset.scale
    loss = criterion(torch.from_numpy(scale.to_unit(pred)), torch.from_numpy(scale.to_unit(target))).item()
    return {"loss": loss, **compute_metrics(pred, target)}, degenerate_reason(pred, target, scale.high - scale.low)


def _write_history(history: list[dict[str, float]], out_dir: Path) -> None:
    if not history:
        return
    with open(out_dir / "history.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows({key: value if key in ("epoch", "lr") else format_value(value, 6)
                          for key, value in row.items()} for row in history)
    plot_history(history, out_dir / "training_curves.png")


def _resumed_run(resume: Path, out: Path, settings: TrainSettings, copy_best: bool = True) -> tuple[Checkpoint, Split]:
    """Load ``last.pt``, check ``settings`` against it, and take over its run's split and (with ``copy_best``,
    the writing rank's job) best model."""
    resumed = load_checkpoint(resume)
    if not isinstance(resumed.model_config, ModelConfig) and resumed.model_config.name not in MLMS_CONFIGS:
        raise QualityNetError(f"{resume}: holds your own network ({resumed.model_config.factory}); iqa-train trains "
                              "QualityNet and the multi-level multi-scale configurations: train it in your own loop "
                              "and save it with save_custom_checkpoint")
    state = resumed.train_state
    if state is None:
        raise QualityNetError(f"{resume}: holds no training state; resume from the run's last.pt, not model.pt")
    saved = resumed.model_config.name
    if settings.config is not None and settings.config != saved:
        raise QualityNetError(f"--config {settings.config}: {resume} is a {saved!r} run; "
                              f"leave --config out to resume it (or pass --config {saved})")
    run_dir = resume.parent
    split = Split.load(run_dir / "split.json")
    best = run_dir / "model.pt"
    if state["best_epoch"] > 0 and not best.is_file():
        raise QualityNetError(f"{best}: missing; resuming needs the run's best model next to {resume.name}")
    if copy_best and state["best_epoch"] > 0 and run_dir.resolve() != out.resolve():
        shutil.copyfile(best, out / "model.pt")
    return resumed, split


def train(index: DatasetIndex, out_dir: str | Path, settings: TrainSettings,
          resume: str | Path | None = None, world: World | None = None) -> TrainResult:
    """Train QualityNet on ``index`` and write the run's files to ``out_dir``.

    Args:
        index: the dataset (see :func:`qualitynet.trainer.datasets.load_dataset`).
        out_dir: run folder; created if needed.
        settings: the recipe.
        resume: a ``last.pt`` to continue from. The model is built from it, its run's
            ``split.json`` and ``model.pt`` (best so far) are taken over into ``out_dir``, and
            every random-number state is restored, so the run continues as if never stopped.
        world: this process's place in a DDP run (see :mod:`qualitynet.trainer.distributed`);
            default: a single process.

    Returns:
        The run's summary. Ctrl-C stops after the current batch, keeps ``model.pt`` (the best
        so far) and still evaluates it on the test split.
    """
    if settings.config in DEEPFEAT_CONFIGS:  # not a network trained by epochs: a Gaussian process fitted once
        from qualitynet.trainer.gpr import train_gpr

        return train_gpr(index, out_dir, settings, resume, world)
    started = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    world = world or World()
    device = world.device(resolve_device(settings.device))
    workers = default_workers() if settings.workers < 0 else settings.workers

    resumed: Checkpoint | None = None
    if resume:
        resumed, split = _resumed_run(Path(resume), out, settings, copy_best=world.is_main)
    else:
        split = make_split(index, settings.seed, settings.split_ratios)
    state = resumed.train_state if resumed else None
    if world.is_main:
        split.save(out / "split.json")
    check_images(index.paths)

    model = _trainable(resumed) if resumed else create_network(settings.config or "qualitynet", settings.pretrained)
    model = model.to(device)
    settings = replace(settings, config=model.config.name)
    preprocess = resumed.preprocess if resumed else settings.preprocess(model.config)
    images = {name: IqaDataset(index, index.subset(getattr(split, name)), preprocess, index.score_scale,
                               flip=name == "train") for name in ("train", "val", "test")}
    net: torch.nn.Module = model
    parts: dict[str, ScoredDataset] = dict(images)
    if settings.freeze_backbones:  # the fast path: pooled backbone features computed once (frozen.py)
        from qualitynet.trainer.frozen import cache_pooled_features

        net, parts = cache_pooled_features(model, images, settings.batch_size, device, workers, settings.quiet)
        workers = 0  # the cached features are in memory
    log.info("%s: %d train / %d val / %d test images; %s on %s", index.name, len(parts["train"]),
             len(parts["val"]), len(parts["test"]), settings.config, device)
    loader = world.loader(parts["train"], settings.batch_size, workers, settings.seed)
    criterion = MaePlccLoss(settings.lambda_mae, settings.lambda_plcc)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=settings.lr_factor, patience=settings.lr_patience, min_lr=settings.min_lr)
    history: list[dict[str, float]] = []
    start_epoch, best = 1, BestEpoch()
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = state["history"]
        best = BestEpoch(state["best_epoch"], state["best_loss"], state.get("best_collapsed", False))
        start_epoch = state["epoch"] + 1
        if "rng" in state:
            restore_rng_state(state["rng"], loader.generator)
        else:
            log.warning("%s predates saved random-number states; the continued run will not match an "
                        "uninterrupted one", resume)
        log.info("resuming at epoch %d (best so far: epoch %d)", start_epoch, best.epoch)
    crops = parts["train"].crops  # a crops view trains on each image's mean crop score, as it is scored
    train_net, train_criterion = world.wrap(CropMean(net, crops) if crops else net), world.criterion(criterion)

    entry = network_entry(model)

    def checkpoint(train_state: dict[str, object] | None, metrics: dict[str, float]) -> Checkpoint:
        return Checkpoint(entry, {k: v.detach().cpu() for k, v in model.state_dict().items()}, preprocess,
                          index.score_scale, index.name, metrics, software_versions(), train_state)

    interrupted, epoch, warned = False, start_epoch - 1, False
    try:
        for epoch in range(start_epoch, settings.epochs + 1):
            world.start_epoch(loader, epoch)
            train_loss = train_one_epoch(train_net, loader, train_criterion, optimizer, device, epoch,
                                         settings.max_steps, settings.quiet)
            val, degenerate = world.from_main(lambda: evaluate(net, parts["val"], criterion, device,
                                                               settings.batch_size, workers))
            # A loss that is not a number counts as no improvement, for the schedule as for early stopping.
            scheduler.step(val["loss"] if math.isfinite(val["loss"]) else math.inf)
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
                            "val_plcc": val["plcc"], "val_srocc": val["srocc"], "lr": optimizer.param_groups[0]["lr"]})
            if degenerate and not warned and world.is_main:
                log.warning("epoch %d: training collapsed on the validation split: %s; SROCC and PLCC are undefined "
                            "and this epoch cannot become the best model (%s)", epoch, degenerate, COLLAPSE_CAUSES)
            warned = warned or degenerate is not None
            improved = best.offer(epoch, val["loss"], degenerate is not None)
            if improved and world.is_main:
                save_checkpoint(out / "model.pt", checkpoint(None, {f"val_{k}": v for k, v in val.items()}))
            if world.is_main:
                save_checkpoint(out / "last.pt", checkpoint(
                    {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                     "history": history, "best_loss": best.loss, "best_epoch": best.epoch,
                     "best_collapsed": best.collapsed, "rng": rng_state(loader.generator),
                     "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}},
                    {}))
            log.info("epoch %d: train loss %.4f, val loss %.4f, val SROCC %s%s", epoch, train_loss, val["loss"],
                     format_value(val["srocc"], 3), " (best)" if improved else "")
            if epoch - best.epoch >= settings.early_stop_patience:
                log.info("early stop: no validation improvement for %d epochs", settings.early_stop_patience)
                break
    except KeyboardInterrupt:
        interrupted = True
        log.warning("interrupted at epoch %d; keeping the best checkpoint (epoch %d)", epoch, best.epoch)
    if not world.is_main:  # rank 0 alone writes the history and scores the test split
        return TrainResult(out, best.epoch, len(history), interrupted, {}, time.perf_counter() - started)
    _write_history(history, out)
    if best.epoch == 0:
        raise QualityNetError("training stopped before the first epoch finished; no model.pt was written")

    collapsed = None
    if best.collapsed:
        collapsed = (f"training collapsed: the validation predictions were degenerate in every epoch ({len(history)}); "
                     f"model.pt (epoch {best.epoch}, lowest validation loss) is kept but does not rank images; "
                     f"{COLLAPSE_CAUSES}")
        log.warning("%s", collapsed)
    kept = load_checkpoint(out / "model.pt")
    model.load_state_dict(kept.state_dict)
    test_metrics, raw_metrics = score_run(out, kept, net, parts, settings.batch_size, device, workers,
                                          {"best_epoch": best.epoch, **({"collapsed": collapsed} if collapsed else {})})
    return TrainResult(out, best.epoch, len(history), interrupted, test_metrics, time.perf_counter() - started,
                       raw_metrics, collapsed)


def _trainable(resumed: Checkpoint) -> QualityNet | MlmsIqa:
    """The network of a ``last.pt`` (QualityNet or multi-level multi-scale: :func:`_resumed_run` refused others),
    its weights loaded, without the MOS-mapping wrapper of :meth:`Checkpoint.build_model`."""
    return cast(QualityNet | MlmsIqa, resumed.build_network())


def score_run(out: Path, kept: Checkpoint, net: torch.nn.Module, parts: dict[str, ScoredDataset], batch_size: int,
              device: str, workers: int, record: dict[str, object]) -> tuple[dict[str, float], dict[str, float]]:
    """The end of every training run: fit the MOS mapping on the validation split, score the test split
    with it (per crop, as exports do) and without, and write ``model.pt``, ``metrics.json`` and
    ``test_scatter.png``.

    Args:
        out: the run folder.
        kept: the run's best checkpoint (``model.pt``); gains the mapping and the test metrics.
        net: scores ``parts``' items on the unit scale, without the mapping (``kept``'s weights).
        parts: the ``val`` and ``test`` splits as ``net`` takes them.
        batch_size / device / workers: for scoring.
        record: what ``metrics.json`` says about the run besides the metrics (e.g. the best epoch).

    Returns:
        The test metrics after and before the MOS mapping.
    """
    scale = parts["test"].scale
    kept.mos_mapping = fit_mos_mapping(*predict(net, parts["val"], batch_size, device, workers), scale, "val")
    raw_crops, target = predict(net, parts["test"], batch_size, device, workers, per_crop=True)
    pred = crop_mean(apply_mos_mapping(kept.mos_mapping, scale, raw_crops))  # per crop, as exports do
    raw = crop_mean(raw_crops)
    test_metrics, raw_metrics = compute_metrics(pred, target), compute_metrics(raw, target)
    kept.metrics = {**kept.metrics, **{f"test_{k}": v for k, v in test_metrics.items()},
                    **{f"test_raw_{k}": v for k, v in raw_metrics.items()}}
    save_checkpoint(out / "model.pt", kept)
    record = {"split": "test", **record, "mos_mapping": asdict(kept.mos_mapping), **json_metrics(test_metrics),
              "before_mos_mapping": json_metrics(raw_metrics)}
    undefined = degenerate_reason(pred, target, scale.high - scale.low)
    if undefined:
        record["undefined_because"] = undefined
    (out / "metrics.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    plot_scatter(pred, target, out / "test_scatter.png", f"test split, SROCC {format_value(test_metrics['srocc'], 3)}")
    return test_metrics, raw_metrics

