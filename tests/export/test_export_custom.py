"""A user's own network through iqa-export (ONNX, FP16, INT8 with their gates), iqa-run and iqa-bench."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import custom_iqa
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from qualitynet.artifact import PreprocessCfg, ScoreScale
from qualitynet.bench.run import BenchSettings, run_bench
from qualitynet.export import export_all, load_photos
from qualitynet.export.cli import main as export_main
from qualitynet.runtime.cli import main as run_main
from qualitynet.trainer import save_custom_checkpoint
from qualitynet.trainer.checkpoint import load_checkpoint

KONIQ = ScoreScale(1.0, 5.0, "MOS 1-5")


@pytest.fixture(scope="module")
def custom_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's example network, untrained, saved as a checkpoint with a 64 px preprocessing record."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("custom") / "model.pt"
    return save_custom_checkpoint(path, custom_iqa.tiny_iqa(), "tiny_iqa", PreprocessCfg(height=64, width=64), KONIQ)


@pytest.fixture(scope="module")
def int8_cli(custom_checkpoint: Path, photo_dir: Path) -> Result:
    """``iqa-export --int8`` of the custom checkpoint, in its folder.

    Untrained weights spread the 8 photos' scores over a few hundredths of a MOS point, so
    INT8 rounding swaps near ties (SROCC 0.85 measured): the bound given is one this model meets."""
    args = [str(custom_checkpoint), "--int8", "--calib-count", "8", "--photos", str(photo_dir), "--gate-photos",
            str(photo_dir), "--min-srocc", "0.8", "--max-abs-error", "0.05"]
    return CliRunner().invoke(export_main, args)


def test_export_cli_with_int8_passes_the_gates(int8_cli: Result, custom_checkpoint: Path) -> None:
    assert int8_cli.exit_code == 0, int8_cli.output
    folder = custom_checkpoint.parent
    assert "model.onnx: built" in int8_cli.output and "FAILED" not in int8_cli.output
    for name in ("model.onnx", "model.int8.onnx", "model.int8.trt.onnx"):
        assert (folder / name).is_file()
    report = json.loads((folder / "model.export.json").read_text())
    assert report["int8"]["cpu"]["passed"] and report["int8"]["tensorrt"]["passed"]


def test_export_agrees_with_torch(custom_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    result = export_all(custom_checkpoint, tmp_path, fp16=True, photos=photo_dir, require_tensorrt=False)
    fp32, fp16 = result.verifications["onnx"], result.verifications["fp16_onnx"]
    assert fp32 and fp32.worst.max_abs < 1e-5 and fp32.worst.srocc > 0.999
    assert fp16 and fp16.worst.srocc >= 0.95
    assert result.config_name == "tiny_iqa"


def test_iqa_run_scores_on_the_mos_scale_as_torch_does(custom_checkpoint: Path, photo_dir: Path,
                                                      tmp_path: Path) -> None:
    onnx_path = export_all(custom_checkpoint, tmp_path, photos=photo_dir).onnx
    result = CliRunner().invoke(run_main, [str(onnx_path), str(photo_dir), "--format", "csv", "--quiet"])
    assert result.exit_code == 0, result.output
    rows = {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(io.StringIO(result.stdout))}
    checkpoint = load_checkpoint(custom_checkpoint)
    inputs, names = load_photos(photo_dir, checkpoint.preprocess)
    with torch.no_grad():
        expected = KONIQ.to_mos(checkpoint.build_model()(torch.from_numpy(inputs))[:, 0].numpy())
    got = np.array([rows[Path(n).name] for n in names])
    assert len(rows) == 8 and np.allclose(got, expected, atol=1e-4)


def test_bench_measures_the_custom_model(int8_cli: Result, custom_checkpoint: Path, photo_dir: Path) -> None:
    settings = BenchSettings(batch_sizes=(2,), warmup=1, iters=2, images=photo_dir, e2e_batch_size=4,
                             e2e_workers=1, quiet=True, device="cpu", e2e_rounds=1)
    report = run_bench(custom_checkpoint, settings)
    model_only = {(p.backend, p.precision): p for p in report.points if p.mode == "model-only"}
    assert int8_cli.exit_code == 0
    assert set(model_only) == {("torch-eager", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "fp16"),
                               ("onnxruntime", "int8")}  # the INT8 model iqa-export wrote beside it
    assert all(p.throughput_img_s > 0 for p in report.points)
    assert model_only["onnxruntime", "fp32"].max_abs_error < 1e-3 and model_only["onnxruntime", "fp32"].srocc > 0.99
    assert any(p.mode != "model-only" for p in report.points)  # end to end, decode included


def test_export_cli_refuses_a_checkpoint_whose_factory_is_gone_in_one_line(custom_checkpoint: Path,
                                                                            tmp_path: Path) -> None:
    payload = torch.load(custom_checkpoint, weights_only=True)
    payload["model_config"]["factory"] = "my_lab.models:gone_iqa"
    torch.save(payload, tmp_path / "model.pt")
    result = CliRunner().invoke(export_main, [str(tmp_path / "model.pt")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: {tmp_path / 'model.pt'}: model factory 'my_lab.models:gone_iqa' cannot be imported "
        "(ModuleNotFoundError: No module named 'my_lab'); install the package that defines it or put its folder on "
        "PYTHONPATH"]
    assert not (tmp_path / "model.onnx").exists()
