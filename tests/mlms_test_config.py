"""The multi-level, multi-scale Swin config at test size, registered once for every test package (a module of its
own, as ``deepfeat_test_config``)."""

from __future__ import annotations

from qualitynet.trainer.backbones import LITE_MEAN, LITE_STD
from qualitynet.trainer.mlms import MlmsConfig, register_mlms_config

# ImageNet EfficientNet-Lite0 (offline weights) at 96 px: levels block2/4/6 are 12, 6 and 3 cells; grid 6 (block2
# averaged 2x2, block6 upsampled 2x); scales of 1- and 2-cell patches (6x6 tokens in four 3x3 windows, the
# second block on shifted ones; 3x3 tokens in one window), 16-wide tokens, two regressors.
MLMS_TEST = register_mlms_config(MlmsConfig(
    "mlms-test", "efficientnet_lite0", ("block2", "block4", "block6"), image_size=96, grid=6, dim=16, heads=2,
    window=3, patches=(1, 2), depths=(2, 1), regressors=2, hidden=16, mean=LITE_MEAN, std=LITE_STD))
