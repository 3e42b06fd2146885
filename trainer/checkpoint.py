"""Checkpoint format: a plain dict loadable with ``torch.load(weights_only=True)``.

Keys: ``format``, ``model_config`` (a QualityNet :class:`ModelConfig`, or for any other
network a :class:`~qualitynet.trainer.registry.ModelSpec`, told apart by its ``factory``
key), ``state_dict``, ``preprocess``, ``score_scale``,
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
from torch import nn

import qualitynet
from qualitynet.artifact import MosMapping, PreprocessCfg, ScoreScale
from qualitynet.errors import QualityNetError
from qualitynet.trainer.mlms import MLMS_CONFIGS, MlmsIqa, create_mlms
from qualitynet.trainer.model import ModelConfig, QualityNet, calibrate_batchnorm, create_model
from qualitynet.trainer.registry import ModelSpec, resolve_factory

__all__ = [
    "CHECKPOINT_FORMAT",
    "Checkpoint",
    "create_network",
    "load_checkpoint",
    "network_entry",
    "save_checkpoint",
    "save_untrained_checkpoint",
    "software_versions",
]

CHECKPOINT_FORMAT = "qualitynet-checkpoint/1"


@dataclass
class Checkpoint:
    """A loaded checkpoint: the model's recipe, weights and what it was trained on."""

    model_config: ModelConfig | ModelSpec
    state_dict: dict[str, torch.Tensor]
    preprocess: PreprocessCfg
    score_scale: ScoreScale
    dataset: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    train_state: dict[str, Any] | None = None
    mos_mapping: MosMapping = field(default_factory=MosMapping)

    @property
    def spec(self) -> ModelSpec:
        """How the network is rebuilt (QualityNet's configurations are registry entries too)."""
        return self.model_config if isinstance(self.model_config, ModelSpec) else self.model_config.spec()

    def build_model(self, mapped: bool = True) -> nn.Module:
        """Instantiate the model with these weights, in eval mode: ``(N, 3, H, W)`` to unit-scale ``(N, 1)``.

        QualityNet comes back as itself; any other network is wrapped in
        :class:`~qualitynet.trainer.custom.ScoreOutput`, which checks its output shape once
        and brings it to that contract.

        Args:
            mapped: end ``forward`` with the checkpoint's MOS mapping (what exports carry);
                ``False`` gives the network's raw output.

        Raises:
            QualityNetError: the factory cannot be imported, the weights do not fit the
                network it builds, or that network does not give one score per image.
        """
        from qualitynet.trainer.custom import ScoreOutput
        from qualitynet.trainer.mos_mapping import MosMappingLayer

        model = self.build_network()
        mapping = MosMappingLayer(self.mos_mapping, self.score_scale) \
            if mapped and self.mos_mapping.kind != "identity" else None
        if isinstance(model, QualityNet):
            if mapping is not None:
                model.set_mos_mapping(mapping)
            return model.eval()
        return ScoreOutput(model, self.spec, self.score_scale, self.preprocess, mapping).eval()

    def build_network(self) -> nn.Module:
        """The network its factory builds, with these weights, as it is (no MOS mapping, no output wrapper).

        Raises:
            QualityNetError: the factory cannot be imported, or the weights do not fit its network.
        """
        spec = self.spec
        model = spec.build()
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:  # "Error(s) in loading state_dict for X:", then one line per problem
            problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [str(exc)]
            more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
            raise QualityNetError(f"the checkpoint's weights do not fit the network {spec.factory!r} builds "
                                  f"({problems[0]}{more}); save it again with the same factory arguments") from None
        return model


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
        "model_config": checkpoint.model_config.to_dict(),  # ModelSpec's has a "factory" key
        "state_dict": checkpoint.state_dict,
        "preprocess": checkpoint.preprocess.to_dict(),  # an older trainer reads a default view
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
        config = payload["model_config"]
        checkpoint = Checkpoint(
            model_config=ModelSpec.from_dict(config) if "factory" in config else ModelConfig.from_dict(config),
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
    except QualityNetError as exc:  # a damaged model entry (ModelSpec checks its own fields)
        raise QualityNetError(f"{path}: {exc}") from None
    checkpoint.preprocess.validate(str(path), "re-train")
    if isinstance(checkpoint.model_config, ModelSpec):
        try:
            resolve_factory(checkpoint.model_config.factory)
        except QualityNetError as exc:
            raise QualityNetError(f"{path}: {exc}") from None
    return checkpoint


def create_network(name: str, pretrained: bool = False) -> QualityNet | MlmsIqa:
    """A new network of a ``--config`` that trains by epochs: a QualityNet configuration or a multi-level,
    multi-scale one (:mod:`qualitynet.trainer.mlms`)."""
    return create_mlms(name, pretrained) if name in MLMS_CONFIGS else create_model(name, pretrained)


def network_entry(model: QualityNet | MlmsIqa) -> ModelConfig | ModelSpec:
    """What a checkpoint of ``model`` stores to rebuild it: QualityNet's config, or the registry spec."""
    return model.config if isinstance(model, QualityNet) else model.config.spec()


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
    model = create_network(config)
    preprocess = model.config.preprocess()
    if calibration is None:
        from qualitynet.runtime.preprocess import image_to_tensor
        from qualitynet.trainer.demo_dataset import DEMO_SOURCES, demo_photo

        calibration = np.stack([image_to_tensor(demo_photo(name), preprocess) for name in DEMO_SOURCES])
    calibrate_batchnorm(model, torch.from_numpy(calibration))
    save_checkpoint(Path(path), Checkpoint(network_entry(model), model.state_dict(), preprocess, score_scale,
                                           "untrained"))
    return Path(path)
