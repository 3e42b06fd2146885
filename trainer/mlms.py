"""Multi-level, multi-scale IQA with Swin-Transformer blocks (Sun, Traitement du Signal 40(6), 2023).

The design the paper describes, in four parts:

1. **Multi-level features**: the outputs of several stages of an ImageNet CNN (ResNet-50 in
   the paper), brought to one grid and fused (:class:`LevelFeatures`, :class:`LevelFusion`).
2. **Multi-scale module**: the fused map is cut into patches at several scales, each scale's
   patches embedded as tokens and passed through Swin-Transformer blocks, windowed
   self-attention alternating with shifted windows (torchvision's ``SwinTransformerBlock``,
   its attention on a grid of fixed size: :mod:`qualitynet.trainer.swin`; :class:`SwinScale`).
3. **B parallel regression layers** over every position's token, averaged: the score branch.
4. **Dual-branch head**: beside the score branch, a weight branch gives each position a
   weight in (0, 1); the image's score is the weighted mean of the positions' scores, over
   every scale (:class:`DualBranchHead`).

The paper leaves most sizes unstated; each choice is in :data:`MLMS_CONFIGS` with its reason.
Everything is static apart from the batch (the fusion grid, the windows, the shifts and
their masks follow from the input size), so the model exports to one ONNX graph at
opset 17 with operators TensorRT 8.6 parses.

With the backbone frozen, :meth:`MlmsIqa.forward_pooled` gives the levels' feature maps,
flattened into one row per image: ``iqa-train --freeze-backbones`` caches them once
(:mod:`qualitynet.trainer.frozen`) and trains fusion, Swin blocks and head on the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from qualitynet.artifact import IMAGENET_MEAN, IMAGENET_STD, PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.trainer.backbones import LITE_MEAN, LITE_STD
from qualitynet.trainer.deepfeat import backbone_stages, stages_up_to
from qualitynet.trainer.registry import ModelSpec, factory_reference, register_spec
from qualitynet.trainer.swin import swin_block

__all__ = ["MLMS_CONFIGS", "DualBranchHead", "LevelFeatures", "LevelFusion", "MlmsConfig", "MlmsIqa", "SwinScale",
           "Upsample",
           "create_mlms", "mlms_from_config", "register_mlms_config"]


@dataclass(frozen=True)
class MlmsConfig:
    """One multi-level, multi-scale configuration.

    Attributes:
        name: ``--config`` and registry name.
        backbone: a torchvision ResNet or an EfficientNet-Lite variant.
        levels: the backbone stages whose outputs are fused (names as in
            :func:`~qualitynet.trainer.deepfeat.backbone_stages`).
        image_size: square network input in pixels.
        grid: side of the fused map; larger levels are average-pooled to it (in the frozen
            part, before caching), smaller ones upsampled (nearest) after their projection.
        dim: token width (fusion output, Swin blocks, head input).
        heads: attention heads of every Swin block.
        window: Swin window side (shifted by half of it in every second block).
        patches: one scale per entry: the patch side, in fused-map cells, of that scale's tokens.
        depths: Swin blocks per scale.
        regressors: B, the parallel regression layers of the score branch.
        hidden: width of the regression and weight layers' hidden layer.
        mean / std: input normalisation (0-1 units) the backbone's weights expect.
    """

    name: str
    backbone: str
    levels: tuple[str, ...]
    image_size: int = 224
    grid: int = 14
    dim: int = 96
    heads: int = 3
    window: int = 7
    patches: tuple[int, ...] = (1, 2)
    depths: tuple[int, ...] = (2, 2)
    regressors: int = 4
    hidden: int = 64
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if len(self.patches) != len(self.depths) or not self.patches:
            raise QualityNetError(f"mlms config {self.name!r}: one depth per scale (patches {list(self.patches)}, "
                                  f"depths {list(self.depths)})")
        bad = [p for p in self.patches if p < 1 or self.grid % p]
        if bad or self.dim % self.heads:
            raise QualityNetError(f"mlms config {self.name!r}: patch sides {bad} do not divide the grid {self.grid}, "
                                  f"or dim {self.dim} is not a multiple of {self.heads} heads")

    def preprocess(self) -> PreprocessCfg:
        """The input preprocessing the backbone's weights expect."""
        return PreprocessCfg(height=self.image_size, width=self.image_size, mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (registry factory arguments, checkpoints)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MlmsConfig:
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})  # type: ignore[arg-type]

    def spec(self) -> ModelSpec:
        """This configuration as a registry entry."""
        return ModelSpec(self.name, factory_reference(mlms_from_config), self.to_dict())


