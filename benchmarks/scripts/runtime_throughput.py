"""End-to-end throughput of ``iqa-run`` (ONNX Runtime, CPU) against a naive PyTorch loop, decode-only
rates, and the effect of fast (JPEG draft) decoding on scores.

Run from the repository root (needs the dev extras; the runtime itself does not use torch):

    python benchmarks/scripts/runtime_throughput.py --out-dir runs/bench-runtime

Figures, printed as one JSON object (and written to ``<out-dir>/runtime_throughput.json``):

- ``iqa_run``: wall time of the ``iqa-run`` process on the folder (start-up and model load
  included) and its img/s; ``naive``: the same folder scored one image at a time with Pillow,
  the shared preprocessing and PyTorch eager (model load excluded); ``ratio`` = iqa-run / naive.
- ``decode``: images/s of the decode pipeline alone (decode + preprocess, no model), exact and
  fast, with the default worker count and in one process.
- ``fast_decode``: SROCC and max/mean score shift (MOS units, and as a fraction of the scores'
  standard deviation) of fast against exact decoding, per photo size.

The model is the ``small`` config with random weights, BatchNorm calibrated on real photos so
that scores spread (``save_untrained_checkpoint``); throughput does not depend on weights,
but the fast-decode figures do: pass ``--checkpoint`` to measure them with a trained model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import PIL
import torch
from script_fixtures import REPO, photos

from qualitynet.agreement import agreement
from qualitynet.bench.naive import naive_loop
from qualitynet.bench.run import ensure_artifacts, warm_page_cache
from qualitynet.cpus import usable_cpus
from qualitynet.runtime import Scorer
from qualitynet.runtime import decode_pool as pipeline
from qualitynet.trainer.checkpoint import load_checkpoint, save_untrained_checkpoint


def iqa_run(model: Path, folder: Path, out: Path, threads: int, extra: list[str]) -> dict[str, object]:
    """Wall-clock img/s of the ``iqa-run`` process (start-up and model load included)."""
    out.unlink(missing_ok=True)
    command = [str(Path(sys.executable).parent / "iqa-run"), str(model), str(folder), "-o", str(out),
               "--threads", str(threads), *extra]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    rows = out.read_text().count("\n") - 1
    summary = [line for line in result.stderr.splitlines() if line.startswith("scored")]
    return {"command": " ".join(command[1:]), "images": rows, "seconds": round(seconds, 2),
            "img_per_s": round(rows / seconds, 2), "summary": summary[-1] if summary else ""}


def decode_rate(paths: list[str], cfg: object, workers: int, fast: bool, batch_size: int = 32) -> float:
    """img/s of decode + preprocess alone, through the pipeline as iqa-run sets it up."""
    prefetch = 2 * batch_size + 2 * workers  # as Scorer does
    with pipeline.DecodePool(cfg, workers, fast, prefetch) as pool:  # type: ignore[arg-type]
        pool.start()
        start = time.perf_counter()
        count = sum(1 for item in pool.imap(paths) if item[1] is not None)
    return round(count / (time.perf_counter() - start), 1)


def fast_decode_effect(model: Path, paths: list[str]) -> dict[str, float]:
    """Scores with fast vs exact decoding on the same photos."""
    scores = {}
    for fast in (False, True):
        with Scorer(model, workers=pipeline.default_workers(), fast_decode=fast, provider="cpu") as scorer:
            scores[fast] = np.array([r.score for r in scorer.score_paths(paths)], dtype=np.float64)
    agreed = agreement(scores[False], scores[True])
    shift = agreed.abs_error
    return {"photos": len(paths), "srocc": round(agreed.srocc, 5),
            "max_shift": float(f"{shift.max():.3g}"), "mean_shift": float(f"{shift.mean():.3g}"),
            "score_std": float(f"{scores[False].std():.3g}"),
            "max_shift_over_std": round(float(shift.max() / scores[False].std()), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "bench-runtime")
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--threads", type=int, default=usable_cpus(),
                        help="intra-op threads of torch and ONNX Runtime (default: the CPUs this process may use)")
    parser.add_argument("--checkpoint", type=Path, help="a trained model.pt (default: random-weight 'small')")
    args = parser.parse_args()
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    paths = photos(out / "photos_1024x768", args.count, (1024, 768))
    big = photos(out / "photos_2048x1536", max(50, args.count // 4), (2048, 1536))
    checkpoint = args.checkpoint or out / "small" / "model.pt"
    if not checkpoint.exists():
        checkpoint.parent.mkdir(exist_ok=True)
        save_untrained_checkpoint(checkpoint, "small")
    onnx_path = ensure_artifacts(checkpoint)[0]["fp32"]  # exported again when missing or stale
    cfg = load_checkpoint(checkpoint).preprocess
    torch.set_num_threads(args.threads)

    report: dict[str, object] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "usable_cpus": usable_cpus(),
                    "python": platform.python_version()},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "pillow": PIL.__version__},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "checkpoint": str(checkpoint), "input": f"{cfg.height}x{cfg.width}", "threads": args.threads,
        "decode_workers_default": pipeline.default_workers(),
    }
    warm_page_cache(paths)  # neither contender pays for the first disk read
    report["naive_img_per_s"] = round(naive_loop(str(checkpoint), paths).timing.throughput_img_s, 2)
    folder = Path(paths[0]).parent
    for mode in ("exact", "fast"):
        run = iqa_run(onnx_path, folder, out / "scores.csv", args.threads, [f"--{mode}-decode"])
        report[f"iqa_run_{mode}"] = run
        report[f"ratio_{mode}"] = round(float(run["img_per_s"]) / float(report["naive_img_per_s"]), 2)  # type: ignore[arg-type]
    report["decode"] = {
        f"{name}_{'fast' if fast else 'exact'}_workers{workers}": decode_rate(files, cfg, workers, fast)
        for name, files in (("1024x768", paths), ("2048x1536", big))
        for workers in (0, pipeline.default_workers()) for fast in (False, True)
    }
    report["fast_decode"] = {"decode_side": cfg.natural_decode_side(),
                             "1024x768": fast_decode_effect(onnx_path, paths),
                             "2048x1536": fast_decode_effect(onnx_path, big)}
    report["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    text = json.dumps(report, indent=2)
    (out / "runtime_throughput.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
