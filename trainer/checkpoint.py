"""Checkpoint format: a plain dict loadable with ``torch.load(weights_only=True)``.

Keys: ``format``, ``model_config``, ``state_dict``, ``preprocess``, ``score_scale``,
``mos_mapping`` (fitted after training; absent in older checkpoints: identity),
``dataset``, ``metrics``, ``versions``, and (in ``last.pt`` only) ``train_state`` with the
optimizer, scheduler, epoch, history and random-number states needed to resume. Nothing is pickled code, so a
checkpoint from anywhere can be inspected safely; one that carries code is refused.
"""

from __future__ import annotations

import os
import pickle
import platform
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

import qualitynet
from qualitynet.artifact import MosMapping, PreprocessCfg, ScoreScale
from qualitynet.errors import QualityNetError
from qualitynet.trainer.model import ModelConfig, QualityNet, calibrate_batchnorm, create_model

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "save_untrained_checkpoint",
    "software_versions",
]

CHECKPOINT_FORMAT = "qualitynet-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model's recipe, weights and what it was trained on."""

    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    preprocess: PreprocessCfg
    score_scale: ScoreScale
    dataset: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None
    mos_mapping: MosMapping = field(default_factory=MosMapping)

    def build_model(self, mapped: bool = True) -> QualityNet:
        """Instantiate the model with these weights, in eval mode.

        Args:
            mapped: end ``forward`` with the checkpoint's MOS mapping (what exports carry);
                ``False`` gives the network's raw output.
        """
        from qualitynet.trainer.mos_mapping import MosMappingLayer

        model = QualityNet(self.model_config)
        model.load_state_dict(self.state_dict)
        if mapped and self.mos_mapping.kind != "identity":
            model.set_mos_mapping(MosMappingLayer(self.mos_mapping, self.score_scale))
        return model.eval()


def software_versions() -> dict[str, str]:
    """Versions that decide whether an artifact can be reproduced."""
    return {
        "qualitynet": qualitynet.__version__,
        "torch": str(torch.__version__),  # TorchVersion would need pickling
        "torchvision": str(torchvision.__version__),
        "python": platform.python_version(),
    }


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write atomically (temp file + rename) so an interrupt never leaves a half file."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": checkpoint.model_config.to_dict(),
        "state_dict": checkpoint.state_dict,
        "preprocess": asdict(checkpoint.preprocess),
        "score_scale": asdict(checkpoint.score_scale),
        "mos_mapping": asdict(checkpoint.mos_mapping),
        "dataset": checkpoint.dataset,
        "metrics": checkpoint.metrics,
        "versions": checkpoint.versions or software_versions(),
    }
    if checkpoint.train_state is not None:
        payload["train_state"] = checkpoint.train_state
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load and validate a QualityNet checkpoint on the CPU.

    Raises:
        QualityNetError: missing, corrupt, pickled code, or not a QualityNet checkpoint;
            the message says which and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise QualityNetError(f"{path}: checkpoint not found")
    corrupt = f"{path}: not a readable PyTorch checkpoint, the file is corrupt or truncated"
    if not zipfile.is_zipfile(path):  # torch.save has written zip archives since PyTorch 1.6
        raise QualityNetError(f"{corrupt} (not a zip archive); re-copy it or re-train")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = str(exc).splitlines()
        reason = next((line.strip() for line in lines if "Unsupported global" in line), type(exc).__name__)
        raise QualityNetError(
            f"{path}: refused, the file holds pickled Python objects, not plain weights ({reason}); "
            "only checkpoints written by iqa-train are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise QualityNetError(f"{corrupt} ({type(exc).__name__}); re-copy it or re-train") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise QualityNetError(
            f"{path}: not a QualityNet checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r}); "
            "pass a model.pt written by iqa-train"
        )
    try:
        checkpoint = Checkpoint(
            model_config=ModelConfig.from_dict(payload["model_config"]),
            state_dict=payload["state_dict"],
            preprocess=PreprocessCfg.from_dict(payload["preprocess"]),
            score_scale=ScoreScale(**payload["score_scale"]),
            dataset=payload.get("dataset", ""),
            metrics=payload.get("metrics", {}),
            versions=payload.get("versions", {}),
            train_state=payload.get("train_state"),
            mos_mapping=MosMapping.from_dict(payload.get("mos_mapping") or {}),
        )
    except (KeyError, TypeError) as exc:
        raise QualityNetError(f"{path}: QualityNet checkpoint is incomplete ({exc!r}); re-train") from None
    checkpoint.preprocess.validate(str(path), "re-train")
    return checkpoint


def save_untrained_checkpoint(path: Path, config: str, calibration: np.ndarray | None = None, seed: int = 0,
                              score_scale: ScoreScale = ScoreScale(1.0, 5.0, "untrained, MOS 1-5")) -> Path:
    """Write a randomly initialised model as a real checkpoint, for tests and benchmarks.

    Args:
        path: where to write it.
        config: model configuration name.
        calibration: preprocessed real photos ``(N, 3, H, W)`` to calibrate BatchNorm on
            (see :func:`calibrate_batchnorm`); default: the bundled scikit-image photos.
        seed: weight initialisation seed.
        score_scale: the MOS scale it claims.
    """
    torch.manual_seed(seed)
    model = create_model(config)
    preprocess = model.config.preprocess()
    if calibration is None:
        from qualitynet.runtime.preprocess import image_to_tensor
        from qualitynet.trainer.demo_data import DEMO_SOURCES, demo_photo

        calibration = np.stack([image_to_tensor(demo_photo(name), preprocess) for name in DEMO_SOURCES])
    calibrate_batchnorm(model, torch.from_numpy(calibration))
    save_checkpoint(Path(path), Checkpoint(model.config, model.state_dict(), preprocess, score_scale, "untrained"))
    return Path(path)
