"""How much a recipe's held-out SROCC depends on which scenes are held out: one training per split seed.

The demo reports one scene-disjoint split (seed 0: 3 of its 15 photos held out). This trains the
same recipe (``iqa-train``'s ``train()``, the config's recipe, flips, early stopping, MOS mapping
fitted on validation) on the demo's data once per seed, each seed holding out other photos, and
prints each split's test SROCC and within-image SROCC with their mean, median and range. The
backbones are frozen, so their features of every image and its flip are computed once
(:class:`qualitynet.trainer.frozen.SharedFeatures`) and each split trains in seconds.

    python benchmarks/scripts/split_spread.py --out runs/split-spread --seeds 0-9

``--data`` takes a ``scores.csv`` made before (``iqa-demo-data``); by default the demo's data are
written under ``--out``. ``--set lr=1e-4`` (repeatable) lays a training setting over the recipe.
Writes ``split_spread.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.datasets import Split, load_dataset
from qualitynet.trainer.demo_dataset import make_view_dataset
from qualitynet.trainer.frozen import SharedFeatures, scores_from_features
from qualitynet.trainer.metrics import within_srocc
from qualitynet.trainer.model import get_config
from qualitynet.trainer.recipes import recipe_for
from qualitynet.trainer.train import TrainSettings, train


def seed_list(text: str) -> list[int]:
    """``"0-9"`` or ``"0,3,5"`` as a list of seeds."""
    if "-" in text:
        first, last = (int(part) for part in text.split("-"))
        return list(range(first, last + 1))
    return [int(part) for part in text.split(",")]


def setting(text: str) -> tuple[str, object]:
    """``"lr=1e-4"`` as ``("lr", 1e-4)`` (the value read as JSON)."""
    key, _, value = text.partition("=")
    return key, json.loads(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/split-spread"))
    parser.add_argument("--data", type=Path, help="scores.csv of the data (default: the demo's, written under --out)")
    parser.add_argument("--config", default="lite02")
    parser.add_argument("--seeds", default="0-9", help="split seeds: 0-9 or 0,3,5")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--set", type=setting, action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainSettings field laid over the recipe, e.g. lr=1e-4")
    args = parser.parse_args()

    settings = TrainSettings(config=args.config, epochs=args.epochs, workers=0, quiet=True,
                             **recipe_for(args.config, **dict(args.set)))  # type: ignore[arg-type]
    view = settings.preprocess(get_config(args.config))
    csv_path = args.data or args.out / "data" / "scores.csv"
    if not csv_path.is_file():
        make_view_dataset(csv_path.parent, view)
    index = load_dataset("csv", csv_path=csv_path)
    shared = SharedFeatures(index, view)
    rows = []
    with shared.serving():
        for seed in seed_list(args.seeds):
            run = args.out / "runs" / f"{args.config}-seed{seed}"
            tick = time.perf_counter()
            result = train(index, run, replace(settings, seed=seed))
            assert shared.features is not None
            test = index.subset(Split.load(run / "split.json").test)
            scores = scores_from_features(load_checkpoint(run / "model.pt").build_model(), shared.features[test, 0])
            within = within_srocc(scores, index.mos[test], [index.reference(i) for i in test])["within_srocc"]
            photos = sorted({index.groups[i] for i in test})
            rows.append({"seed": seed, "test_photos": photos, "srocc": result.test_metrics["srocc"],
                         "within_srocc": within, "best_epoch": result.best_epoch})
            print(f"seed {seed}: test {', '.join(photos)}: SROCC {result.test_metrics['srocc']:.3f}, within-image "
                  f"{within:.3f}, best epoch {result.best_epoch} ({time.perf_counter() - tick:.0f} s)", flush=True)

    summary = {}
    for key in ("srocc", "within_srocc"):
        values = [row[key] for row in rows]
        summary[key] = {"mean": statistics.mean(values), "median": statistics.median(values),
                        "min": min(values), "max": max(values)}
        print(f"{key}: mean {summary[key]['mean']:.3f}, median {summary[key]['median']:.3f}, "
              f"range {summary[key]['min']:.3f}-{summary[key]['max']:.3f} over {len(values)} splits")
    report = {"config": args.config, "settings": {k: v for k, v in vars(settings).items() if k != "crops"},
              "data": str(csv_path), "torch": torch.__version__, "splits": rows, "summary": summary}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "split_spread.json").write_text(json.dumps(report, indent=1, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
