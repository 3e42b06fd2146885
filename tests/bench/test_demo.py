"""The whole chain at its smallest: train -> export -> score -> bench, checking each hand-off."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from qualitynet.bench.demo import format_summary, run_demo
from qualitynet.bench.naive import naive_loop
from qualitynet.runtime.scorer import Scorer
from qualitynet.trainer.checkpoint import load_checkpoint


@pytest.mark.slow
def test_demo_chain_hand_offs(tmp_path: Path) -> None:
    # a lite config with the demo's recipe (pretrained EfficientNet-Lite, frozen, crops view; the demo's own
    # default is lite02, whose Lite2 stream costs more), on five photos and one crop
    result = run_demo(tmp_path, config="lite", epochs=20, bench_iters=2, quiet=True,
                      sources=("astronaut", "chelsea", "coffee", "rocket", "camera"), scales=(2.0,),
                      overrides={"short_side": 224, "crops": ("center", "top-left", "bottom-right")})
    checkpoint = load_checkpoint(result.train.out_dir / "model.pt")
    # the data is at the view's scale and the record carries the view every front end scores with
    cfg = checkpoint.preprocess
    assert (cfg.view, cfg.crops, cfg.short_side, cfg.decode) == ("crops", ("center", "top-left", "bottom-right"), 224,
                                                                 "dct")
    assert f"view           {cfg.describe()}" in format_summary(result)

    # the checkpoint loaded in export, and every export check passed on real photos
    assert result.export.passed and result.export.config_name == "lite"
    assert result.export.checkpoint == result.train.out_dir / "model.pt"

    # the ONNX metadata (not the trainer) drives the runtime's preprocessing, score scale and mapping
    with Scorer(result.export.onnx, workers=0) as scorer:
        assert scorer.meta.preprocess == checkpoint.preprocess
        assert scorer.meta.preprocess.mean == pytest.approx((127 / 255,) * 3)  # (x - 127) / 128
        assert scorer.meta.score_scale == checkpoint.score_scale
        assert scorer.meta.mos_mapping == checkpoint.mos_mapping

    # the runtime's scores agree with PyTorch eager on the same files
    with open(result.scores_csv, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == result.heldout_images > 0 and all(row["error"] == "" for row in rows)
    eager = naive_loop(str(result.train.out_dir / "model.pt"), [row["path"] for row in rows])
    worst = max(abs(float(row["score"]) - eager.scores[row["path"]]) for row in rows)
    assert worst < 1e-3  # MOS scale 1-5; the FP32 export tolerance is 5e-5 of the range

    # the bench JSON is complete
    bench = json.loads((tmp_path / "bench.json").read_text())
    modes = {(p["mode"], p["backend"], p["precision"]) for p in bench["points"]}
    assert ("model-only", "torch-eager", "fp32") in modes and ("end-to-end", "onnxruntime", "fp16") in modes
    assert bench["machine"]["cpu_model"] and bench["skipped"]
    summary = format_summary(result)
    # INT8 is gated on held-out photos and benchmarked only when its gate passed
    int8_passed = not result.int8_failure
    assert bool(result.export.int8) == int8_passed and all(result.export.int8.values())
    assert (("model-only", "onnxruntime", "int8") in modes) == int8_passed
    assert (("end-to-end", "onnxruntime", "int8") in modes) == int8_passed
    assert "INT8 gate" in summary
    assert "held-out       SROCC" in summary and "% of scores inside the MOS range" in summary
    assert 0.0 <= result.heldout_in_range <= 1.0
    # every held-out reference image is ranked within itself (its pristine and distorted versions)
    assert "within image   SROCC" in summary and -1 <= result.heldout_within_srocc <= 1
    assert result.heldout_references == len({path.name.rsplit("_", 2)[0] for path in (tmp_path / "heldout").iterdir()})
