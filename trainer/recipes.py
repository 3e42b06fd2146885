"""Per-config training recipes: the settings in which a config's default differs from the paper's.

:class:`qualitynet.trainer.train.TrainSettings`' defaults are the paper's recipe (Adam lr 1e-4,
batch 10, backbones trained). The lite configs' defaults were chosen by measurement on
scene-disjoint splits of the demo data (``benchmarks/scripts/recipe_compare.py``; README,
"Choosing the lite recipe"): ImageNet backbones, frozen, so only attention and head train,
on cached pooled features, with a 10x learning rate (about 4 M parameters over fixed
features). ``iqa-train --config lite`` and ``iqa-demo`` start from these; any option given
on the command line wins.
"""

from __future__ import annotations

__all__ = ["RECIPES", "recipe_for"]

_FROZEN_LITE: dict[str, object] = {"pretrained": True, "freeze_backbones": True, "lr": 1e-3}

RECIPES: dict[str, dict[str, object]] = {
    "lite": _FROZEN_LITE,
    "lite02": _FROZEN_LITE,
    # Deep features + Gaussian process (trainer/deepfeat.py): pretrained, frozen backbones by definition.
    # The paper's config scores five fixed crops (and, in the graph, their flips) at native resolution;
    # the offline one keeps the whole-image view, so its CPU fit costs one backbone pass (and a flip) per image.
    "deepfeat": {"pretrained": True, "freeze_backbones": True, "view": "crops"},
    "deepfeat-lite": {"pretrained": True, "freeze_backbones": True},
}


def recipe_for(config: str | None, **given: object) -> dict[str, object]:
    """``config``'s recipe with the settings in ``given`` that are not None laid over it.

    Example:
        >>> recipe_for("lite", lr=None, pretrained=False)
        {'pretrained': False, 'freeze_backbones': True, 'lr': 0.001}
    """
    return {**RECIPES.get(config or "", {}), **{k: v for k, v in given.items() if v is not None}}
