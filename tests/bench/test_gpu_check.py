"""The GPU check (benchmarks/scripts/gpu_check.sh, iqa-bench gpu-check): a clear report without CUDA, and a CPU
rehearsal of its code paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from deepfeat_test_config import DEEPFEAT_TEST
from mlms_test_config import MLMS_TEST

from qualitynet.bench import gpu_check
from qualitynet.bench.cli import main
from qualitynet.trainer.checkpoint import load_checkpoint

from trt_stubs import REPO

SCRIPT = REPO / "benchmarks" / "scripts" / "gpu_check.sh"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the report of a machine without CUDA")
def test_without_cuda_it_says_so_and_exits_0(tmp_path: Path) -> None:
    result = _run("--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "no CUDA device" in result.stdout and "nothing measured" in result.stdout
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_part_or_says_why_not(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # in-process (the script's own start-up is the test above); the shared tiny weights, so not made again
    (tmp_path / "work" / "tiny").mkdir(parents=True)
    shutil.copyfile(tiny_checkpoint, tmp_path / "work" / "tiny" / "model.pt")
    result = CliRunner().invoke(main, ["gpu-check", "--device", "cpu", "--quick", "--out", str(tmp_path),
                                       "--work", str(tmp_path / "work")])
    assert result.exit_code == 0, result.output[-3000:]
    data = json.loads((tmp_path / "gpu-cpu-quick.json").read_text())
    points = data["configs"]["tiny"]["report"]["points"]
    assert {(p["backend"], p["precision"]) for p in points} >= {("torch-eager", "fp32"), ("onnxruntime", "fp16")}
    assert all(p["throughput_img_s"] > 0 and p["latency_p50_ms"] > 0 for p in points)
    skipped = {(s["backend"], s["reason"]) for s in data["configs"]["tiny"]["report"]["skipped"]}
    assert ("torch-cudagraph", "no CUDA device") in skipped and ("torch-compile", "no CUDA device") in skipped
    assert len(data["tensorrt"]) == 5
    assert all(check["status"] == "skipped" and check["detail"] for check in data["tensorrt"])
    assert any("CPU build" in note for note in data["notes"])
    markdown = (tmp_path / "gpu-cpu-quick.md").read_text()
    assert "| model-only | onnxruntime | fp16 | cpu | 4 |" in markdown and "## TensorRT" in markdown


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_gpu_run_measures_the_torch_variants(tmp_path: Path) -> None:
    result = _run("--quick", "--out", str(tmp_path), "--work", str(tmp_path / "work"))
    assert result.returncode == 0, result.stderr[-3000:]
    (json_path,) = tmp_path.glob("gpu-*-quick.json")
    report = json.loads(json_path.read_text())["configs"]["tiny"]["report"]
    torch_points = [p for p in report["points"] if p["backend"].startswith("torch")]
    assert {p["backend"] for p in torch_points} >= {"torch-eager", "torch-cudagraph"}
    assert all(p["device_p50_ms"] and p["device_p50_ms"] <= p["latency_p50_ms"] for p in torch_points)


@pytest.mark.slow
def test_deep_features_config_is_fitted_for_the_check(tmp_path: Path) -> None:
    """A Gaussian process has no untrained state: the check fits one on generated demo images."""
    assert "deepfeat-lite" in gpu_check.GPU_CONFIGS
    checkpoint = load_checkpoint(gpu_check._checkpoint(tmp_path, DEEPFEAT_TEST.name))
    assert checkpoint.spec.factory == "qualitynet.trainer.deepfeat:deepfeat_gpr"
    assert checkpoint.spec.kwargs["train_points"] >= 50 and checkpoint.mos_mapping.fitted_on == "val"


def test_multi_level_multi_scale_config_is_a_subject(tmp_path: Path) -> None:
    """Measured untrained, as the QualityNet configs are (speed does not depend on the weights)."""
    assert "mlms-lite" in gpu_check.GPU_CONFIGS
    checkpoint = load_checkpoint(gpu_check._checkpoint(tmp_path, MLMS_TEST.name))
    assert checkpoint.spec.factory == "qualitynet.trainer.mlms:mlms_from_config"
    with torch.no_grad():
        scores = checkpoint.build_model()(torch.rand(3, 3, 96, 96))
    assert scores.shape == (3, 1) and float(scores.std()) > 0
