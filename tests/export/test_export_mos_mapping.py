"""The MOS mapping travels inside the exported graph: ONNX (FP32, FP16) scores equal torch's mapped scores."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qualitynet.artifact import MosMapping
from qualitynet.export import convert_fp16, export_onnx, load_photos
from qualitynet.runtime.ort_runner import OrtRunner
from qualitynet.trainer.checkpoint import load_checkpoint, save_checkpoint
from qualitynet.trainer.mos_mapping import apply_mos_mapping


@pytest.mark.parametrize("kind", ["logistic4", "linear"])
def test_onnx_applies_the_checkpoint_mapping_as_torch_does(kind: str, varied_checkpoint: Path, photo_dir: Path,
                                                          tmp_path: Path) -> None:
    checkpoint = load_checkpoint(varied_checkpoint)
    inputs, _ = load_photos(photo_dir, checkpoint.preprocess)
    with torch.no_grad():
        raw = checkpoint.score_scale.to_mos(checkpoint.build_model()(torch.from_numpy(inputs)).numpy().ravel())
    centre, spread = float(np.median(raw)), float(np.std(raw))
    params = (4.7, 1.4, centre, spread) if kind == "logistic4" else (2.0 / spread, 3.0 - 2.0 * centre / spread)
    mapped = replace(checkpoint, mos_mapping=MosMapping(kind, params, "val"))
    path = tmp_path / "model.pt"
    save_checkpoint(path, mapped)
    onnx_path = export_onnx(path)
    expected = apply_mos_mapping(mapped.mos_mapping, mapped.score_scale, raw)
    assert np.ptp(expected) > 0.5  # the mapping really moves the scores

    with torch.no_grad():
        via_torch = mapped.score_scale.to_mos(load_checkpoint(path).build_model()(torch.from_numpy(inputs)).numpy())
    with OrtRunner(onnx_path) as runner:
        assert runner.meta.mos_mapping == mapped.mos_mapping
        via_onnx = mapped.score_scale.to_mos(runner.infer(inputs))
    with OrtRunner(convert_fp16(onnx_path)) as runner:
        via_fp16 = mapped.score_scale.to_mos(runner.infer(inputs))
    assert via_torch.ravel() == pytest.approx(expected, abs=1e-4)
    assert via_onnx.ravel() == pytest.approx(expected, abs=1e-4)
    assert via_fp16.ravel() == pytest.approx(expected, abs=0.05)
