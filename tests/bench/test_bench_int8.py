"""iqa-bench's INT8 rows: measured when ``iqa-export --int8`` wrote model.int8.onnx, skipped with a reason if not."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from qualitynet.artifact import file_sha256
from qualitynet.bench.run import BenchSettings, run_bench
from qualitynet.bench.subjects import plan_subjects
from qualitynet.export import export_all
from qualitynet.export.int8 import Int8Settings
from qualitynet.export.onnx import read_meta, save_with_meta
from qualitynet.trainer.checkpoint import load_checkpoint


@pytest.fixture(scope="module")
def int8_bench(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bench-int8")
    checkpoint = Path(shutil.copy(tiny_checkpoint, folder / "model.pt"))
    # random weights: the gate's bound is one they meet; the figures are what the test reads
    export_all(checkpoint, folder, fp16=True, require_tensorrt=False,
               int8=Int8Settings(count=8, min_srocc=-1.0, max_abs_mos=1e6, mean_abs_mos=1e6,
                                             remedy=False))
    return checkpoint


def test_int8_files_of_another_checkpoint_or_a_failed_gate_are_skipped(int8_bench: Path, tmp_path: Path) -> None:
    checkpoint, fp32 = load_checkpoint(int8_bench), int8_bench.with_suffix(".onnx")
    probe = np.zeros((1, 3, 96, 96), np.float32)
    _, skipped = plan_subjects(checkpoint, {"fp32": fp32}, None, "cpu", 1, probe, checkpoint_sha256="0" * 64)
    assert "another checkpoint" in {(s.backend, s.precision): s.reason for s in skipped}[("onnxruntime", "int8")]
    # the same export, its record saying what a failed gate writes
    folder = tmp_path / "failed"
    folder.mkdir()
    for name in ("model.onnx", "model.int8.onnx"):
        shutil.copy(int8_bench.parent / name, folder / name)
    model = onnx.load(str(folder / "model.int8.onnx"))
    meta = read_meta(model)
    meta.extra["int8"]["gate"]["passed"] = False
    save_with_meta(model, meta, folder / "model.int8.onnx")
    _, skipped = plan_subjects(checkpoint, {"fp32": folder / "model.onnx"}, None, "cpu", 1, probe,
                               checkpoint_sha256=file_sha256(int8_bench))
    assert "did not pass its INT8 accuracy gate" in {(s.backend, s.precision): s.reason
                                                     for s in skipped}[("onnxruntime", "int8")]


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
