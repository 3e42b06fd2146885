"""The deep-features + GP config at test size, registered once for every test package (a module of its own:
``conftest`` names two modules in this tree, so tests cannot import from it by name)."""

from __future__ import annotations

from qualitynet.trainer.backbones import LITE_MEAN, LITE_STD
from qualitynet.trainer.deepfeat import DeepFeatConfig, register_deepfeat_config

# ImageNet EfficientNet-Lite0 (offline weights) at 96 px, two candidate layers
DEEPFEAT_TEST = register_deepfeat_config(DeepFeatConfig(
    "deepfeat-test", (("efficientnet_lite0", ("block6", "head")),), image_size=96, mean=LITE_MEAN, std=LITE_STD))
