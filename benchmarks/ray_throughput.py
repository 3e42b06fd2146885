"""img/s of ``iqa-run`` against ``iqa-run --ray`` (a local Ray instance) on the same photos.

``iqa-bench ray --out-dir runs/bench-runtime`` (dev and ray extras). Both are whole ``iqa-run``
processes on the same folder of 200 JPEGs (1024x768, made once and shared with
``iqa-bench runtime``), wall time including start-up, model load and, for Ray, starting the local
instance and its actors: ``iqa_run`` decodes with the default worker processes; ``ray`` runs one
scoring actor per core (decoding inside each actor). Also timed: ``ray_warm``, the scoring alone on
an already running Ray instance (start-up excluded), which is what a long job on a cluster sees.
Prints one JSON object and writes ``ray_throughput.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

from qualitynet.bench.fixtures import photo_folder, untrained_onnx
from qualitynet.bench.record import measurement
from qualitynet.bench.runtime_throughput import iqa_run

__all__ = ["measure_ray"]


def measure_ray(out: Path, count: int, threads: int) -> None:
    """Measure the three rates above; the report is ``out/ray_throughput.json``.

    Args:
        out: working folder (photos and the model are made there once).
        count: 1024x768 JPEGs.
        threads: ONNX Runtime threads of the plain ``iqa-run``.
    """
    from qualitynet.runtime.ray_scoring import RayScorer

    paths = photo_folder(out / "photos_1024x768", count)
    onnx_path = untrained_onnx(out)
    folder = Path(paths[0]).parent
    with measurement(out / "ray_throughput.json", threads) as report:
        report["images"] = len(paths)
        report["iqa_run"] = iqa_run(onnx_path, folder, out / "scores.csv", threads, [])
        report["ray"] = iqa_run(onnx_path, folder, out / "scores.csv", 1, ["--ray"])
        with RayScorer(onnx_path) as scorer:
            list(scorer.score_batches(paths[:8]))  # start the actors once
            start = time.perf_counter()
            rows = sum(len(batch) for batch in scorer.score_batches(paths))
            seconds = time.perf_counter() - start
        report["ray_warm"] = {"images": rows, "seconds": round(seconds, 2), "img_per_s": round(rows / seconds, 2)}
