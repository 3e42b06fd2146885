"""The frozen-backbone fast path: cached pooled features give exactly the model's scores, and only the head trains."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.datasets import Split, load_dataset
from qualitynet.trainer.frozen import SharedFeatures, cache_pooled_features
from qualitynet.trainer.model import calibrate_batchnorm, create_model, get_config
from qualitynet.trainer.torch_data import IqaDataset
from qualitynet.trainer.train import TrainSettings, train


def test_cached_features_score_like_the_whole_model_flipped_view_included(demo_dataset: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    torch.manual_seed(0)
    model = create_model("tiny")
    preprocess = model.config.preprocess()
    dataset = IqaDataset(index, range(12), preprocess, index.score_scale, flip=True)
    images = torch.stack([IqaDataset(index, range(12), preprocess, index.score_scale)[i][0] for i in range(12)])
    calibrate_batchnorm(model, images)
    head, cached = cache_pooled_features(model, {"train": dataset}, 5, "cpu", 0, quiet=True)
    head.eval()
    features = cached["train"].features  # type: ignore[attr-defined]
    assert features.shape == (12, 2, sum(stream.channels for stream in model.streams))
    with torch.no_grad():
        assert torch.allclose(head(features[:, 0]), model(images), atol=1e-5)
        assert torch.allclose(head(features[:, 1]), model(images.flip(-1)), atol=1e-5)
    head.train()
    assert not any(stream.features.training for stream in model.streams)


def test_frozen_training_changes_only_attention_and_head(demo_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    settings = TrainSettings(config="tiny", epochs=3, batch_size=8, lr=1e-3, workers=0, quiet=True,
                             freeze_backbones=True)
    torch.manual_seed(settings.seed)
    initial = create_model("tiny").state_dict()
    result = train(index, tmp_path, settings)
    trained = load_checkpoint(tmp_path / "model.pt")
    backbone = [k for k in initial if ".features." in k and not k.endswith("num_batches_tracked")]
    assert backbone and all(torch.equal(initial[k], trained.state_dict[k]) for k in backbone)
    assert not torch.equal(initial["output.weight"], trained.state_dict["output.weight"])
    assert result.epochs_run >= 1 and "srocc" in result.test_metrics and "srocc" in result.raw_test_metrics
    assert Split.load(tmp_path / "split.json").val  # the mapping was fitted on a real validation split


def test_shared_features_train_the_same_head_as_each_runs_own_pass(demo_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    settings = TrainSettings(config="tiny", epochs=2, batch_size=8, lr=1e-3, workers=0, quiet=True,
                             freeze_backbones=True)
    own = train(index, tmp_path / "own", settings)
    shared = SharedFeatures(index, settings.preprocess(get_config("tiny")))
    with shared.serving():
        served = train(index, tmp_path / "shared", settings)
        first_pass = shared.features
        again = train(index, tmp_path / "again", replace(settings, seed=1))
    assert first_pass is not None and first_pass.shape[:2] == (len(index), 2)  # every image and its flip
    assert shared.features is first_pass and again.epochs_run >= 1  # the second run reused the pass
    expected, got = (load_checkpoint(tmp_path / run / "model.pt").state_dict for run in ("own", "shared"))
    assert all(torch.allclose(expected[k].float(), got[k].float(), atol=1e-5) for k in expected)
    assert abs(own.test_metrics["srocc"] - served.test_metrics["srocc"]) < 1e-6
    from qualitynet.trainer import frozen
    assert frozen.cache_pooled_features is cache_pooled_features  # restored after the block
    unflipped = SharedFeatures(index, shared.preprocess, first_pass[:, :1])  # features given without flips
    with unflipped.serving():
        assert train(index, tmp_path / "unflipped", replace(settings, epochs=1)).epochs_run == 1
    other_view = SharedFeatures(index, shared.preprocess.with_view("crops", ("center",), 0), first_pass)
    with other_view.serving(), pytest.raises(QualityNetError, match="shared features are of"):
        train(index, tmp_path / "other", settings)  # features of another view are refused, not served
