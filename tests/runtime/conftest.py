"""Fixtures of the runtime tests: ONNX exports of the shared untrained ``tiny`` checkpoint
(BatchNorm calibrated on real photos, so its scores differ from photo to photo), and its
PyTorch eager reference scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from runtime_helpers import photo_paths, torch_unit_scores


@pytest.fixture(scope="session")
def onnx_models(tiny_checkpoint: Path) -> tuple[Path, Path]:
    """``(model.onnx, model.fp16.onnx)`` exported by the export stage's API."""
    from qualitynet.export import convert_fp16, export_onnx

    fp32 = export_onnx(tiny_checkpoint)
    return fp32, convert_fp16(fp32)


@pytest.fixture(scope="session")
def torch_reference(tiny_checkpoint: Path, photo_dir: Path) -> tuple[np.ndarray, float]:
    """PyTorch eager unit scores of the photos, and the change one FP16 rounding of the input makes."""
    paths = photo_paths(photo_dir)
    reference = torch_unit_scores(tiny_checkpoint, paths)
    floor = np.abs(torch_unit_scores(tiny_checkpoint, paths, fp16_input=True) - reference).max()
    return reference, float(floor)


@pytest.fixture(params=["tiny", "deepfeat", "mlms"])
def scored_onnx(request: pytest.FixtureRequest, onnx_models: tuple[Path, Path]) -> Path:
    """An FP32 ONNX model of each family the chain must serve unchanged: the untrained ``tiny`` QualityNet, the
    fitted deep-features + Gaussian-process model (its flips and kernel in the graph), and the trained
    multi-level, multi-scale Swin model."""
    return onnx_models[0] if request.param == "tiny" else Path(request.getfixturevalue(f"{request.param}_onnx"))
