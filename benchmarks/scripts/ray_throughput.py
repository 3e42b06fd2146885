"""img/s of ``iqa-run`` against ``iqa-run --ray`` (a local Ray instance) on the same photos.

Run from the repository root (dev and ray extras):

    python benchmarks/scripts/ray_throughput.py --out-dir runs/bench-runtime

Both are whole ``iqa-run`` processes on the same folder of 200 JPEGs (1024x768, made once
and shared with ``runtime_throughput.py``), wall time including start-up, model load and, for
Ray, starting the local instance and its actors: ``iqa_run`` decodes with the default worker
processes; ``ray`` runs one scoring actor per core (decoding inside each actor). Also timed:
``ray_warm``, the scoring alone on an already running Ray instance (start-up excluded), which is
what a long job on a cluster sees. Prints one JSON object and writes ``ray_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from runtime_throughput import iqa_run  # noqa: E402
from script_fixtures import REPO, photos, small_onnx  # noqa: E402

from qualitynet.cpus import usable_cpus  # noqa: E402
from qualitynet.runtime.ray_scoring import RayScorer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench-runtime")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=usable_cpus(), help="ONNX Runtime threads of iqa-run")
    args = parser.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = photos(out / "photos_1024x768", args.count, (1024, 768))
    onnx_path = small_onnx(out)
    folder = Path(paths[0]).parent
    report: dict[str, object] = {"cores": os.cpu_count(), "usable_cpus": usable_cpus(), "images": len(paths),
                                 "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    report["iqa_run"] = iqa_run(onnx_path, folder, out / "scores.csv", args.threads, [])
    report["ray"] = iqa_run(onnx_path, folder, out / "scores.csv", 1, ["--ray"])
    with RayScorer(onnx_path) as scorer:
        list(scorer.score_batches(paths[:8]))  # start the actors once
        start = time.perf_counter()
        rows = sum(len(batch) for batch in scorer.score_batches(paths))
        seconds = time.perf_counter() - start
    report["ray_warm"] = {"images": rows, "seconds": round(seconds, 2), "img_per_s": round(rows / seconds, 2)}
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    (out / "ray_throughput.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
