"""Checkpoint format: plain weights_only data, refused clearly when it is anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.model import create_model


def test_round_trip_is_weights_only(tiny_checkpoint: Path) -> None:
    raw = torch.load(tiny_checkpoint, weights_only=True)
    assert raw["format"] == "qualitynet-checkpoint/1"
    checkpoint = load_checkpoint(tiny_checkpoint)
    assert checkpoint.model_config.name == "tiny"
    assert (checkpoint.preprocess.height, checkpoint.score_scale.high) == (96, 5.0)
    assert set(checkpoint.versions) >= {"qualitynet", "torch", "torchvision"}
    model = checkpoint.build_model()
    assert not model.training
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, raw["state_dict"][name])


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this would run on load",))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": "qualitynet-checkpoint/1", "x": _Payload()}, path)
    with pytest.raises(QualityNetError, match="refused, the file holds pickled Python objects"):
        load_checkpoint(path)


def test_whole_module_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    torch.save(create_model("tiny"), path)
    with pytest.raises(QualityNetError, match="pickled Python objects"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"garbage" * 10])
def test_corrupt_file_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(QualityNetError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_truncated_checkpoint_is_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "half.pt"
    path.write_bytes(tiny_checkpoint.read_bytes()[: tiny_checkpoint.stat().st_size // 2])
    with pytest.raises(QualityNetError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_other_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save(create_model("tiny").state_dict(), path)
    with pytest.raises(QualityNetError, match="not a QualityNet checkpoint"):
        load_checkpoint(path)
    with pytest.raises(QualityNetError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
