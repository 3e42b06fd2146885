"""The paper configuration (ResNet-50 + EfficientNet-B7) end to end: minutes on a CPU, so ``slow``."""

from __future__ import annotations

from pathlib import Path

import pytest

from qualitynet.export import export_all
from qualitynet.export.cli import summary
from qualitynet.trainer.checkpoint import save_untrained_checkpoint


@pytest.mark.slow
def test_paper_config_exports_and_verifies(photo_dir: Path, tmp_path: Path) -> None:
    path = save_untrained_checkpoint(tmp_path / "model.pt", "qualitynet")
    result = export_all(path, fp16=True, photos=photo_dir, require_tensorrt=False)
    print(summary(result))  # the figures, shown with pytest -s
    assert result.passed and set(result.verifications) >= {"onnx", "fp16_onnx"}
    assert result.verifications["onnx"].worst.srocc > 0.999
    assert result.files["fp16_onnx"].stat().st_size < 0.6 * result.onnx.stat().st_size
