"""Your own network as a checkpoint: the registry, save_custom_checkpoint and its refusals."""

from __future__ import annotations

from pathlib import Path

import custom_iqa
import pytest
import torch
from torch import nn

from qualitynet.artifact import PreprocessCfg, ScoreScale
from qualitynet.errors import QualityNetError
from qualitynet.trainer import save_custom_checkpoint
from qualitynet.trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from qualitynet.trainer.datasets import load_dataset
from qualitynet.trainer.model import MODEL_CONFIGS, QualityNet
from qualitynet.trainer.registry import ModelSpec, get_spec, list_models
from qualitynet.trainer.train import TrainSettings, train

PRE = PreprocessCfg(height=48, width=48)
KONIQ = ScoreScale(1.0, 5.0, "MOS 1-5")


def test_registry_holds_quality_net_configs_and_user_models() -> None:
    assert set(MODEL_CONFIGS) | {"tiny_iqa", "tiny_iqa_mos"} <= set(list_models())
    assert get_spec("lite") == MODEL_CONFIGS["lite"].spec()
    assert get_spec("tiny_iqa") == ModelSpec("tiny_iqa", "custom_iqa:tiny_iqa")
    assert get_spec("custom_iqa:tiny_iqa_mos") == ModelSpec("tiny_iqa_mos", "custom_iqa:tiny_iqa_mos", {"width": 4},
                                                            "mos")
    with pytest.raises(QualityNetError, match="unknown model 'nope'.*registered: .*tiny_iqa"):
        get_spec("nope")


def test_quality_net_checkpoints_rebuild_through_the_registry_unchanged(tiny_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(tiny_checkpoint)
    model = checkpoint.build_model()
    assert isinstance(model, QualityNet)
    assert checkpoint.spec.factory == "qualitynet.trainer.model:qualitynet_from_config"
    assert "factory" not in torch.load(tiny_checkpoint, weights_only=True)["model_config"]  # format unchanged


def test_saved_model_scores_as_the_original_on_the_unit_scale(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = custom_iqa.tiny_iqa(width=6)
    path = save_custom_checkpoint(tmp_path / "mine.pt", net, custom_iqa.tiny_iqa, PRE, KONIQ, kwargs={"width": 6})
    checkpoint = load_checkpoint(path)
    assert checkpoint.model_config == ModelSpec("tiny_iqa", "custom_iqa:tiny_iqa", {"width": 6})
    model = checkpoint.build_model()
    x = torch.randn(3, 3, 48, 48)
    with torch.no_grad():
        assert torch.equal(model(x), net.eval()(x)[:, None])


def test_mos_output_is_brought_to_the_unit_scale(tmp_path: Path) -> None:
    net = custom_iqa.tiny_iqa_mos(width=4)
    path = save_custom_checkpoint(tmp_path / "mos.pt", net, "tiny_iqa_mos", PRE, KONIQ)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        unit = load_checkpoint(path).build_model()(x)
        assert torch.allclose(KONIQ.to_mos(unit), net.eval()(x)[:, None])


def test_wrong_output_shape_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(QualityNetError, match=r"returns \(2, 3\) for a batch of 2 images; .*shape \(N,\) or \(N, 1\)"):
        save_custom_checkpoint(tmp_path / "bad.pt", custom_iqa.three_scores(), custom_iqa.three_scores, PRE, KONIQ)
    assert not (tmp_path / "bad.pt").exists()


def test_factories_that_cannot_be_imported_back_are_refused(tmp_path: Path) -> None:
    net = custom_iqa.tiny_iqa()
    with pytest.raises(QualityNetError, match="cannot be imported back .*top level of an importable module"):
        save_custom_checkpoint(tmp_path / "m.pt", net, lambda: custom_iqa.TinyIqa(), PRE, KONIQ)
    with pytest.raises(QualityNetError, match="'no_such_pkg:net' cannot be imported .*ModuleNotFoundError.*PYTHONPATH"):
        save_custom_checkpoint(tmp_path / "m.pt", net, "no_such_pkg:net", PRE, KONIQ)
    with pytest.raises(QualityNetError, match="weights do not fit .*size mismatch"):
        save_custom_checkpoint(tmp_path / "m.pt", net, "tiny_iqa", PRE, KONIQ, kwargs={"width": 5})
    with pytest.raises(QualityNetError, match="only plain values"):
        save_custom_checkpoint(tmp_path / "m.pt", net, "tiny_iqa", PRE, KONIQ, kwargs={"width": nn.ReLU()})


def test_checkpoint_whose_factory_is_gone_is_refused_at_load(tmp_path: Path) -> None:
    net = custom_iqa.tiny_iqa()
    spec = ModelSpec("gone", "custom_iqa_removed:tiny_iqa")
    save_checkpoint(tmp_path / "gone.pt", Checkpoint(spec, net.state_dict(), PRE, KONIQ))
    with pytest.raises(QualityNetError) as info:
        load_checkpoint(tmp_path / "gone.pt")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'gone.pt'}: model factory 'custom_iqa_removed:tiny_iqa' cannot be "
                              "imported") and "\n" not in message


def test_iqa_train_refuses_to_resume_a_custom_checkpoint(demo_dataset: Path, tmp_path: Path) -> None:
    path = save_custom_checkpoint(tmp_path / "mine.pt", custom_iqa.tiny_iqa(), "tiny_iqa", PRE, KONIQ)
    settings = TrainSettings(batch_size=8, workers=0, quiet=True, max_steps=1, device="cpu")
    with pytest.raises(QualityNetError, match=r"mine.pt: holds your own network \(custom_iqa:tiny_iqa\); iqa-train "
                                              "trains QualityNet and the multi-level multi-scale configurations"):
        train(load_dataset("csv", csv_path=demo_dataset), tmp_path / "run", settings, resume=path)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_damaged_model_entry_is_refused_naming_the_file(tmp_path: Path) -> None:
    spec = {"name": "mine", "factory": "custom_iqa:tiny_iqa", "kwargs": {}, "output": "percent"}
    save_checkpoint(tmp_path / "bad.pt", Checkpoint(get_spec("tiny_iqa"), custom_iqa.tiny_iqa().state_dict(), PRE,
                                                    KONIQ))
    payload = torch.load(tmp_path / "bad.pt", weights_only=True)
    torch.save({**payload, "model_config": spec}, tmp_path / "bad.pt")
    with pytest.raises(QualityNetError, match=r"bad.pt: model 'mine': output 'percent' is not one of unit, mos"):
        load_checkpoint(tmp_path / "bad.pt")
