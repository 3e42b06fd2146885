"""Fixtures of the export tests: the tiny checkpoint alone in a folder, exported once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qualitynet.export import ExportResult, export_all


@pytest.fixture(scope="session")
def varied_checkpoint(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the ``tiny`` checkpoint (BatchNorm calibrated, so scores vary by photo) alone in its folder."""
    path = tmp_path_factory.mktemp("varied") / "model.pt"
    shutil.copy(tiny_checkpoint, path)
    return path


@pytest.fixture(scope="session")
def tiny_export(varied_checkpoint: Path, photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """``export_all(fp16=True)`` of the varied tiny checkpoint, verified on ``photo_dir``.

    Where TensorRT and a GPU are absent the engine is skipped (``require_tensorrt=False``).
    """
    out = tmp_path_factory.mktemp("tiny-export")
    return export_all(varied_checkpoint, out, fp16=True, photos=photo_dir, require_tensorrt=False)
