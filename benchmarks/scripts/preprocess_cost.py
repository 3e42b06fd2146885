"""Where one image's host time goes, stage by stage, for each decode of the record (issue 20.2).

For a 1024x768 and a grainy 4000x3000 JPEG (quality 90, generated offline) and each decode
(``full``, ``dct``), times the stages of :func:`qualitynet.runtime.preprocess.file_to_inputs`
one by one, in alternating rounds (every stage of every case once per round, so a busy
machine slows them alike). Whole-image view (the paper's): decode, resize to the input size,
and the float conversion, normalisation and NCHW transpose. Five crops at short side 768
(the lite recipe's view): decode to that side, the crops resampled straight from their boxes
(what the runtime does), the same crops cut from the whole image brought to short side 768
first (the naive way, for comparison), and the five crops' float conversion alone. Prints one JSON
document: the median ms of each stage, its range over the rounds (on a busy machine the
minimum is the better estimate of a stage's own cost), the DCT/full ratio of the median
per-image cost per case, the machine and the load average.

Example:
    .venv/bin/python benchmarks/scripts/preprocess_cost.py --rounds 7 > preprocess-cost.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from collections.abc import Callable

import numpy as np
from PIL import Image

from qualitynet.artifact import FIVE_CROPS, PreprocessCfg
from qualitynet.bench.machine import machine_info
from qualitynet.runtime.preprocess import (
    INTERPOLATIONS,
    crop_boxes,
    image_to_inputs,
    image_to_tensor,
    load_rgb,
    view_scaled,
)
from qualitynet.trainer.demo_dataset import demo_photo

CASES = {"1024x768": ((1024, 768), 0.0), "4000x3000 grain": ((4000, 3000), 6.0)}


def _jpeg(size: tuple[int, int], grain: float) -> bytes:
    image = demo_photo("astronaut", max_side=2048).resize(size, Image.Resampling.BICUBIC)
    if grain:
        pixels = np.asarray(image, np.float32) + np.random.default_rng(0).normal(0, grain, (size[1], size[0], 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _cut(image: Image.Image, boxes: list[tuple[int, int, int, int]]) -> list[Image.Image]:
    return [image.crop(box) for box in boxes]


def _stages(data: bytes, cfg: PreprocessCfg, crops: PreprocessCfg) -> dict[str, Callable[[], object]]:
    """The timed steps for one JPEG under ``cfg`` (whole image) and ``crops`` (five crops at a short side),
    each repeating one stage on the previous one's output."""
    decoded = load_rgb(io.BytesIO(data), cfg)
    resized = decoded.resize((cfg.width, cfg.height), INTERPOLATIONS[cfg.interpolation])
    at_scale = load_rgb(io.BytesIO(data), crops)
    boxes = crop_boxes(at_scale.size, crops)[1]
    pieces = [view_scaled(at_scale, crops).crop(box) for box in boxes]
    return {
        "decode": lambda: load_rgb(io.BytesIO(data), cfg),
        "resize": lambda: decoded.resize((cfg.width, cfg.height), INTERPOLATIONS[cfg.interpolation]),
        "to_float_normalise_transpose": lambda: image_to_tensor(resized, cfg),
        "crops768 decode": lambda: load_rgb(io.BytesIO(data), crops),
        "crops768 view from boxes": lambda: image_to_inputs(at_scale, crops),
        "crops768 scale whole then cut": lambda: _cut(view_scaled(at_scale, crops), boxes),
        "crops768 to_float_normalise_transpose": lambda: [image_to_tensor(piece, crops) for piece in pieces],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    base = PreprocessCfg()
    crops = base.with_view("crops", FIVE_CROPS, short_side=768)
    jpegs = {name: _jpeg(size, grain) for name, (size, grain) in CASES.items()}
    steps = {(name, decode): _stages(jpegs[name], base.with_decode(decode), crops.with_decode(decode))
             for name in CASES for decode in ("full", "dct")}
    times: dict[tuple[str, str, str], list[float]] = {}
    load_start = os.getloadavg()
    for _ in range(args.rounds):
        for (name, decode), stages in steps.items():
            for stage, step in stages.items():
                tick = time.perf_counter()
                step()
                times.setdefault((name, decode, stage), []).append((time.perf_counter() - tick) * 1000)
    report: dict[str, object] = {
        "machine": machine_info(1), "rounds": args.rounds, "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()], "ms": {}, "dct_speedup": {}}
    for (name, decode, stage), values in times.items():
        report["ms"][f"{name} {decode} {stage}"] = {  # type: ignore[index]
            "median": round(float(np.median(values)), 3), "min": round(min(values), 3), "max": round(max(values), 3)}
    for name in CASES:
        for view, summed in (("whole image", ("decode", "resize", "to_float_normalise_transpose")),
                             ("crops768", ("crops768 decode", "crops768 view from boxes"))):
            per_image = {decode: sum(float(np.median(times[(name, decode, s)])) for s in summed)
                         for decode in ("full", "dct")}
            report["dct_speedup"][f"{name} {view}"] = round(per_image["full"] / per_image["dct"], 2)  # type: ignore[index]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
