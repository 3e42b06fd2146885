"""Fixtures shared by every test package: real photos and small checkpoints.

Photos are scikit-image's bundled ones (see qualitynet.trainer.demo_dataset for licences);
models are randomly initialised, since no weights can be downloaded here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import xdist_pinning  # noqa: F401  (before anything imports torch: it pins an xdist worker)
from deepfeat_test_config import DEEPFEAT_TEST
from mlms_test_config import MLMS_TEST

from qualitynet.trainer.checkpoint import save_untrained_checkpoint
from qualitynet.trainer.datasets import load_dataset
from qualitynet.trainer.demo_dataset import demo_photo, make_demo_dataset
from qualitynet.trainer.train import TrainSettings, train

TRAINED_EPOCHS = 20
MLMS_EPOCHS = 8
PHOTO_NAMES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field", "coins", "retina")


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
    """An untrained ``tiny`` checkpoint in its own folder, BatchNorm calibrated on real photos
    so that its scores differ from photo to photo (see ``calibrate_batchnorm``)."""
    return save_untrained_checkpoint(tmp_path_factory.mktemp("tiny") / "model.pt", "tiny")


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated demo dataset from five source photos, one small crop each at their own scale; returns
    scores.csv."""
    sources = ("astronaut", "chelsea", "coffee", "rocket", "camera")
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), sources=sources, side=96, crops=1, scales=(0.5,))


@pytest.fixture(scope="session")
def trained_checkpoint(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``lite`` checkpoint trained by iqa-train's loop on the demo dataset with the demo's recipe
    (ImageNet EfficientNet-Lite backbones, frozen: their pooled features are computed once, then the
    attention and head train in seconds), with the MOS mapping fitted on its validation split as
    every run attaches (what exports carry in their graph). A few steps of the from-scratch
    ``tiny`` config give outputs so flat that the fitted mapping's slope is ~1e6."""
    settings = TrainSettings(config="lite", epochs=TRAINED_EPOCHS, batch_size=8, lr=1e-3, workers=0, quiet=True,
                             device="cpu", pretrained=True, freeze_backbones=True)
    result = train(load_dataset("csv", csv_path=demo_dataset), tmp_path_factory.mktemp("trained"), settings)
    return result.out_dir / "model.pt"


@pytest.fixture(scope="session")
def deepfeat_checkpoint(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deep-features + Gaussian-process checkpoint fitted by iqa-train's path on the demo dataset
    (the ``deepfeat-test`` config: frozen ImageNet Lite0 at 96 px, flips in the graph), with the MOS
    mapping fitted on its validation split as every run attaches."""
    settings = TrainSettings(config=DEEPFEAT_TEST.name, batch_size=16, workers=0, quiet=True, device="cpu",
                             pretrained=True, freeze_backbones=True)
    result = train(load_dataset("csv", csv_path=demo_dataset), tmp_path_factory.mktemp("deepfeat"), settings)
    return result.out_dir / "model.pt"


@pytest.fixture(scope="session")
def mlms_checkpoint(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A multi-level, multi-scale Swin checkpoint trained by iqa-train's loop on the demo dataset (the ``mlms-test``
    config: frozen ImageNet Lite0 at 96 px, its level maps cached once, then fusion, Swin blocks and head trained),
    with the MOS mapping fitted on its validation split."""
    settings = TrainSettings(config=MLMS_TEST.name, epochs=MLMS_EPOCHS, batch_size=8, lr=1e-3, workers=0, quiet=True,
                             device="cpu", pretrained=True, freeze_backbones=True)
    result = train(load_dataset("csv", csv_path=demo_dataset), tmp_path_factory.mktemp("mlms"), settings)
    return result.out_dir / "model.pt"


@pytest.fixture(scope="session")
def mlms_onnx(mlms_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The multi-level, multi-scale checkpoint exported to ONNX by the export stage's API."""
    from qualitynet.export import export_onnx

    return export_onnx(mlms_checkpoint, tmp_path_factory.mktemp("mlms-onnx") / "model.onnx")


@pytest.fixture(scope="session")
def deepfeat_onnx(deepfeat_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The deep-features checkpoint exported to ONNX by the export stage's API."""
    from qualitynet.export import export_onnx

    return export_onnx(deepfeat_checkpoint, tmp_path_factory.mktemp("deepfeat-onnx") / "model.onnx")
