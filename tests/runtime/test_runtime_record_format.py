"""Records stay readable by the runtimes that predate the view and decode keys.

A record of the paper's view and a full decode is written exactly as before those keys
existed (format /1, no new keys), so an older runtime reads it; a record that needs the new
keys says format /2, which an older runtime refuses at its format check instead of ignoring
the view. The older runtime here is the real one: ``qualitynet/artifact.py`` as it was
before the keys were added, read from the repository's history.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from qualitynet.artifact import ARTIFACT_FORMAT, ARTIFACT_FORMAT_V1, FIVE_CROPS, ArtifactMeta, PreprocessCfg, ScoreScale
from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
BEFORE_VIEW_KEYS = "7513f0a^"  # the commit that added view and decode to PreprocessCfg, and its parent
NEW_KEYS = {"view", "crops", "short_side", "decode", "decode_side"}
CROPS_DCT = PreprocessCfg().with_view("crops", FIVE_CROPS, 768).with_decode("dct")


@pytest.fixture(scope="module")
def old_artifact(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    """The artifact module of the toolkit before the view and decode keys (a runtime of that time)."""
    try:
        source = subprocess.run(["git", "-C", str(REPO), "show", f"{BEFORE_VIEW_KEYS}:qualitynet/artifact.py"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("the repository's history is not here (a clone without it cannot show the older module)")
    path = tmp_path_factory.mktemp("old") / "old_artifact.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_artifact", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_artifact"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_a_default_record_is_written_as_before_the_new_keys() -> None:
    record = ArtifactMeta("lite", PreprocessCfg(), ScoreScale(1, 5, "mos")).to_dict()
    assert record["format"] == ARTIFACT_FORMAT_V1 and not NEW_KEYS & set(record["preprocess"])
    again = ArtifactMeta.from_dict(record)
    assert again.preprocess == PreprocessCfg() and again.to_dict() == record


def test_an_older_runtime_reads_a_default_record_and_refuses_a_crops_record(old_artifact: ModuleType) -> None:
    default = ArtifactMeta("lite", PreprocessCfg(height=96, width=128), ScoreScale(1, 5, "mos"))
    old = old_artifact.ArtifactMeta.from_json(default.to_json())
    assert dataclasses.asdict(old.preprocess) == default.preprocess.to_dict()
    crops = ArtifactMeta("lite", CROPS_DCT, ScoreScale(1, 5, "mos"))
    assert crops.to_dict()["format"] == ARTIFACT_FORMAT
    with pytest.raises(old_artifact.QualityNetError, match="qualitynet-artifact/2"):
        old_artifact.ArtifactMeta.from_json(crops.to_json(), "model.onnx")
    assert ArtifactMeta.from_json(crops.to_json()).preprocess == CROPS_DCT


def test_records_written_between_the_formats_and_unknown_formats(tmp_path: Path) -> None:
    between = ArtifactMeta("lite", CROPS_DCT, ScoreScale()).to_dict() | {"format": ARTIFACT_FORMAT_V1}
    assert ArtifactMeta.from_dict(between).preprocess == CROPS_DCT  # /1 with every key, as written for a while
    with pytest.raises(QualityNetError, match="'qualitynet-artifact/3' is newer than this toolkit reads.*upgrade"):
        ArtifactMeta.from_dict(between | {"format": "qualitynet-artifact/3"}, "model.onnx")
    with pytest.raises(QualityNetError, match="not a QualityNet artifact record"):
        ArtifactMeta.from_dict(between | {"format": "other/1"}, "model.onnx")


def test_a_default_checkpoint_stores_no_new_keys(tiny_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    save_checkpoint(tmp_path / "default.pt", checkpoint)
    assert not NEW_KEYS & set(torch.load(tmp_path / "default.pt", weights_only=True)["preprocess"])
    crops = dataclasses.replace(checkpoint, preprocess=checkpoint.preprocess.with_view("crops", ("center",)))
    save_checkpoint(tmp_path / "crops.pt", crops)
    assert load_checkpoint(tmp_path / "crops.pt").preprocess == crops.preprocess
