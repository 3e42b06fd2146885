"""iqa-bench's INT8 rows: measured when ``iqa-export --int8`` wrote model.int8.onnx, skipped with a reason if not."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from qualitynet.bench.run import BenchSettings, run_bench
from qualitynet.bench.subjects import plan_subjects
from qualitynet.export import export_all
from qualitynet.export.int8 import Int8Settings
from qualitynet.trainer.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def int8_bench(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench-int8")
    checkpoint = Path(shutil.copy(tiny_checkpoint, folder / "model.pt"))
    # random weights: the gate's bound is one they meet; the figures are what the test reads
    export_all(checkpoint, folder, fp16=True, require_tensorrt=False,
               int8=Int8Settings(count=8, min_srocc=-1.0, remedy=False))
    return checkpoint


def test_int8_rows_with_speedup_and_agreement(int8_bench: Path) -> None:
    settings = BenchSettings(batch_sizes=(4,), warmup=1, iters=3, quiet=True, device="cpu")
    report = run_bench(int8_bench, settings)
    (row,) = [p for p in report.points if p.precision == "int8"]
    assert (row.backend, row.device, row.batch_size) == ("onnxruntime", "cpu", 4)
    assert row.throughput_img_s > 0 and row.speedup > 0 and math.isfinite(row.max_abs_error)
    assert -1 <= row.srocc <= 1
    reasons = {(s.backend, s.precision): s.reason for s in report.skipped}
    assert ("onnxruntime", "int8") not in reasons and ("tensorrt", "int8") in reasons
    (int8_bench.parent / "model.int8.onnx").unlink()
    _, skipped = plan_subjects(load_checkpoint(int8_bench), {"fp32": int8_bench.with_suffix(".onnx")}, None, "cpu", 1,
                               np.zeros((1, 3, 96, 96), np.float32))
    assert "iqa-export --int8" in {(s.backend, s.precision): s.reason for s in skipped}[("onnxruntime", "int8")]
