"""Which frozen-backbone recipe ranks unseen scenes best: lite vs lite02 vs deep features + GP, the data's
scales, the learning rate.

Every arm is a real ``train()`` run (the trainer's loop, early stopping, MOS mapping fitted on
validation, ``metrics.json``; for ``deepfeat-lite`` the Gaussian-process fit of
:mod:`qualitynet.trainer.gpr`, its layer chosen on validation) on the demo data
(``iqa-demo-data``: native-resolution crops), over several scene-disjoint splits (one per seed).
Backbones are frozen, so each backbone's pooled features of every image (every layer an arm
needs, one pass) are computed once by :func:`qualitynet.trainer.frozen.pool_views`, saved under
``--out/features``, and given to ``train()`` in place of its own pass (the same numbers: the
script checks a few against the model's ``forward_pooled``). Lite0's features serve every
config. No arm uses flips (``deepfeat-lite`` scores the whole image unflipped); a config whose
graph averages an image's and its flip's predictions would have its features cached with the
flipped view too.

Each seed's run is also scored on camera-size (4000x3000) JPEG series of that seed's test
photos (``camera_eval.py``'s files and its five native-resolution crops per file, a file's
score the mean of its crops'), from cached crop features.

    python benchmarks/scripts/recipe_compare.py --data runs/recipe/data --out runs/recipe --seeds 0,1,2,3,4

Prints a Markdown table (mean and range over seeds: test SROCC, PLCC and RMSE after the MOS
mapping, within-image SROCC, camera-size within-photo SROCC) and writes ``recipe_compare.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import qualitynet.trainer.frozen as frozen
from qualitynet._cli import progress
from qualitynet.runtime.preprocess import image_to_tensor, load_rgb
from qualitynet.trainer import gpr
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.data import IqaDataset, default_workers
from qualitynet.trainer.datasets import DatasetIndex, Split, load_dataset, make_split
from qualitynet.trainer.deepfeat import DEEPFEAT_CONFIGS, DeepFeatConfig, PooledLayers, pooled_layers
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
    "deepfeat-lite (GP), x1+x2": ("deepfeat-lite", {}, lambda ref: True),
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


def _checked(config: str, model: QualityNet, features: torch.Tensor, tensors: Callable[[int], np.ndarray],
             folder: Path) -> torch.Tensor:
    """``features`` after checking its first rows against the model's own ``forward_pooled``."""
    check = torch.from_numpy(np.stack([tensors(i) for i in range(2)]))
    with torch.inference_mode():
        worst = float((model.forward_pooled(check) - features[:2]).abs().max())
    if worst > 1e-4:
        raise SystemExit(f"cached {config} features differ from forward_pooled by {worst:.1e}; delete {folder}")
    return features


def config_features(config: str, key: str, tensors: Callable[[int], np.ndarray], count: int,
                    folder: Path) -> torch.Tensor:
    """Both streams' pooled features of ``count`` inputs for ``config``, per backbone cached in ``folder``."""
    model = create_model(config, pretrained=True).eval()
    parts = [_stream_features(model, k, tensors, count, folder / f"{backbone}-{key}.pt", f"{backbone} ({key})")
             for k, backbone in enumerate(get_config(config).backbones)]
    return _checked(config, model, torch.cat(parts, dim=1), tensors, folder)


# backbone -> (its extractor over the layers the arms need, (N, views, C) features of the demo data in index order)
LayerCache = dict[str, tuple[PooledLayers, torch.Tensor]]


def layer_plan(configs: set[str]) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Per backbone, the layers and whether the flipped view are needed by the arms' configs."""
    plan: dict[str, tuple[tuple[str, ...], bool]] = {}
    for config in sorted(configs):
        if config in DEEPFEAT_CONFIGS:
            deep = DEEPFEAT_CONFIGS[config]
            needs = [(backbone, layers, deep.flips) for backbone, layers in deep.candidates]
        else:
            needs = [(backbone, ("head",), False) for backbone in get_config(config).backbones]
        for backbone, layers, flips in needs:
            known, flipped = plan.get(backbone, ((), False))
            plan[backbone] = (tuple(dict.fromkeys([*known, *layers])), flipped or flips)
    return plan


