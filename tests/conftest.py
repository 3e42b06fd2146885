"""Fixtures shared by every test package: real photos and small checkpoints.

Photos are scikit-image's bundled ones (see qualitynet.trainer.demo_data for licences);
models are randomly initialised, since no weights can be downloaded here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from qualitynet.trainer.checkpoint import Checkpoint, save_checkpoint
from qualitynet.trainer.demo_data import demo_photo, make_demo_dataset
from qualitynet.trainer.model import create_model
from qualitynet.artifact import PreprocessCfg, ScoreScale

# Tests take the device from the environment (default cpu); GPU tests skip without CUDA.
DEVICE = os.environ.get("QUALITYNET_TEST_DEVICE", "cpu")
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "coins", "retina")


def make_checkpoint(path: Path, config: str = "tiny", seed: int = 0) -> Path:
    """Save a randomly initialised model as a real iqa-train checkpoint (MOS scale 1-5).

    The BatchNorm running statistics are set by a few forward passes in train mode, so the
    model in eval mode produces scores that vary from image to image as a trained one does.
    """
    torch.manual_seed(seed)
    model = create_model(config)
    size = model.config.image_size
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, size, size))
    checkpoint = Checkpoint(
        model_config=model.config,
        state_dict=model.state_dict(),
        preprocess=PreprocessCfg(height=size, width=size),
        score_scale=ScoreScale(1.0, 5.0, "test MOS"),
        dataset="test",
    )
    save_checkpoint(path, checkpoint)
    return path


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight real photos (JPEG and PNG) in one folder."""
    folder = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(PHOTO_NAMES):
        image = demo_photo(name, max_side=320)
        image.save(folder / (f"{name}.jpg" if i % 2 == 0 else f"{name}.png"), quality=92)
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``tiny`` config checkpoint in its own folder."""
    return make_checkpoint(tmp_path_factory.mktemp("tiny") / "model.pt", "tiny")


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated demo dataset from five source photos, one small crop each; returns scores.csv."""
    sources = ("astronaut", "chelsea", "coffee", "rocket", "camera")
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), sources=sources, side=96, crops=1)
