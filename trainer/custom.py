"""Your own IQA network through export, INT8, ``iqa-run`` and the benchmarks.

A user's ``nn.Module`` takes a normalised image batch ``(N, 3, H, W)`` (the
:class:`~qualitynet.artifact.PreprocessCfg` it is saved with says how images become that
batch) and returns one score per image, ``(N,)`` or ``(N, 1)``, either on the unit scale
of the checkpoint's :class:`~qualitynet.artifact.ScoreScale` or on the MOS scale itself.
:func:`save_custom_checkpoint` writes it as a normal checkpoint whose model entry is a
:class:`~qualitynet.trainer.registry.ModelSpec` (its factory reference and arguments);
:class:`ScoreOutput` is what every tool then runs: the rebuilt network with its output
brought to the toolkit's contract, unit scale ``(N, 1)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qualitynet.artifact import PreprocessCfg, ScoreScale
from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import Checkpoint, save_checkpoint
from qualitynet.trainer.registry import ModelSpec, factory_reference, get_spec

__all__ = ["ScoreOutput", "save_custom_checkpoint"]


class ScoreOutput(nn.Module):
    """A user's network with its scores as unit-scale ``(N, 1)`` (then the MOS mapping, if any).

    Building it runs one batch of two blank inputs through the network and refuses any
    output that is not one score per image.
    """

    def __init__(self, model: nn.Module, spec: ModelSpec, scale: ScoreScale, preprocess: PreprocessCfg,
                 mapping: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.from_mos = spec.output == "mos"
        self.low, self.width = scale.low, scale.high - scale.low
        self.mos_mapping = mapping if mapping is not None else nn.Identity()
        _check_output_shape(model, spec, preprocess)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.model(x)
        if score.dim() == 1:
            score = score.unsqueeze(1)
        if self.from_mos:
            score = (score - self.low) / self.width
        return self.mos_mapping(score)  # type: ignore[no-any-return]


def _check_output_shape(model: nn.Module, spec: ModelSpec, preprocess: PreprocessCfg) -> None:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, 3, preprocess.height, preprocess.width))
    except Exception as exc:  # a user's network may raise anything
        raise QualityNetError(f"model {spec.name!r} ({spec.factory}) fails on a (2, 3, {preprocess.height}, "
                              f"{preprocess.width}) batch: {type(exc).__name__}: {str(exc).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape not in ((2,), (2, 1)):
        raise QualityNetError(f"model {spec.name!r} ({spec.factory}) returns {shape} for a batch of 2 images; "
                              "an IQA model must return one score per image, shape (N,) or (N, 1)")


def save_custom_checkpoint(path: str | Path, model: nn.Module, factory: str | Callable[..., nn.Module],
                           preprocess: PreprocessCfg, score_scale: ScoreScale, *,
                           kwargs: Mapping[str, Any] | None = None, output: str | None = None,
                           name: str | None = None, dataset: str = "", metrics: dict[str, float] | None = None
                           ) -> Path:
    """Write a user's trained network as a checkpoint that ``iqa-export``, ``iqa-eval`` and ``iqa-bench`` take.

    Only ``model``'s weights are stored; the architecture is rebuilt by calling
    ``factory(**kwargs)``, so the factory must be importable wherever the checkpoint is
    used. Before writing, the factory is rebuilt, the weights loaded into it and one
    batch run, so a checkpoint that would fail at export is refused here.

    Args:
        path: where to write (e.g. ``runs/mine/model.pt``; missing folders are made).
        model: the trained network: ``(N, 3, H, W)`` normalised as ``preprocess`` says ->
            ``(N,)`` or ``(N, 1)``.
        factory: a function decorated with :func:`~qualitynet.trainer.registry.register_model`,
            its registered name, a ``"package.module:function"`` string, or any top-level
            importable function returning the (untrained) network.
        preprocess: how images become the network's input (size, mean/std, view, decode).
        score_scale: the MOS range of the training data (``ScoreScale(1, 5, "KonIQ MOS")``).
        kwargs: the factory's keyword arguments (plain values); default: the registered ones.
        output: ``unit`` (the network predicts ``(mos - low) / (high - low)``) or ``mos``;
            default: the registered one, else ``unit``.
        name: name in records and reports; default: the registered or function name.
        dataset / metrics: what it was trained and measured on, kept in the checkpoint.

    Returns:
        ``path``.

    Raises:
        QualityNetError: the factory cannot be imported back, its arguments are not plain
            values, the weights do not fit, or the output is not one score per image.
    """
    spec = get_spec(factory if isinstance(factory, str) else factory_reference(factory))
    spec = ModelSpec(name or spec.name, spec.factory, spec.kwargs if kwargs is None else kwargs,
                     output or spec.output)
    checkpoint = Checkpoint(spec, {k: v.detach().cpu() for k, v in model.state_dict().items()}, preprocess,
                            score_scale, dataset, metrics or {})
    preprocess.validate(f"{path}: preprocess", None)
    if not score_scale.high > score_scale.low:
        raise QualityNetError(f"{path}: score scale {score_scale.low}..{score_scale.high} must run from low to high")
    checkpoint.build_model()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, checkpoint)
    return path
