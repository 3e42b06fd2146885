"""Which frozen-backbone recipe ranks unseen scenes best: lite vs lite02, the data's scales, the learning rate.

Every arm is a real ``train()`` run (the trainer's loop, early stopping, MOS mapping fitted on
validation, ``metrics.json``) on the demo data (``iqa-demo-data``: native-resolution crops),
over several scene-disjoint splits (one per seed). Backbones are frozen, so each backbone's
pooled features of every image are computed once, saved under ``--out/features``, and given
to ``train()`` in place of :func:`qualitynet.trainer.frozen.cache_pooled_features`'s own pass
(the same numbers: the script checks a few against the model's ``forward_pooled``). Lite0's
features serve both configs. Cached features have no flipped view, so no arm uses flips.

Each seed's run is also scored on camera-size (4000x3000) JPEG series of that seed's test
photos (``camera_eval.py``'s files and its five native-resolution crops per file, a file's
score the mean of its crops'), from cached crop features.

    python benchmarks/scripts/recipe_compare.py --data runs/recipe/data --out runs/recipe --seeds 0,1,2,3,4

Prints a Markdown table (mean and range over seeds) and writes ``recipe_compare.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import qualitynet.trainer.frozen as frozen
from qualitynet._cli import progress
from qualitynet.runtime.preprocess import image_to_tensor, load_rgb
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.data import IqaDataset
from qualitynet.trainer.datasets import DatasetIndex, Split, load_dataset, make_split
from qualitynet.trainer.demo_data import make_camera_series, make_demo_dataset
from qualitynet.trainer.metrics import within_srocc
from qualitynet.trainer.model import QualityNet, create_model, get_config
from qualitynet.trainer.train import TrainSettings, train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # camera_eval is a sibling script
from camera_eval import corner_boxes  # noqa: E402

# arm name -> (config, TrainSettings overrides, which references of the data it trains on)
ARMS: dict[str, tuple[str, dict[str, object], Callable[[str], bool]]] = {
    "lite, x1+x2, lr 1e-3": ("lite", {"lr": 1e-3}, lambda ref: True),
    "lite02, x1+x2, lr 1e-3": ("lite02", {"lr": 1e-3}, lambda ref: True),
    "lite, x1 only, lr 1e-3": ("lite", {"lr": 1e-3}, lambda ref: "_x1_" in ref),
    "lite, x1+x2, lr 3e-4": ("lite", {"lr": 3e-4}, lambda ref: True),
}


def _stream_features(model: QualityNet, stream: int, tensors: Callable[[int], np.ndarray], count: int,
                     cache: Path, desc: str) -> torch.Tensor:
    """``(count, C)`` pooled features of one stream, computed once and kept in ``cache``."""
    if cache.is_file():
        return torch.load(cache)
    rows = []
    with torch.inference_mode():
        for start in progress(range(0, count, 16), desc=desc, unit="batch"):
            batch = torch.from_numpy(np.stack([tensors(i) for i in range(start, min(start + 16, count))]))
            rows.append(torch.flatten(model.streams[stream].pooled(batch), 1))  # type: ignore[operator]
    features = torch.cat(rows)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(features, cache)
    return features


def config_features(config: str, key: str, tensors: Callable[[int], np.ndarray], count: int,
                    folder: Path) -> torch.Tensor:
    """Both streams' pooled features of ``count`` inputs for ``config``, per backbone cached in ``folder``."""
    model = create_model(config, pretrained=True).eval()
    parts = [_stream_features(model, k, tensors, count, folder / f"{backbone}-{key}.pt", f"{backbone} ({key})")
             for k, backbone in enumerate(get_config(config).backbones)]
    features = torch.cat(parts, dim=1)
    check = torch.from_numpy(np.stack([tensors(i) for i in range(2)]))
    with torch.inference_mode():
        worst = float((model.forward_pooled(check) - features[:2]).abs().max())
    if worst > 1e-4:
        raise SystemExit(f"cached {config} features differ from forward_pooled by {worst:.1e}; delete {folder}")
    return features


def cached_pooling(features: torch.Tensor, index: DatasetIndex) -> Callable[..., object]:
    """A stand-in for ``cache_pooled_features`` that serves ``features`` (rows in ``index`` order)."""
    def serve(model: QualityNet, parts: dict[str, IqaDataset], *args: object, **kwargs: object) -> object:
        model.freeze_backbones()
        model.eval()
        cached = {}
        for name, dataset in parts.items():
            rows = torch.as_tensor(dataset.indices)
            targets = torch.tensor(index.score_scale.to_unit(index.mos[dataset.indices]), dtype=torch.float32)
            unflipped = IqaDataset(dataset.index, dataset.indices, dataset.preprocess, dataset.scale)
            cached[name] = frozen.PooledFeatures(features[rows][:, None], targets, unflipped)
        return frozen.PooledHead(model), cached
    return serve


