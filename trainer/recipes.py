"""Per-config training recipes: the settings in which a config's default differs from the paper's.

:class:`qualitynet.trainer.train.TrainSettings`' defaults are the paper's recipe (Adam lr 1e-4,
batch 10, backbones trained, the whole image resized, a full decode). The lite configs' defaults
were chosen by measurement on scene-disjoint splits of the demo data
(``benchmarks/scripts/recipe_compare.py``; docs, "Choosing the lite recipe"): ImageNet
backbones, frozen, so only attention and head train, on cached pooled features, with a higher
learning rate than the paper's (about 4 M parameters over fixed features: 1e-3 for ``lite``,
3e-4 for ``lite02``, whose head over Lite2's features overfits the training scenes sooner at
1e-3); each image seen as 5 crops at short side 768, its score their mean; JPEGs DCT-scaled to
that side. ``lite02`` is the demo's model: over 20 scene splits it ranks unseen scenes as ``lite``
does (``benchmarks/scripts/split_spread.py``) and its plain INT8 graph passes the gate. ``iqa-train --config
lite``/``lite02`` and ``iqa-demo`` start from these; any option given on the command line wins.
"""

from __future__ import annotations

__all__ = ["RECIPES", "recipe_for"]

_FROZEN_LITE: dict[str, object] = {"pretrained": True, "freeze_backbones": True, "lr": 1e-3,
                                   "view": "crops", "short_side": 768, "decode": "dct"}

RECIPES: dict[str, dict[str, object]] = {
    "lite": _FROZEN_LITE,
    "lite02": {**_FROZEN_LITE, "lr": 3e-4},
    # Deep features + Gaussian process (trainer/deepfeat.py): pretrained, frozen backbones by definition.
    # The paper's config scores five fixed crops (and, in the graph, their flips) at native resolution;
    # the offline one keeps the whole-image view, so its CPU fit costs one backbone pass (and a flip) per image.
    "deepfeat": {"pretrained": True, "freeze_backbones": True, "view": "crops"},
    "deepfeat-lite": {"pretrained": True, "freeze_backbones": True},
    # Multi-level, multi-scale Swin (trainer/mlms.py): the paper's config fine-tunes its ImageNet ResNet-50 end to
    # end. The offline one trains fusion, Swin blocks and head on the frozen Lite0's level maps, cached once, on
    # the whole image (a crops view would cache five times the maps); lr 3e-4, between the paper's 1e-4 and the
    # lite head's 1e-3, for blocks trained from scratch without warm-up.
    "mlms": {"pretrained": True},
    "mlms-lite": {"pretrained": True, "freeze_backbones": True, "lr": 3e-4},
}


def recipe_for(config: str | None, **given: object) -> dict[str, object]:
    """``config``'s recipe with the settings in ``given`` that are not None laid over it.

    A recipe's DCT-scaled decode gives way to a full decode where the view chosen cannot be
    DCT-scaled (crops at native resolution, ``short_side`` 0), unless ``decode`` is given.

    Example:
        >>> recipe_for("lite", lr=None, pretrained=False)["pretrained"]
        False
        >>> recipe_for("lite", short_side=0)["decode"]
        'full'
    """
    settings = {**RECIPES.get(config or "", {}), **{k: v for k, v in given.items() if v is not None}}
    native_crops = settings.get("view") == "crops" and not settings.get("short_side")
    if native_crops and settings.get("decode") == "dct" and given.get("decode") is None:
        settings["decode"] = "full"
    return settings
