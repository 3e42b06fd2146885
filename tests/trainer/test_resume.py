"""Resume: a run stopped after epoch k and resumed ends exactly where an unstopped run ends."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import load_checkpoint, save_checkpoint
from qualitynet.trainer.datasets import DatasetIndex, Split, load_dataset
from qualitynet.trainer.rng import restore_rng_state, rng_state
from qualitynet.trainer.train import TrainSettings, train

# Few steps, but every random source in play: shuffle, flips (no workers: global RNG) and dropout.
TINY = TrainSettings(config="tiny", batch_size=8, lr=1e-3, workers=0, quiet=True, max_steps=2, device="cpu")


@pytest.fixture(scope="module")
def index(demo_dataset: Path) -> DatasetIndex:
    return load_dataset("csv", csv_path=demo_dataset)


@pytest.fixture(scope="module")
def unstopped(index: DatasetIndex, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("unstopped")
    train(index, out, replace(TINY, epochs=2))
    return out


@pytest.fixture(scope="module")
def stopped(index: DatasetIndex, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run, stopped after its first epoch."""
    out = tmp_path_factory.mktemp("stopped")
    train(index, out, replace(TINY, epochs=1))
    return out


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_resumed_run_ends_with_the_unstopped_runs_weights(index: DatasetIndex, unstopped: Path, stopped: Path,
                                                          tmp_path: Path) -> None:
    # Resumed into another folder, without naming the config: both come from the stopped run.
    settings = replace(TINY, epochs=2, config=None)
    result = train(index, tmp_path, settings, resume=stopped / "last.pt")
    assert result.epochs_run == 2
    assert Split.load(tmp_path / "split.json") == Split.load(stopped / "split.json")
    _assert_same_weights(tmp_path / "last.pt", unstopped / "last.pt")  # bit for bit
    _assert_same_weights(tmp_path / "model.pt", unstopped / "model.pt")
    resumed, reference = (load_checkpoint(p / "last.pt").train_state for p in (tmp_path, unstopped))
    assert resumed is not None and reference is not None
    np.testing.assert_equal(resumed["history"], reference["history"])  # NaN-aware


def test_last_pt_holds_every_rng_state_as_plain_data(stopped: Path) -> None:
    raw = torch.load(stopped / "last.pt", weights_only=True)
    assert {"torch", "loader", "python", "numpy"} <= raw["train_state"]["rng"].keys()


def test_rng_state_round_trip() -> None:
    generator = torch.Generator().manual_seed(3)
    state = rng_state(generator)

    def draw() -> tuple[object, ...]:
        return (torch.rand(3), torch.rand(3, generator=generator), random.random(), np.random.rand(3),
                np.random.randn())

    first = draw()
    restore_rng_state(state, generator)
    second = draw()
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_resume_without_improvement_keeps_model_pt(index: DatasetIndex, stopped: Path, tmp_path: Path) -> None:
    # A stopped run whose best validation loss cannot be beaten (the loss is never negative).
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.pt", "split.json"):
        (run / name).write_bytes((stopped / name).read_bytes())
    last = load_checkpoint(stopped / "last.pt")
    assert last.train_state is not None
    last.train_state["best_loss"] = 0.0
    save_checkpoint(run / "last.pt", last)
    result = train(index, tmp_path / "next", replace(TINY, epochs=2), resume=run / "last.pt")
    assert (result.best_epoch, result.epochs_run) == (1, 2)
    _assert_same_weights(tmp_path / "next" / "model.pt", stopped / "model.pt")
    assert "test_srocc" in load_checkpoint(tmp_path / "next" / "model.pt").metrics


def test_resume_needs_the_runs_best_model(index: DatasetIndex, stopped: Path, tmp_path: Path) -> None:
    for name in ("last.pt", "split.json"):
        (tmp_path / name).write_bytes((stopped / name).read_bytes())
    with pytest.raises(QualityNetError, match="model.pt: missing; resuming needs the run's best model"):
        train(index, tmp_path / "next", replace(TINY, epochs=2), resume=tmp_path / "last.pt")