def camera_within(run: Path, crop_features: torch.Tensor, camera: DatasetIndex, photos: set[str]) -> float:
    """Mean within-photo SROCC of a trained run on the camera series of ``photos``, from cached crop features."""
    head = frozen.PooledHead(load_checkpoint(run / "model.pt").build_model()).eval()
    with torch.inference_mode():  # a file's score: the mean of its crops' scores
        scores = head(crop_features).float().numpy().ravel().reshape(len(camera), -1).mean(axis=1)
    rows = [i for i in range(len(camera)) if camera.groups[i] in photos]
    return within_srocc(scores[rows], camera.mos[rows], [camera.reference(i) for i in rows])["within_srocc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("runs/recipe/data"), help="iqa-demo-data folder")
    parser.add_argument("--out", type=Path, default=Path("runs/recipe"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--arms", help="comma-separated arm numbers (default: all)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--threads", type=int, help="torch threads (1 trains the small head faster on a busy machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    arms = list(ARMS) if not args.arms else [list(ARMS)[int(a)] for a in args.arms.split(",")]

    csv_path = args.data / "scores.csv"
    if not csv_path.is_file():
        make_demo_dataset(args.data)
    index = load_dataset("csv", csv_path=csv_path)
    cfg = get_config("lite").preprocess()
    key = hashlib.sha1("\n".join(index.key(i) for i in range(len(index))).encode()).hexdigest()[:10]

    # camera series of the first seed's test photos, five native crops per file
    # camera series for the test photos of every seed 0-4 (a fixed set, so its cached features serve any --seeds)
    held_out = {seed: {index.groups[i] for i in index.subset(make_split(index, seed).test)}
                for seed in sorted({*seeds, *range(5)})}
    photos = tuple(sorted(set().union(*held_out.values())))
    camera_csv = args.out / f"camera-{len(photos)}" / "scores.csv"
    camera = load_dataset("csv", csv_path=camera_csv if camera_csv.is_file() else
                          make_camera_series(camera_csv.parent, photos))
    crops: list[tuple[int, tuple[int, int, int, int]]] = []
    for i in range(len(camera)):
        crops += [(i, box) for box in corner_boxes((4000, 3000), cfg.width)]
    decoded: dict[int, object] = {}

    def crop_tensor(j: int) -> np.ndarray:
        i, box = crops[j]
        if i not in decoded:
            decoded.clear()
            decoded[i] = load_rgb(camera.paths[i])
        return image_to_tensor(decoded[i].crop(box), cfg)  # type: ignore[attr-defined]

    results: dict[str, dict[str, list[float]]] = {}
    for arm in arms:
        config, overrides, keep = ARMS[arm]
        features = config_features(config, key, lambda i: image_to_tensor(load_rgb(index.paths[i]), cfg), len(index),
                                   args.out / "features")
        camera_features = config_features(config, f"camera-{len(photos)}", crop_tensor, len(crops),
                                          args.out / "features")
        rows = [i for i in range(len(index)) if keep(index.reference(i))]
        sub = DatasetIndex(index.name, index.root, [index.paths[i] for i in rows], index.mos[rows],
                           [index.groups[i] for i in rows], index.score_scale, [index.references[i] for i in rows])
        frozen.cache_pooled_features = cached_pooling(features[rows], sub)  # type: ignore[assignment]
        figures = results.setdefault(arm, {"srocc": [], "within": [], "camera": [], "best_epoch": []})
        for seed in seeds:
            run = args.out / "runs" / f"{arm.replace(' ', '').replace(',', '_')}-seed{seed}"
            settings = TrainSettings(config=config, epochs=args.epochs, pretrained=True, freeze_backbones=True,
                                     seed=seed, workers=0, quiet=True, **overrides)  # type: ignore[arg-type]
            result = train(sub, run, settings)
            test_rows = sub.subset(Split.load(run / "split.json").test)
            checkpoint = load_checkpoint(run / "model.pt")
            head = frozen.PooledHead(checkpoint.build_model()).eval()
            with torch.inference_mode():
                pred = head(features[rows][test_rows]).numpy().ravel()
            within = within_srocc(pred, sub.mos[test_rows], [sub.reference(i) for i in test_rows])["within_srocc"]
            figures["srocc"].append(result.test_metrics["srocc"])
            figures["within"].append(within)
            figures["best_epoch"].append(result.best_epoch)
            figures["camera"].append(camera_within(run, camera_features, camera, held_out[seed]))
            print(f"{arm} seed {seed}: test SROCC {result.test_metrics['srocc']:.3f}, within {within:.3f}, "
                  f"camera {figures['camera'][-1]:.3f}", flush=True)

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.3f} ({min(values):.2f}-{max(values):.2f})"

    print(f"\nseeds {seeds}; test photos per seed: { {seed: sorted(held_out[seed]) for seed in seeds} }")
    print("| arm | test SROCC | within-image SROCC | camera-size within-photo SROCC | best epochs |")
    print("|---|---|---|---|---|")
    for arm, fig in results.items():
        print(f"| {arm} | {spread(fig['srocc'])} | {spread(fig['within'])} | {spread(fig['camera'])} | "
              f"{', '.join(str(int(e)) for e in fig['best_epoch'])} |")
    (args.out / "recipe_compare.json").write_text(json.dumps({"seeds": seeds, "photos": photos, **results},
                                                             indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