MLMS_CONFIGS: dict[str, MlmsConfig] = {
    # The paper's: torchvision's ResNet-50 (ImageNet weights downloaded by the user once). Levels
    # layer2/3/4 (strides 8/16/32, 512/1024/2048 channels): the three stages a feature pyramid
    # fuses; layer1 (stride 4) would quadruple the tokens for features the fused stride-8 map
    # already resolves. Grid 28: layer2's own resolution, so no level is pooled. Width 192 and
    # 6 heads: Swin-T's stage-2 width and 32-channel heads. Window 7 (Swin's). Scales: patches of
    # 1, 2 and 4 cells (28x28, 14x14, 7x7 tokens: strides 8, 16, 32 in the image); depths 2, 4, 2
    # (the [2, 4, 4, 2] pattern of the paper's range, one scale fewer); B = 4 regressors.
    "mlms": MlmsConfig("mlms", "resnet50", ("layer2", "layer3", "layer4"), grid=28, dim=192, heads=6,
                       patches=(1, 2, 4), depths=(2, 4, 2)),
    # Offline, for training on a CPU: the EfficientNet-Lite0 weights the lite configs use. Levels
    # block2/4/6 (strides 8/16/32, 40/112/320 channels), as layer2/3/4 above. Grid 14 (stride 16):
    # block2 is averaged 2x2 before caching, so a frozen run caches 45k floats per image rather
    # than 130k. Width 96, 3 heads: Swin-T's stage-1 width. Scales: 1- and 2-cell patches (14x14
    # tokens, four 7x7 windows, shifted in the second block; 7x7 tokens, one window), depths 2, 2.
    "mlms-lite": MlmsConfig("mlms-lite", "efficientnet_lite0", ("block2", "block4", "block6"),
                            mean=LITE_MEAN, std=LITE_STD),
}


def register_mlms_config(config: MlmsConfig) -> MlmsConfig:
    """Make ``config`` an ``iqa-train --config`` choice and a registry entry."""
    MLMS_CONFIGS[config.name] = config
    register_spec(config.spec())
    return config


