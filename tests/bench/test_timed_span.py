"""Benchmark methodology: every backend timed over the same span, and no stale artifact reused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from qualitynet.artifact import file_sha256
from qualitynet.bench.run import ensure_artifacts
from qualitynet.bench.subjects import TORCH_VARIANTS, plan_subjects
from qualitynet.errors import QualityNetError
from qualitynet.export import load_photos
from qualitynet.export.freshness import recorded_checkpoint_sha256
from qualitynet.trainer.checkpoint import load_checkpoint, save_untrained_checkpoint

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("span")
    shutil.copyfile(tiny_checkpoint, folder / "model.pt")
    ensure_artifacts(folder / "model.pt")
    return folder / "model.pt"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, CUDA])])
def test_every_backend_is_timed_from_the_host_batch_to_host_scores(exported: Path, device: str) -> None:
    checkpoint = load_checkpoint(exported)
    inputs, _ = load_photos(None, checkpoint.preprocess)
    onnx_paths, plan = ensure_artifacts(exported)
    variants = tuple(TORCH_VARIANTS) if device == "cuda" else ()
    specs, _ = plan_subjects(checkpoint, onnx_paths, plan, device, 1, inputs[:1], variants)
    assert {s.backend for s in specs} >= {"torch-eager", "onnxruntime"}
    unavailable = []
    for spec in specs:
        try:
            subject = spec.open()
        except Exception as exc:
            if not spec.optional:
                raise
            unavailable.append(f"{spec.backend}: {exc}")  # e.g. no C compiler for torch.compile
            continue
        try:
            host = inputs[:4].copy()
            step = subject.make_step(host)
            scores, device_ms = step()
            # Host scores out, for every backend (torch on CUDA included) ...
            assert isinstance(scores, np.ndarray) and scores.shape == (4,), spec.backend
            np.testing.assert_allclose(scores, subject.infer(inputs[:4]), rtol=0, atol=1e-5)
            # ... from the host array in: the step reads it again on every call.
            host[:] = inputs[4:8]
            again, _ = step()
            np.testing.assert_allclose(again, subject.infer(inputs[4:8]), rtol=0, atol=1e-5)
            assert not np.allclose(again, scores), spec.backend
            if spec.backend.startswith("torch") and device == "cuda":
                assert device_ms is not None and device_ms > 0  # the second, device-only figure
                assert torch.backends.cudnn.benchmark
        finally:
            subject.close()
    if unavailable:
        pytest.skip(f"checked the others; could not open {unavailable}")


def test_stale_default_artifacts_are_exported_again(exported: Path, tmp_path: Path) -> None:
    folder = tmp_path / "retrained"
    shutil.copytree(exported.parent, folder)
    checkpoint = folder / "model.pt"
    old = recorded_checkpoint_sha256(folder / "model.onnx")
    save_untrained_checkpoint(checkpoint, "tiny", seed=1)  # "retraining" replaces the weights
    digest = file_sha256(checkpoint)
    assert old != digest
    paths, _ = ensure_artifacts(checkpoint)
    assert recorded_checkpoint_sha256(paths["fp32"]) == digest
    assert recorded_checkpoint_sha256(paths["fp16"]) == digest


def test_a_stale_artifact_given_explicitly_is_refused(exported: Path, tmp_path: Path) -> None:
    checkpoint = save_untrained_checkpoint(tmp_path / "other.pt", "tiny", seed=2)
    with pytest.raises(QualityNetError, match="exported from another checkpoint"):
        ensure_artifacts(checkpoint, onnx=exported.parent / "model.onnx")
