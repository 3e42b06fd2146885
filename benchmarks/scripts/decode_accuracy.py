"""Held-out accuracy of the demo's recipe with each decode, on JPEGs where the decode matters (issue 20.1).

The demo's own data are small PNGs, which both decodes read alike, so this script makes a
JPEG variant: each bundled photo at its own resolution (most are 512x512, so a DCT-scaled
decode to >= 224 px reads them at 1/2 scale), pristine and with the demo's four distortions
at four levels, saved as quality-95 JPEGs and scored 5..1 like the demo. It trains the demo's
recipe (``lite``, pretrained, frozen backbones, lr 1e-3) once with ``--decode full`` and once
with ``--decode dct`` on the same seeded split, and prints one JSON document: test-split
SROCC/PLCC/RMSE each way, the training time each way, and the machine and load average.

Example:
    .venv/bin/python benchmarks/scripts/decode_accuracy.py --out runs/decode-accuracy > decode-accuracy.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from qualitynet.bench.demo import DEMO_RECIPES
from qualitynet.bench.machine import machine_info
from qualitynet.trainer.datasets import load_dataset
from qualitynet.trainer.demo_data import DEMO_SOURCES, DISTORTIONS, demo_photo, write_scores_csv
from qualitynet.trainer.train import TrainSettings, train


def make_jpeg_dataset(out: Path) -> Path:
    """The demo's distortions on whole photos at their own resolution, as JPEGs; returns scores.csv."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for source in DEMO_SOURCES:
        photo = demo_photo(source, max_side=1024)
        variants = [("pristine", 0, photo)]
        for name, (distort, levels) in DISTORTIONS.items():
            variants += [(name, level, distort(photo, value)) for level, value in enumerate(levels, 1)]
        for name, level, image in variants:
            rel = f"images/{source}_{name}_{level}.jpg"
            image.save(out / rel, quality=95)
            rows.append({"image": rel, "score": 5.0 - level, "group": source})
    return write_scores_csv(out, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/decode-accuracy"))
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    csv_path = args.out / "data" / "scores.csv"
    if not csv_path.exists():
        make_jpeg_dataset(csv_path.parent)
    index = load_dataset("csv", csv_path=csv_path)
    report: dict[str, object] = {"machine": machine_info(len(os.sched_getaffinity(0))), "images": len(index),
                                 "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    for decode in ("full", "dct"):
        settings = TrainSettings(config="lite", epochs=args.epochs, quiet=True, decode=decode,
                                 **DEMO_RECIPES["lite"])  # type: ignore[arg-type]
        tick = time.perf_counter()
        result = train(index, args.out / decode, settings)
        report[decode] = {"seconds": round(time.perf_counter() - tick, 1), "best_epoch": result.best_epoch,
                          **{k: round(result.test_metrics[k], 4) for k in ("srocc", "plcc", "rmse")}}
    report["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
