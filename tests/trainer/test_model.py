"""QualityNet's structure against the paper (design.md, eqs. 12-23)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qualitynet.errors import QualityNetError
from qualitynet.trainer.model import ChannelAttention, SpatialAttention, create_model, get_config


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _attention_params(channels: int, reduction: int) -> int:
    hidden = channels // reduction
    spatial = 2 * 3 * 3 + 1  # 3x3 conv, 2 maps -> 1, with bias
    return spatial + (2 * channels * hidden + hidden) + (hidden * channels + channels)


@pytest.fixture(scope="module")
def paper_model() -> nn.Module:
    return create_model("qualitynet").eval()


# torchvision's ResNet-50 and EfficientNet-B7 without their classifiers (fc, classifier).
RESNET50_FEATURES, EFFNET_B7_FEATURES = 23_508_032, 63_786_960


def test_paper_streams_are_torchvision_backbones_plus_attention(paper_model: nn.Module) -> None:
    resnet_features, effnet_features = RESNET50_FEATURES, EFFNET_B7_FEATURES
    r50, b7 = paper_model.streams
    assert (r50.channels, b7.channels, paper_model.num_features) == (2048, 2560, 4608)
    assert _count(r50) == resnet_features + _attention_params(2048, 16)
    assert _count(b7) == effnet_features + _attention_params(2560, 16)


def test_paper_head_layers(paper_model: nn.Module) -> None:
    widths = [4608, 1024, 512, 256]
    expected = sum(w_in * w + w + 2 * w for w_in, w in zip(widths, widths[1:])) + 256 + 1
    assert _count(paper_model.head) + _count(paper_model.output) == expected == 5_379_585
    layers = list(paper_model.head)
    assert [type(m) for m in layers[:4]] == [nn.Linear, nn.ReLU, nn.BatchNorm1d, nn.Dropout]
    assert [m.out_features for m in layers if isinstance(m, nn.Linear)] == [1024, 512, 256]
    assert [m.p for m in layers if isinstance(m, nn.Dropout)] == [0.25, 0.25, 0.5]
    assert paper_model.output.out_features == 1


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_output_shape_and_finite(name: str) -> None:
    model = create_model(name).eval()
    size = model.config.image_size
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, 1) and torch.isfinite(out).all()


@pytest.mark.slow
def test_paper_forward_shape(paper_model: nn.Module) -> None:
    with torch.no_grad():
        assert paper_model(torch.randn(2, 3, 224, 224)).shape == (2, 1)


def test_spatial_attention_gate_multiplies() -> None:
    torch.manual_seed(0)
    attention = SpatialAttention()
    x = torch.randn(4, 8, 1, 1)
    gate = torch.sigmoid(attention.conv(torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)))
    torch.testing.assert_close(attention(x), x * gate)
    with torch.no_grad():
        attention.conv.weight.zero_()
        attention.conv.bias.fill_(-50.0)
    assert attention(x).abs().max() < 1e-15  # gate closed -> features suppressed
    with torch.no_grad():
        attention.conv.bias.zero_()
    torch.testing.assert_close(attention(x), 0.5 * x)


def test_channel_attention_gate_multiplies_per_channel() -> None:
    torch.manual_seed(0)
    attention = ChannelAttention(channels=8, reduction=4)
    assert (attention.fc1.in_features, attention.fc1.out_features, attention.fc2.out_features) == (16, 2, 8)
    x = torch.randn(4, 8, 1, 1)
    with torch.no_grad():
        attention.fc2.weight.zero_()
        attention.fc2.bias.copy_(torch.tensor([50.0, -50.0] * 4))
    out = attention(x)
    torch.testing.assert_close(out[:, 0::2], x[:, 0::2])  # gate open
    assert out[:, 1::2].abs().max() < 1e-15  # gate closed


def test_unknown_config_is_a_clear_error() -> None:
    with pytest.raises(QualityNetError, match="choose one of qualitynet, small, lite, lite02, tiny"):
        get_config("resnet9000")


def test_small_config_keeps_the_first_backbone_stages() -> None:
    model = create_model("small")
    resnet, mobilenet = model.streams
    assert (resnet.channels, mobilenet.channels, model.num_features) == (64, 16, 80)
    assert [type(m).__name__ for m in resnet.features] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d", "Sequential"]
    assert len(mobilenet.features) == 2
    assert [m.out_features for m in model.head if isinstance(m, nn.Linear)] == [256, 128, 64]


def test_lite_config_streams_are_pretrained_efficientnet_lites_with_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    from timm.models.efficientnet import EfficientNet

    from qualitynet.trainer.backbones import LITE_MEAN, LITE_STD, lite_weights_path

    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # offline: the packages suffice
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    model = create_model("lite", pretrained=True).eval()
    assert model.config.backbones == ("efficientnet_lite0", "efficientnet_lite1")
    for stream, variant in zip(model.streams, model.config.backbones, strict=True):
        assert isinstance(stream.features, EfficientNet) and stream.channels == 1280
        assert _count(stream) == _count(stream.features) + _attention_params(1280, 16)
        weights = torch.load(lite_weights_path(variant), weights_only=True)
        assert torch.equal(stream.features.state_dict()["conv_head.weight"], weights["_conv_head.weight"])
    assert [m.out_features for m in model.head if isinstance(m, nn.Linear)] == [1024, 512, 256]
    assert model.head[0].in_features == 2560
    cfg = model.config.preprocess()
    assert (cfg.mean, cfg.std, cfg.height, cfg.width) == (LITE_MEAN, LITE_STD, 224, 224)

    # the split forward (pooled features, then attention and head) is the whole forward
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(model(x), model.forward_head(model.attend_pooled(model.forward_pooled(x))), atol=1e-6)
    model.freeze_backbones()
    trainable = {name.split(".")[2] for name, p in model.named_parameters() if p.requires_grad and "streams" in name}
    assert trainable == {"spatial", "channel"}