class LevelFeatures(nn.Module):
    """The frozen part: a backbone's chosen stage outputs, those larger than the grid average-pooled to it.

    ``forward`` gives the maps; :meth:`flat` one row per image (what a frozen run caches) and
    :meth:`unflatten` the maps back from it.
    """

    def __init__(self, stages: Sequence[nn.Module], names: Sequence[str], levels: Sequence[str], image_size: int,
                 grid: int) -> None:
        super().__init__()
        self.stages = stages_up_to(stages, names, levels, "mlms: levels")
        self.taps = [names.index(level) for level in levels]
        shapes = self._probe(image_size)
        bad = [f"{level} {side}x{side}" for level, (_, side) in zip(levels, shapes, strict=True)
               if (side % grid if side >= grid else grid % side)]
        if bad:
            raise QualityNetError(f"mlms: level maps {', '.join(bad)} at {image_size} px do not pool or upsample to "
                                  f"the {grid}x{grid} grid by a whole factor")
        self.pools = nn.ModuleList(nn.AvgPool2d(side // grid) if side > grid else nn.Identity() for _, side in shapes)
        self.shapes = [(channels, min(side, grid)) for channels, side in shapes]

    @torch.no_grad()
    def _probe(self, image_size: int) -> list[tuple[int, int]]:
        """Each level's (channels, side) at ``image_size``, from one blank image in eval mode
        (train mode would move BatchNorm's running statistics)."""
        was = self.training
        self.eval()
        maps = self._levels(torch.zeros(1, 3, image_size, image_size))
        self.train(was)
        return [(int(m.shape[1]), int(m.shape[2])) for m in maps]

    def _levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index in self.taps:
                maps.append(x)
        return [maps[sorted(self.taps).index(tap)] for tap in self.taps]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [pool(m) for pool, m in zip(self.pools, self._levels(x), strict=True)]

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        """Every level's map flattened and concatenated: ``(N, sum of C * side^2)``."""
        return torch.cat([m.flatten(1) for m in self(x)], dim=1)

    def unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """Inverse of :meth:`flat`."""
        parts = torch.split(flat, [c * s * s for c, s in self.shapes], dim=1)
        return [p.reshape(-1, c, s, s) for p, (c, s) in zip(parts, self.shapes, strict=True)]


class Upsample(nn.Module):
    """Nearest-neighbour upsampling of ``(N, channels, side, side)`` by a whole ``factor``, as a broadcast multiply.

    ``nn.Upsample`` exports as a Resize whose batch axis ONNX Runtime's symbolic shape
    inference (the first step of INT8 quantization) cannot match with the other levels'.
    """

    ones: torch.Tensor

    def __init__(self, factor: int, channels: int, side: int) -> None:
        super().__init__()
        self.register_buffer("ones", torch.ones(1, 1, 1, factor, 1, factor), persistent=False)
        self.shape = (channels, side * factor, side * factor)
        self.channels, self.side = channels, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cells = x.reshape(-1, self.channels, self.side, 1, self.side, 1) * self.ones
        return cells.reshape(-1, *self.shape)


class LevelFusion(nn.Module):
    """Each level projected to ``dim`` channels (1x1 conv) and brought to the grid (nearest upsampling), then
    summed: a 1x1 convolution of the levels' concatenation, computed level by level."""

    def __init__(self, shapes: Sequence[tuple[int, int]], dim: int, grid: int) -> None:
        super().__init__()
        self.projections = nn.ModuleList(nn.Conv2d(channels, dim, 1) for channels, _ in shapes)
        self.resize = nn.ModuleList(Upsample(grid // side, dim, side) if side < grid else nn.Identity()
                                    for _, side in shapes)
        self.norm = nn.BatchNorm2d(dim)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = sum(resize(project(m)) for project, resize, m in zip(self.projections, self.resize, maps, strict=True))
        return torch.nn.functional.gelu(self.norm(fused))  # type: ignore[arg-type]


class SwinScale(nn.Module):
    """One scale: ``patch`` x ``patch`` cells of the fused map embedded as one token (a strided conv, Swin's
    patch embedding, then LayerNorm), ``depth`` Swin blocks (every second one on shifted windows),
    then LayerNorm: ``(N, dim, grid, grid)`` -> ``(N, (grid / patch)^2, dim)``.

    Raises:
        QualityNetError: the scale's token grid is not a whole number of windows.
    """

    def __init__(self, dim: int, patch: int, depth: int, heads: int, window: int, grid: int) -> None:
        super().__init__()
        self.embed = nn.Conv2d(dim, dim, patch, stride=patch)
        self.embed_norm = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(*(swin_block(dim, heads, window, i % 2 == 1, grid // patch) for i in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.positions, self.dim = (grid // patch) ** 2, dim

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        tokens = self.embed_norm(self.embed(fused).permute(0, 2, 3, 1))  # channels last, as the blocks take them
        return self.norm(self.blocks(tokens)).reshape(-1, self.positions, self.dim)  # sizes constant in the graph


class DualBranchHead(nn.Module):
    """``(N, positions, dim)`` -> ``(N, 1)``: the mean of ``regressors`` parallel regression layers (the score
    branch) and a weight in (0, 1) per position (the weight branch); the weighted mean of the positions' scores."""

    def __init__(self, dim: int, regressors: int, hidden: int) -> None:
        super().__init__()
        self.regressors = nn.ModuleList(nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
                                        for _ in range(regressors))
        self.weight = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1), nn.Sigmoid())

    def position_scores(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each position's score and weight, ``(N, positions, 1)`` each."""
        scores = torch.stack([regress(tokens) for regress in self.regressors]).mean(dim=0)
        return scores, self.weight(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        scores, weights = self.position_scores(tokens)
        return (scores * weights).sum(dim=1) / (weights.sum(dim=1) + 1e-6)


class MlmsIqa(nn.Module):
    """The multi-level, multi-scale quality regressor: ``(N, 3, H, W)`` -> unit-scale ``(N, 1)``."""

    def __init__(self, config: MlmsConfig, pretrained: bool = False) -> None:
        super().__init__()
        self.config = config
        stages, names = backbone_stages(config.backbone, pretrained)
        self.levels = LevelFeatures(stages, names, config.levels, config.image_size, config.grid)
        self.fusion = LevelFusion(self.levels.shapes, config.dim, config.grid)
        self.scales = nn.ModuleList(SwinScale(config.dim, patch, depth, config.heads, config.window, config.grid)
                                    for patch, depth in zip(config.patches, config.depths, strict=True))
        self.head = DualBranchHead(config.dim, config.regressors, config.hidden)

    def freeze_backbones(self) -> None:
        """Stop gradients into the backbone; fusion, Swin blocks and head stay trainable."""
        self.levels.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        """What stays in eval mode while the rest trains on cached features (BatchNorm keeps ImageNet's statistics)."""
        return [self.levels]

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part's output, one row per image: the levels' maps, flattened (what a frozen run caches)."""
        return self.levels.flat(x)

    def forward_from_pooled(self, flat: torch.Tensor) -> torch.Tensor:
        """The score from :meth:`forward_pooled`'s output."""
        return self.score_levels(self.levels.unflatten(flat))

    def score_levels(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """The score from the levels' maps: fusion, every scale's Swin blocks, the dual-branch head."""
        fused = self.fusion(maps)
        return self.head(torch.cat([scale(fused) for scale in self.scales], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_levels(self.levels(x))


def mlms_from_config(**config: Any) -> MlmsIqa:
    """Registry factory of every multi-level, multi-scale configuration (random weights; a checkpoint's fill it)."""
    return MlmsIqa(MlmsConfig.from_dict(config))


def create_mlms(name: str, pretrained: bool = False) -> MlmsIqa:
    """A named configuration, with the backbone's ImageNet weights when ``pretrained``.

    Example:
        >>> model = create_mlms("mlms-lite").eval()
        >>> model(torch.zeros(2, 3, 224, 224)).shape
        torch.Size([2, 1])
    """
    if name not in MLMS_CONFIGS:
        raise QualityNetError(f"unknown multi-level multi-scale config {name!r}; choose {', '.join(MLMS_CONFIGS)}")
    return MlmsIqa(MLMS_CONFIGS[name], pretrained)


for _config in list(MLMS_CONFIGS.values()):
    register_mlms_config(_config)
