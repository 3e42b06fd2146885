"""Which frozen-backbone recipe ranks unseen scenes best: the view and the data's scale, lite vs lite02, the lr.

Every arm is a real ``train()`` run (the trainer's loop, early stopping, MOS mapping fitted on
validation, ``metrics.json``) over several scene-disjoint splits (one per seed: the split is by
source photo, so every data below holds out the same photos for a seed). Its data is one of
:data:`DATA`: ``native`` (``iqa-demo-data``: 224-pixel crops at the photos' own scale and 2x,
whole-image view) or ``sNNN`` (``make_view_dataset``: camera-like frames at 2x and 4x the
view's scale, distorted whole, brought to short side NNN and scored through the record's crops
view, 5 crops at short side NNN). Backbones are frozen, so each backbone's pooled features of
every image are computed once, saved under ``--out/features``, and given to ``train()`` in
place of :func:`qualitynet.trainer.frozen.cache_pooled_features`'s own pass (the same numbers:
the script checks one image against the model's ``forward_pooled``). Cached features have no
flipped view, so no arm uses flips.

Each seed's run is also scored on camera-size (4000x3000) JPEG series of that seed's test
photos (``camera_eval.py``'s files), through the arm's scoring view (native data: 5
native-resolution crops; ``sNNN``: the record's view), decoded in full or DCT-scaled
(``--decodes full,dct``), from cached features.

    python benchmarks/scripts/recipe_compare.py --out runs/recipe --seeds 0,1,2 --arms 0,4 --decodes full,dct

Prints a Markdown table (mean and range over seeds) and writes ``recipe_compare.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import qualitynet.trainer.frozen as frozen
from qualitynet._cli import progress
from qualitynet.artifact import FIVE_CROPS, PreprocessCfg
from qualitynet.runtime.preprocess import file_to_inputs
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.datasets import DatasetIndex, Split, load_dataset, make_split
from qualitynet.trainer.demo_dataset import make_camera_series, make_demo_dataset, make_view_dataset
from qualitynet.trainer.metrics import within_srocc
from qualitynet.trainer.model import QualityNet, create_model, get_config
from qualitynet.trainer.train import TrainSettings, train

LITE = get_config("lite").preprocess()
# data name -> (the view it trains with, the view camera-size files are scored with)
DATA: dict[str, tuple[PreprocessCfg, PreprocessCfg]] = {
    "native": (LITE, LITE.with_view("crops", FIVE_CROPS, 0)),  # iqa-demo-data's 224 crops; 5 native crops
    **{f"s{side}": (LITE.with_view("crops", FIVE_CROPS, side),) * 2 for side in (512, 768, 1024)},
}
# arm name -> (config, TrainSettings overrides, data, which references of the data it trains on)
ARMS: dict[str, tuple[str, dict[str, object], str, Callable[[str], bool]]] = {
    "lite, native x1+x2, lr 1e-3": ("lite", {"lr": 1e-3}, "native", lambda ref: True),
    "lite02, native x1+x2, lr 1e-3": ("lite02", {"lr": 1e-3}, "native", lambda ref: True),
    "lite, native x1 only, lr 1e-3": ("lite", {"lr": 1e-3}, "native", lambda ref: "_x1_" in ref),
    "lite, native x1+x2, lr 3e-4": ("lite", {"lr": 3e-4}, "native", lambda ref: True),
    "lite, crops@768 frames x2+x4, lr 1e-3": ("lite", {"lr": 1e-3}, "s768", lambda ref: True),
    "lite, crops@768 frames x4 only, lr 1e-3": ("lite", {"lr": 1e-3}, "s768", lambda ref: ref.endswith("_f4")),
    "lite, crops@512 frames x2+x4, lr 1e-3": ("lite", {"lr": 1e-3}, "s512", lambda ref: True),
    "lite02, crops@768 frames x2+x4, lr 1e-3": ("lite02", {"lr": 1e-3}, "s768", lambda ref: True),
    "lite, crops@768 frames x2+x4, lr 3e-4": ("lite", {"lr": 3e-4}, "s768", lambda ref: True),
    "lite, crops@1024 frames x2+x4, lr 1e-3": ("lite", {"lr": 1e-3}, "s1024", lambda ref: True),
    "lite, crops@768 frames x2 only, lr 1e-3": ("lite", {"lr": 1e-3}, "s768", lambda ref: ref.endswith("_f2")),
    "lite02, crops@768, lr 3e-4": ("lite02", {"lr": 3e-4}, "s768", lambda ref: True),  # the demo's recipe
}


def _stream_features(model: QualityNet, stream: int, inputs: Callable[[int], np.ndarray], count: int,
                     cache: Path, desc: str) -> torch.Tensor:
    """``(count, K, C)`` pooled features of one stream (K inputs per image), computed once and kept in ``cache``."""
    if cache.is_file():
        return torch.load(cache)
    rows = []
    with torch.inference_mode():
        for start in progress(range(0, count, 4), desc=desc, unit="batch"):
            batch = torch.from_numpy(np.stack([inputs(i) for i in range(start, min(start + 4, count))]))
            pooled = model.streams[stream].pooled(batch.flatten(0, 1))  # type: ignore[operator]
            rows.append(torch.flatten(pooled, 1).reshape(len(batch), batch.shape[1], -1))
    features = torch.cat(rows)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(features, cache)
    return features


def config_features(config: str, key: str, inputs: Callable[[int], np.ndarray], count: int,
                    folder: Path) -> torch.Tensor:
    """Both streams' pooled features ``(count, K, C)`` of ``count`` images for ``config``, per backbone cached
    in ``folder``; ``inputs(i)`` is image ``i``'s ``(K, 3, H, W)`` network inputs."""
    model = create_model(config, pretrained=True).eval()
    parts = [_stream_features(model, k, inputs, count, folder / f"{backbone}-{key}.pt", f"{backbone} ({key})")
             for k, backbone in enumerate(get_config(config).backbones)]
    features = torch.cat(parts, dim=2)
    check = torch.from_numpy(inputs(0))
    with torch.inference_mode():
        worst = float((model.forward_pooled(check) - features[0]).abs().max())
    if worst > 1e-4:
        raise SystemExit(f"cached {config} features differ from forward_pooled by {worst:.1e}; delete {folder}")
    return features


