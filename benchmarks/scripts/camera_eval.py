"""How a trained model ranks the distortion levels of camera-size JPEGs of photos it never saw.

Writes, offline, a 4000x3000 frame of each held-out photo (enlarged, with sensor-like grain;
:func:`qualitynet.trainer.demo_dataset.make_camera_series`) saved at JPEG qualities 8-95 and
with added noise (sigma 0-40, quality 95), then scores every file with the checkpoint and
reports the mean within-photo SROCC: per photo and series (JPEG, noise), the rank
correlation of the scores with the distortion level, averaged.

    python benchmarks/scripts/camera_eval.py demo-output/run/model.pt --out runs/camera-eval

The held-out photos are the test split of the checkpoint's run (``split.json`` beside it),
unless ``--photos`` names others. Each file is scored through ``iqa-eval``'s path
(:func:`evaluate_checkpoint`) in several views:

- ``record``: as the checkpoint's preprocessing record says (what every front end does);
- ``record, full decode`` / ``record, dct decode``: the record's view with the other decode
  (where the view allows DCT scaling);
- ``native crops``: the centre and the four corners at the file's own resolution, averaged;
- ``whole image``: the whole file resized to the input size (the paper's view).

Prints a Markdown table and writes ``camera_eval.json`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from qualitynet.artifact import FIVE_CROPS
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.datasets import Split, load_dataset
from qualitynet.trainer.demo_dataset import DATASET_SOURCES, make_camera_series
from qualitynet.trainer.evaluate import evaluate_checkpoint
from qualitynet.trainer.metrics import within_srocc


def per_reference(pred: np.ndarray, target: np.ndarray, references: list[str]) -> dict[str, float]:
    """Within-reference SROCC of every reference on its own."""
    result = {}
    for ref in sorted(set(references)):
        rows = [i for i, r in enumerate(references) if r == ref]
        result[ref] = within_srocc(pred[rows], target[rows], [ref] * len(rows))["within_srocc"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="model.pt from iqa-train or iqa-demo")
    parser.add_argument("--out", type=Path, default=Path("runs/camera-eval"))
    parser.add_argument("--photos", help=f"comma-separated, from: {', '.join(DATASET_SOURCES)}")
    parser.add_argument("--size", default="4000x3000", help="frame size WxH")
    args = parser.parse_args()

    if args.photos:
        photos = tuple(args.photos.split(","))
    else:
        split = Split.load(args.checkpoint.parent / "split.json")  # demo names: SOURCE_xSCALE_CROP_DISTORTION_LEVEL
        photos = tuple(sorted({Path(key).name.rsplit("_", 4)[0].rsplit("_x", 1)[0] for key in split.test}))
    unknown = [p for p in photos if p not in DATASET_SOURCES]
    if unknown:
        sys.exit(f"unknown photo(s) {', '.join(unknown)}; choose from {', '.join(DATASET_SOURCES)}")
    width, height = (int(v) for v in args.size.lower().split("x"))
    data = args.out / f"jpegs-{width}x{height}-{'-'.join(photos)}"
    csv_path = data / "scores.csv"
    if not csv_path.is_file():
        print(f"writing the camera-size JPEGs of {', '.join(photos)} into {data}", file=sys.stderr)
        make_camera_series(data, photos, (width, height))
    index = load_dataset("csv", csv_path=csv_path)
    references = [index.reference(i) for i in range(len(index))]
    cfg = load_checkpoint(args.checkpoint).preprocess
    views = {"record": cfg, "native crops": cfg.with_decode("full").with_view("crops", FIVE_CROPS, 0),
             "whole image": cfg.with_view("resize").with_decode("full")}
    other = "full" if cfg.decode == "dct" else "dct"
    if other == "full" or cfg.view == "resize" or cfg.short_side:
        views[f"record, {other} decode"] = cfg.with_decode(other)
    result: dict[str, object] = {"checkpoint": str(args.checkpoint), "photos": list(photos),
                                 "frame": f"{width}x{height}", "files": len(index)}
    print(f"| view | mean within-photo SROCC | worst | {' | '.join(sorted(set(references)))} |")
    print("|---|---|---|" + "---|" * len(set(references)))
    for view, view_cfg in views.items():
        pred = evaluate_checkpoint(args.checkpoint, index, workers=0, preprocess=view_cfg).predictions
        summary = within_srocc(pred, index.mos, references)
        each = per_reference(pred, index.mos, references)
        result[view] = {**summary, "preprocess": view_cfg.describe(), "per_reference": each,
                        "scores": dict(zip(map(index.key, range(len(index))), pred.tolist()))}
        print(f"| {view} | {summary['within_srocc']:.3f} | {summary['within_srocc_min']:.3f} | "
              + " | ".join(f"{v:.2f}" for v in each.values()) + " |", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "camera_eval.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
