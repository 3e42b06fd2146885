"""``iqa-export``: exit codes and the one-line messages for what a user gets wrong or lacks."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import qualitynet.export.exporter as exporter
from qualitynet.export.cli import main

from fake_tensorrt import FakeTensorRT


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_without_tensorrt_the_onnx_files_are_written_and_the_exit_says_what_to_install(
        varied_checkpoint: Path, photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` fails, as where it is not installed
    code, output = run("--fp16", "--out-dir", str(tmp_path), "--photos", str(photo_dir), str(varied_checkpoint))
    assert code == 1
    error = output.strip().splitlines()[-1]
    assert error.startswith("Error: no TensorRT engine built: TensorRT is not installed")
    assert "pip install tensorrt-cu12" in error and "tensorrt==8.6.1" in error and "P5000" in error
    assert f"iqa-run {tmp_path / 'model.fp16.onnx'} photos/" in error
    assert "Traceback" not in output
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "model.fp16.onnx").is_file()
    assert not (tmp_path / "model.plan").exists()
    report = json.loads((tmp_path / "model.export.json").read_text())
    assert report["passed"] and set(report["verifications"]) == {"onnx", "fp16_onnx"}
    assert report["tensorrt_skipped"].startswith("TensorRT is not installed")


def test_fp32_export_exits_0_with_a_summary(varied_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    code, output = run("--out-dir", str(tmp_path), "--photos", str(photo_dir), str(varied_checkpoint))
    assert code == 0, output
    assert "model.onnx: built in" in output and "vs torch on 8 photos" in output and ": ok" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.export.json", "model.onnx"]


def test_failed_verification_exits_1_and_keeps_the_files(
        varied_checkpoint: Path, photo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = exporter.torch_scorer
    monkeypatch.setattr(exporter, "torch_scorer", lambda model: real(model.train()))  # BatchNorm in train mode
    torch.manual_seed(0)
    code, output = run("--out-dir", str(tmp_path), "--photos", str(photo_dir), str(varied_checkpoint))
    assert code == 1
    assert output.strip().splitlines()[-1].startswith(f"Error: {tmp_path / 'model.onnx'}: verification failed")
    assert (tmp_path / "model.onnx").is_file()
    assert json.loads((tmp_path / "model.export.json").read_text())["passed"] is False


@pytest.mark.parametrize(("content", "expected"), [
    (None, "checkpoint not found"),
    ("truncated", "corrupt or truncated"),
    ({"weights": torch.zeros(2)}, "not a QualityNet checkpoint"),
])
def test_bad_checkpoint_is_one_line(content: object, expected: str, varied_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    if content == "truncated":
        data = varied_checkpoint.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content is not None:
        torch.save(content, path)
    code, output = run(str(path))
    assert code == 1
    assert output.count("\n") == 1 and expected in output and "Traceback" not in output


def test_unwritable_out_dir_is_one_line(varied_checkpoint: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, output = run("--out-dir", str(blocker / "sub"), str(varied_checkpoint))
    assert code == 1
    assert output.count("\n") == 1 and "output folder is not writable" in output


def test_opset_checks(varied_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, output = run("--opset", "21", str(varied_checkpoint))
    assert code == 1 and "opset 21 is not supported" in output
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT("8.6.1").module)
    code, output = run("--fp16", "--opset", "18", str(varied_checkpoint))
    assert code == 1 and output.count("\n") == 1
    assert "opset 18 cannot be parsed by the installed TensorRT 8.6.1" in output and "--opset 17" in output


def test_bad_batch_profile_is_a_usage_error(varied_checkpoint: Path) -> None:
    code, output = run("--batch", "16:1:64", str(varied_checkpoint))
    assert code == 2 and "1 <= MIN <= OPT <= MAX" in output


def test_photos_folder_without_photos_is_one_line(varied_checkpoint: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    checkpoint = shutil.copy(varied_checkpoint, tmp_path / "model.pt")
    code, output = run("--photos", str(empty), str(checkpoint))
    assert code == 1 and "needs at least 2 photos" in output


@pytest.mark.parametrize(("args", "message"), [
    (["--fp16", "--exclude-lean-runtime"], "--exclude-lean-runtime applies only with --version-compatible"),
    (["--version-compatible"], "--version-compatible applies to the TensorRT plan, which only --fp16 builds"),
])
def test_version_compatibility_options_are_usage_errors_where_they_do_not_apply(
        varied_checkpoint: Path, args: list[str], message: str) -> None:
    code, output = run(*args, str(varied_checkpoint))
    assert code == 2 and message in output
