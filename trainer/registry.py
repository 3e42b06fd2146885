"""Model registry: how any checkpoint's network is rebuilt, QualityNet's and a user's alike.

A network is described by a :class:`ModelSpec`: a factory reference
(``"package.module:function"``), the keyword arguments to call it with (plain values, so
the checkpoint stays loadable with ``weights_only=True``) and what its output means. The
checkpoint stores the spec, and export, INT8 calibration and the benchmarks rebuild the
network from it by importing the factory: nothing pickles code, and nothing forks
:mod:`qualitynet.trainer.model`.

As in timm, :func:`register_model` names a factory so that it can be asked for by name;
QualityNet's configurations (:data:`~qualitynet.trainer.model.MODEL_CONFIGS`) are entries of
the same registry. Checkpoints record the reference, not the name, so a process that has
never imported the user's module can still rebuild the network.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

from qualitynet.errors import QualityNetError

__all__ = ["OUTPUT_KINDS", "ModelSpec", "factory_reference", "get_spec", "list_models", "register_model",
           "register_spec", "resolve_factory"]

#: What a network's score means: ``unit`` is ``(mos - low) / (high - low)`` of the checkpoint's
#: score scale (what QualityNet predicts), ``mos`` is the MOS itself.
OUTPUT_KINDS = ("unit", "mos")

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)

_REGISTRY: dict[str, ModelSpec] = {}


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a network: ``resolve_factory(factory)(**kwargs)``.

    Attributes:
        name: short name (registry key, artifact records, reports).
        factory: ``"package.module:function"`` returning an ``nn.Module`` (dotted
            attribute paths after the colon are allowed, e.g. ``module:Class.build``).
        kwargs: keyword arguments of the factory: plain values only (str, int, float,
            bool, None, and lists/dicts of them).
        output: ``unit`` or ``mos`` (see :data:`OUTPUT_KINDS`).
    """

    name: str
    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    output: str = "unit"

    def __post_init__(self) -> None:
        if self.output not in OUTPUT_KINDS:
            raise QualityNetError(f"model {self.name!r}: output {self.output!r} is not one of "
                                  f"{', '.join(OUTPUT_KINDS)}")
        _check_plain(self.kwargs, f"model {self.name!r}: factory argument")

    def build(self) -> nn.Module:
        """Import the factory and call it (fresh weights; the checkpoint's are loaded after).

        Raises:
            QualityNetError: the factory cannot be imported, fails, or returns no ``nn.Module``.
        """
        factory = resolve_factory(self.factory)
        try:
            model = factory(**self.kwargs)
        except Exception as exc:  # a user's factory may raise anything; say which and why in one line
            raise QualityNetError(f"model factory {self.factory!r} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(model, nn.Module):
            raise QualityNetError(f"model factory {self.factory!r} returned {type(model).__name__}, not a "
                                  "torch.nn.Module")
        return model

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints and artifact records."""
        return {"name": self.name, "factory": self.factory, "kwargs": dict(self.kwargs), "output": self.output}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Inverse of :meth:`to_dict`."""
        return cls(str(data["name"]), str(data["factory"]), dict(data.get("kwargs") or {}),
                   str(data.get("output", "unit")))


def register_model(fn: F | None = None, *, name: str | None = None, output: str = "unit",
                   **kwargs: Any) -> Any:
    """Register a model factory under ``name`` (default: the function's name), timm-style.

    Usable bare (``@register_model``) or with arguments
    (``@register_model(name="my_iqa", output="mos", width=32)``: ``kwargs`` become the
    entry's default factory arguments). The function is returned unchanged.

    Raises:
        QualityNetError: the function cannot be imported back by reference (a lambda, a
            nested function, or defined in ``__main__``).
    """
    def decorate(factory: F) -> F:
        register_spec(ModelSpec(name or factory.__name__, factory_reference(factory), kwargs, output))
        return factory

    return decorate(fn) if fn is not None else decorate


def register_spec(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry under ``spec.name`` (replacing an entry of that name)."""
    _REGISTRY[spec.name] = spec
    return spec


def list_models() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """A registered spec by name, or a spec for a ``module:function`` reference.

    Raises:
        QualityNetError: neither a registered name nor a reference.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        registered = [spec for spec in _REGISTRY.values() if spec.factory == name]
        if registered:
            return registered[0]
        resolve_factory(name)
        return ModelSpec(name.rpartition(":")[2].rpartition(".")[2], name)
    raise QualityNetError(f"unknown model {name!r}: register it with @register_model, or pass a "
                          f"'package.module:function' factory; registered: {', '.join(list_models())}")


def factory_reference(factory: Callable[..., Any]) -> str:
    """The ``module:qualname`` string that imports ``factory`` back in another process.

    Raises:
        QualityNetError: ``factory`` is a lambda, a nested function or defined in ``__main__``.
    """
    module, qualname = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise QualityNetError(
            f"model factory {qualname or factory!r} (module {module}) cannot be imported back by export or "
            "benchmarks: define it at the top level of an importable module (not __main__, not a lambda)")
    return f"{module}:{qualname}"


def resolve_factory(reference: str) -> ModelFactory:
    """Import ``"package.module:function"`` (the attribute may be dotted).

    Raises:
        QualityNetError: malformed, the module cannot be imported, or it lacks the attribute.
    """
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise QualityNetError(f"model factory {reference!r} is not 'package.module:function'")
    hint = "install the package that defines it or put its folder on PYTHONPATH"
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the user's module raises while importing
        raise QualityNetError(f"model factory {reference!r} cannot be imported ({type(exc).__name__}: {exc}); "
                              f"{hint}") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise QualityNetError(f"model factory {reference!r}: module {module_name!r} has no {attribute!r}; {hint}")
        target = getattr(target, part)
    if not callable(target):
        raise QualityNetError(f"model factory {reference!r} is a {type(target).__name__}, not callable")
    return target  # type: ignore[no-any-return]


def _check_plain(value: Any, what: str) -> None:
    """Refuse values ``torch.load(weights_only=True)`` would not read back."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise QualityNetError(f"{what} keys must be strings, got {key!r}")
            _check_plain(item, what)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, what)
    elif not isinstance(value, (str, int, float, bool, type(None))):
        raise QualityNetError(f"{what} {value!r} is a {type(value).__name__}; only plain values "
                              "(str, int, float, bool, None, lists and dicts of them) can be stored")
