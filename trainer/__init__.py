"""Training, checkpoints and the model registry.

The public entry points for your own network are imported lazily (this package's
submodules import torch):

    from qualitynet.trainer import register_model, save_custom_checkpoint
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real names for type checkers; at run time __getattr__ imports them on first use
    from qualitynet.trainer.custom import save_custom_checkpoint
    from qualitynet.trainer.registry import ModelSpec, register_model

__all__ = ["ModelSpec", "register_model", "save_custom_checkpoint"]

_EXPORTS = {"ModelSpec": "qualitynet.trainer.registry", "register_model": "qualitynet.trainer.registry",
            "save_custom_checkpoint": "qualitynet.trainer.custom"}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