def image_scores(run: Path, features: torch.Tensor) -> np.ndarray:
    """Each image's score from its cached ``(K, C)`` features: the mean of its inputs' scores (mapped per input)."""
    return frozen.scores_from_features(load_checkpoint(run / "model.pt").build_model(), features)


def camera_within(scores: np.ndarray, camera: DatasetIndex, photos: set[str]) -> float:
    """Mean within-photo SROCC of ``scores`` (one per camera file) over the camera series of ``photos``."""
    rows = [i for i in range(len(camera)) if camera.groups[i] in photos]
    return within_srocc(scores[rows], camera.mos[rows], [camera.reference(i) for i in rows])["within_srocc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/recipe/data"),
                        help="where each arm's data is written (a folder per data name)")
    parser.add_argument("--out", type=Path, default=Path("runs/recipe"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arms", help="comma-separated arm numbers (default: all)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--decodes", default="full", help="camera-file decodes to score: full, dct or full,dct")
    parser.add_argument("--threads", type=int, help="torch threads (1 trains the small head faster on a busy machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = list(ARMS) if not args.arms else [list(ARMS)[int(a)] for a in args.arms.split(",")]

    indexes: dict[str, DatasetIndex] = {}

    def data_index(name: str) -> DatasetIndex:
        if name not in indexes:
            csv_path = args.data / name / "scores.csv"
            if not csv_path.is_file():
                cfg, tick = DATA[name][0], time.perf_counter()
                make_demo_dataset(csv_path.parent) if name == "native" else make_view_dataset(csv_path.parent, cfg)
                print(f"data {name}: written in {time.perf_counter() - tick:.0f} s", file=sys.stderr, flush=True)
            indexes[name] = load_dataset("csv", csv_path=csv_path)
        return indexes[name]

    # camera series of the test photos of the seeds asked for (split by photo: the same photos for every data)
    first = data_index(ARMS[arms[0]][2])
    held_out = {seed: {first.groups[i] for i in first.subset(make_split(first, seed).test)} for seed in seeds}
    photos = tuple(sorted(set().union(*held_out.values())))
    camera_csv = args.out / f"camera-{'-'.join(photos)}" / "scores.csv"
    camera = load_dataset("csv", csv_path=camera_csv if camera_csv.is_file() else
                          make_camera_series(camera_csv.parent, photos))

    results: dict[str, dict[str, list[float]]] = {}
    for arm in arms:
        config, overrides, data, keep = ARMS[arm]
        full, (train_cfg, camera_cfg) = data_index(data), DATA[data]
        rows = [i for i in range(len(full)) if keep(full.reference(i))]
        index = DatasetIndex(full.name, full.root, [full.paths[i] for i in rows], full.mos[rows],
                             [full.groups[i] for i in rows], full.score_scale, [full.references[i] for i in rows])
        key = hashlib.sha1("\n".join(index.key(i) for i in range(len(index))).encode()).hexdigest()[:10]
        features = config_features(config, f"{data}-{key}", lambda i: file_to_inputs(index.paths[i], train_cfg),
                                   len(index), args.out / "features")
        camera_features = {}
        for decode in args.decodes.split(","):
            if decode == "dct" and camera_cfg.view == "crops" and not camera_cfg.short_side:
                continue  # native-resolution crops cannot be DCT-scaled
            cfg = camera_cfg if decode == "full" else camera_cfg.with_decode(decode)
            camera_features[decode] = config_features(
                config, f"camera-{'-'.join(photos)}-{data}-{decode}", lambda i: file_to_inputs(camera.paths[i], cfg),
                len(camera), args.out / "features")
        sub = index
        shared = frozen.SharedFeatures(sub, train_cfg, features[:, None] if train_cfg.view == "crops" else features)
        figures = results.setdefault(arm, {"srocc": [], "within": [], "best_epoch": [],
                                           **{f"camera_{d}": [] for d in camera_features}})
        view = {"view": train_cfg.view, "crops": train_cfg.crops or FIVE_CROPS, "short_side": train_cfg.short_side}
        for seed in seeds:
            run = args.out / "runs" / f"{arm.replace(' ', '').replace(',', '_').replace('@', '')}-seed{seed}"
            settings = TrainSettings(config=config, epochs=args.epochs, pretrained=True, freeze_backbones=True,
                                     seed=seed, workers=0, quiet=True, **view, **overrides)  # type: ignore[arg-type]
            with shared.serving():
                result = train(sub, run, settings)
            test_rows = sub.subset(Split.load(run / "split.json").test)
            pred = image_scores(run, features[test_rows])
            within = within_srocc(pred, sub.mos[test_rows], [sub.reference(i) for i in test_rows])["within_srocc"]
            figures["srocc"].append(result.test_metrics["srocc"])
            figures["within"].append(within)
            figures["best_epoch"].append(result.best_epoch)
            for decode, feats in camera_features.items():
                figures[f"camera_{decode}"].append(camera_within(image_scores(run, feats), camera, held_out[seed]))
            print(f"{arm} seed {seed}: test SROCC {result.test_metrics['srocc']:.3f}, within {within:.3f}, camera "
                  + ", ".join(f"{d} {figures[f'camera_{d}'][-1]:.3f}" for d in camera_features), flush=True)

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} ({min(values):.2f}-{max(values):.2f})"

    print(f"\nseeds {seeds}; test photos per seed: { {seed: sorted(held_out[seed]) for seed in seeds} }")
    decodes = args.decodes.split(",")
    print("| arm | test SROCC | within-image SROCC | " + " | ".join(f"camera-size within-photo SROCC ({d} decode)"
                                                                  for d in decodes) + " | best epochs |")
    print("|---|---|---|" + "---|" * len(decodes) + "---|")
    for arm, fig in results.items():
        print(f"| {arm} | {spread(fig['srocc'])} | {spread(fig['within'])} | "
              + " | ".join(spread(fig[f"camera_{d}"]) if f"camera_{d}" in fig else "n/a" for d in decodes)
              + f" | {', '.join(str(int(e)) for e in fig['best_epoch'])} |")
    (args.out / "recipe_compare.json").write_text(json.dumps({"seeds": seeds, "photos": photos, **results},
                                                             indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