def layer_features(plan: dict[str, tuple[tuple[str, ...], bool]], index: DatasetIndex, key: str,
                   folder: Path) -> LayerCache:
    """Every planned backbone's pooled layers of every demo image, through the trainer's own pass, cached."""
    found: LayerCache = {}
    preprocess = get_config("lite").preprocess()
    for backbone, (layers, flips) in plan.items():
        extractor = pooled_layers(backbone, layers, pretrained=True).eval()
        cache = folder / f"{backbone}-{'+'.join(layers)}{'-flips' if flips else ''}-{key}.pt"
        flipped = cache.with_name(cache.name.replace(f"-{key}.pt", f"-flips-{key}.pt"))
        if not flips and not cache.is_file() and flipped.is_file():  # view 0 of a pass that also flipped
            torch.save(torch.load(flipped)[:, :1].clone(), cache)
        if not cache.is_file():
            started = time.perf_counter()
            dataset = IqaDataset(index, range(len(index)), preprocess, index.score_scale, flip=flips)
            features, _ = frozen.pool_views(extractor, dataset, 16, "cpu", default_workers(), False, backbone)
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(features, cache)
            print(f"{backbone} {'+'.join(layers)} features of {len(index)} images{' and flips' if flips else ''}: "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
        found[backbone] = (extractor, torch.load(cache))
    return found


def head_features(config: str, cache: LayerCache, index: DatasetIndex, folder: Path) -> torch.Tensor:
    """A QualityNet config's pooled features (both streams' head, unflipped) from the layer cache, checked."""
    model = create_model(config, pretrained=True).eval()
    parts = [cache[backbone][1][:, 0, cache[backbone][0].offsets()["head"]]
             for backbone in get_config(config).backbones]
    preprocess = get_config(config).preprocess()
    return _checked(config, model, torch.cat(parts, dim=1), lambda i: image_to_tensor(load_rgb(index.paths[i]),
                                                                                       preprocess), folder)


def cached_candidates(cache: LayerCache, rows: list[int]) -> Callable[..., object]:
    """A stand-in for :func:`qualitynet.trainer.gpr.candidate_features` serving ``cache``'s rows ``rows``."""
    def serve(config: DeepFeatConfig, parts: dict[str, IqaDataset], *args: object, **kwargs: object) -> object:
        found = {}
        for backbone, layers in config.candidates:
            extractor, features = cache[backbone]
            if extractor.layers != tuple(layers):
                raise SystemExit(f"cached {backbone} layers {extractor.layers} are not {config.name}'s {layers}")
            found[backbone] = (extractor, {name: features[rows][torch.as_tensor(dataset.indices)]
                                           for name, dataset in parts.items()})
        return found
    return serve


def deepfeat_predictions(run: Path, cache: LayerCache, rows: list[int]) -> np.ndarray:
    """A fitted deep-features run's raw unit-scale scores of ``rows`` (no MOS mapping), from cached features."""
    checkpoint = load_checkpoint(run / "model.pt")
    kwargs = checkpoint.spec.kwargs
    extractor, features = cache[kwargs["backbone"]]
    model = checkpoint.build_model(mapped=False).model  # type: ignore[union-attr]  # ScoreOutput's network
    with torch.inference_mode():
        return model.score_views(features[rows][..., extractor.offsets()[kwargs["layer"]]]).numpy().ravel()


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
    parser.add_argument("--no-camera", action="store_true", help="skip the camera-size series (their 4000x3000 "
                        "JPEGs cost minutes to write and decode)")
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
    held_out = {seed: {index.groups[i] for i in index.subset(make_split(index, seed).test)}
                for seed in sorted({*seeds, *range(5)})}
    photos = tuple(sorted(set().union(*held_out.values())))

    # camera series for the test photos of every seed 0-4 (a fixed set, so its cached features serve any --seeds),
    # five native crops per file
    camera: DatasetIndex | None = None
    crops: list[tuple[int, tuple[int, int, int, int]]] = []
    if not args.no_camera:
        camera_csv = args.out / f"camera-{len(photos)}" / "scores.csv"
        camera = load_dataset("csv", csv_path=camera_csv if camera_csv.is_file() else
                              make_camera_series(camera_csv.parent, photos))
        for i in range(len(camera)):
            crops += [(i, box) for box in corner_boxes((4000, 3000), cfg.width)]
    decoded: dict[int, object] = {}

    def crop_tensor(j: int) -> np.ndarray:
        i, box = crops[j]
        if i not in decoded:
            decoded.clear()
            assert camera is not None
            decoded[i] = load_rgb(camera.paths[i])
        return image_to_tensor(decoded[i].crop(box), cfg)  # type: ignore[attr-defined]

    cache = layer_features(layer_plan({ARMS[arm][0] for arm in arms}), index, key, args.out / "features")
    results: dict[str, dict[str, list[float]]] = {}
    for arm in arms:
        config, overrides, keep = ARMS[arm]
        deep = config in DEEPFEAT_CONFIGS
        rows = [i for i in range(len(index)) if keep(index.reference(i))]
        sub = DatasetIndex(index.name, index.root, [index.paths[i] for i in rows], index.mos[rows],
                           [index.groups[i] for i in rows], index.score_scale, [index.references[i] for i in rows])
        camera_features = None
        if deep:
            gpr.candidate_features = cached_candidates(cache, rows)  # type: ignore[assignment]
        else:
            features = head_features(config, cache, index, args.out / "features")
            frozen.cache_pooled_features = cached_pooling(features[rows], sub)  # type: ignore[assignment]
            if camera is not None:
                camera_features = config_features(config, f"camera-{len(photos)}", crop_tensor, len(crops),
                                                  args.out / "features")
        figures = results.setdefault(arm, {name: [] for name in ("srocc", "plcc", "rmse", "within", "camera",
                                                                 "best_epoch", "seconds")})
        for seed in seeds:
            run = args.out / "runs" / f"{arm.replace(' ', '').replace(',', '_')}-seed{seed}"
            settings = TrainSettings(config=config, epochs=args.epochs, pretrained=True, freeze_backbones=True,
                                     seed=seed, workers=0, quiet=True, **overrides)  # type: ignore[arg-type]
            result = train(sub, run, settings)
            test_rows = sub.subset(Split.load(run / "split.json").test)
            if deep:
                pred = deepfeat_predictions(run, cache, [rows[i] for i in test_rows])
            else:
                head = frozen.PooledHead(load_checkpoint(run / "model.pt").build_model()).eval()
                with torch.inference_mode():
                    pred = head(features[rows][test_rows]).numpy().ravel()
            within = within_srocc(pred, sub.mos[test_rows], [sub.reference(i) for i in test_rows])["within_srocc"]
            for name in ("srocc", "plcc", "rmse"):
                figures[name].append(result.test_metrics[name])
            figures["within"].append(within)
            figures["best_epoch"].append(result.best_epoch)
            figures["seconds"].append(round(result.seconds, 1))
            figures["camera"].append(math.nan if camera is None or camera_features is None else
                                     camera_within(run, camera_features, camera, held_out[seed]))
            print(f"{arm} seed {seed}: test SROCC {result.test_metrics['srocc']:.3f}, PLCC "
                  f"{result.test_metrics['plcc']:.3f}, RMSE {result.test_metrics['rmse']:.3f}, within {within:.3f}, "
                  f"camera {figures['camera'][-1]:.3f}, {result.seconds:.0f} s", flush=True)

    def spread(values: list[float]) -> str:
        measured = [v for v in values if math.isfinite(v)]
        if not measured:
            return "not measured"
        each = " / ".join(f"{v:.3f}" for v in values)
        return f"{each} ({statistics.mean(measured):.3f})"

    print(f"\nseeds {seeds}; test photos per seed: { {seed: sorted(held_out[seed]) for seed in seeds} }")
    print("| arm | test SROCC | test PLCC | test RMSE | within-image SROCC | camera-size within-photo SROCC | "
          "best epochs |")
    print("|---|---|---|---|---|---|---|")
    for arm, fig in results.items():
        print(f"| {arm} | {spread(fig['srocc'])} | {spread(fig['plcc'])} | {spread(fig['rmse'])} | "
              f"{spread(fig['within'])} | {spread(fig['camera'])} | "
              f"{', '.join(str(int(e)) for e in fig['best_epoch'])} |")
    written = {arm: {name: [v if math.isfinite(v) else None for v in values] for name, values in fig.items()}
               for arm, fig in results.items()}  # not measured: null
    (args.out / "recipe_compare.json").write_text(json.dumps({"seeds": seeds, "photos": photos, **written},
                                                             indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
