"""End-to-end throughput of ``iqa-run`` (ONNX Runtime, CPU) against a naive PyTorch loop, decode-only
rates, and the effect of fast (JPEG draft) decoding on scores.

``iqa-bench runtime --out-dir runs/bench-runtime`` (needs the dev extras; the runtime itself does
not use torch). Figures, printed as one JSON object (and written to ``<out-dir>/runtime_throughput.json``):

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

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import PIL
import torch

from qualitynet.agreement import agreement
from qualitynet.bench.fixtures import photo_folder, untrained_checkpoint
from qualitynet.bench.naive import naive_loop
from qualitynet.bench.record import measurement, time_iqa_run
from qualitynet.bench.run import ensure_artifacts, warm_page_cache
from qualitynet.runtime import Scorer, pipeline
from qualitynet.trainer.checkpoint import load_checkpoint

__all__ = ["iqa_run", "measure_runtime"]


def iqa_run(model: Path, folder: Path, out: Path, threads: int, extra: list[str]) -> dict[str, object]:
    """Wall-clock img/s of the ``iqa-run`` process (start-up and model load included)."""
    command = [str(Path(sys.executable).parent / "iqa-run"), str(model), str(folder), "-o", str(out),
               "--threads", str(threads), *extra]
    return {"command": " ".join(command[1:]), **time_iqa_run(command, out)}


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


def measure_runtime(out: Path, count: int, threads: int, checkpoint: Path | None = None) -> None:
    """Measure everything the module docstring lists; photos and the model are made under ``out`` once.

    Args:
        out: working folder; the report is ``out/runtime_throughput.json``.
        count: 1024x768 JPEGs (and a quarter as many, at least 50, of 2048x1536).
        threads: intra-op threads of torch and ONNX Runtime.
        checkpoint: a trained model.pt (default: the random-weight ``small`` config).
    """
    paths = photo_folder(out / "photos_1024x768", count)
    big = photo_folder(out / "photos_2048x1536", max(50, count // 4), (2048, 1536))
    checkpoint = checkpoint or untrained_checkpoint(out / "small" / "model.pt", "small")
    onnx_path = ensure_artifacts(checkpoint)[0]["fp32"]  # exported again when missing or stale
    cfg = load_checkpoint(checkpoint).preprocess
    torch.set_num_threads(threads)
    with measurement(out / "runtime_throughput.json", threads) as report:
        report.update({"versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                                    "pillow": PIL.__version__},
                       "checkpoint": str(checkpoint), "input": f"{cfg.height}x{cfg.width}", "threads": threads,
                       "decode_workers_default": pipeline.default_workers()})
        warm_page_cache(paths)  # neither contender pays for the first disk read
        report["naive_img_per_s"] = round(naive_loop(str(checkpoint), paths).timing.throughput_img_s, 2)
        folder = Path(paths[0]).parent
        for mode in ("exact", "fast"):
            run = iqa_run(onnx_path, folder, out / "scores.csv", threads, [f"--{mode}-decode"])
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
