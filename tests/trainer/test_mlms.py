"""The multi-level, multi-scale Swin model: shapes, the frozen part's cache, training by iqa-train's loop, configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from mlms_test_config import MLMS_TEST
from torchvision.models.swin_transformer import ShiftedWindowAttention

from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.cli import train_command
from qualitynet.trainer.datasets import load_dataset
from qualitynet.trainer.frozen import cache_pooled_features
from qualitynet.trainer.mlms import MLMS_CONFIGS, MlmsConfig, MlmsIqa, Upsample, create_mlms
from qualitynet.trainer.registry import get_spec
from qualitynet.trainer.swin import FixedGridWindowAttention
from qualitynet.trainer.torch_data import IqaDataset
from qualitynet.trainer.train import TrainSettings, train


def test_shapes_levels_and_shifted_windows() -> None:
    torch.manual_seed(0)
    model = create_mlms(MLMS_TEST.name).eval()
    assert model.levels.shapes == [(40, 6), (112, 6), (320, 3)]  # block2 averaged 12 -> 6, block6 stays 3
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        score = model(x)
        flat = model.forward_pooled(x)
        tokens = [scale(model.fusion(model.levels(x))) for scale in model.scales]
    assert score.shape == (3, 1) and flat.shape == (3, 40 * 36 + 112 * 36 + 320 * 9)
    assert [t.shape[1:] for t in tokens] == [(36, 16), (9, 16)]  # 6x6 and 3x3 positions of 16 channels
    with torch.no_grad():
        assert torch.allclose(model.forward_from_pooled(flat), score, atol=1e-6)
    shifts = [block.attn.shift_size for block in model.scales[0].blocks]
    assert shifts == [[0, 0], [1, 1]]  # W-MSA then SW-MSA
    assert len(model.head.regressors) == 2


@pytest.mark.parametrize(("grid", "window", "shift"), [(6, 3, 1), (3, 3, 1), (14, 7, 3)])
def test_fixed_grid_attention_is_torchvisions(grid: int, window: int, shift: int) -> None:
    torch.manual_seed(0)
    ours = FixedGridWindowAttention(16, [window, window], [shift, shift], 2, grid=grid).eval()
    theirs = ShiftedWindowAttention(16, [window, window], [shift, shift], 2).eval()
    theirs.load_state_dict(ours.state_dict())  # the same parameters and relative-position index
    x = torch.randn(3, grid, grid, 16)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    assert ours.shift == (0 if window >= grid else shift)


def test_upsample_is_nearest_interpolation() -> None:
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(Upsample(2, 4, 3)(x), torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))


def test_the_score_is_the_weighted_mean_of_the_positions_scores() -> None:
    torch.manual_seed(0)
    head = create_mlms(MLMS_TEST.name).head.eval()
    tokens = torch.randn(2, 45, 16)
    with torch.no_grad():
        scores, weights = head.position_scores(tokens)
        expected = (scores * weights).sum(1) / weights.sum(1)
        assert torch.allclose(head(tokens), expected, atol=1e-5)
        assert ((weights > 0) & (weights < 1)).all() and scores.std() > 0


def test_the_configs_are_registry_entries_and_build() -> None:
    assert get_spec("mlms-lite").factory == "qualitynet.trainer.mlms:mlms_from_config"
    model = get_spec("mlms").build().eval()  # the paper's: ResNet-50 levels layer2/3/4 fused on a 28x28 grid
    assert model.levels.shapes == [(512, 28), (1024, 14), (2048, 7)]
    assert [len(scale.blocks) for scale in model.scales] == [2, 4, 2]
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1)
    with pytest.raises(QualityNetError, match="do not divide the grid"):
        MlmsConfig("bad", "efficientnet_lite0", ("block2",), grid=14, patches=(3,), depths=(1,))
    with pytest.raises(QualityNetError, match="by a whole factor"):
        MlmsIqa(MlmsConfig("odd", "efficientnet_lite0", ("block2",), image_size=96, grid=5, patches=(1,),
                           depths=(1,), window=5))
    assert set(MLMS_CONFIGS) >= {"mlms", "mlms-lite", MLMS_TEST.name}


def test_cached_level_maps_score_like_the_whole_model(demo_dataset: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    torch.manual_seed(0)
    model = create_mlms(MLMS_TEST.name, pretrained=True)
    preprocess = MLMS_TEST.preprocess()
    dataset = IqaDataset(index, range(6), preprocess, index.score_scale, flip=True)
    images = torch.stack([IqaDataset(index, range(6), preprocess, index.score_scale)[i][0] for i in range(6)])
    head, cached = cache_pooled_features(model, {"train": dataset}, 4, "cpu", 0, quiet=True)
    features = cached["train"].features  # type: ignore[attr-defined]
    assert features.shape == (6, 2, 40 * 36 + 112 * 36 + 320 * 9)  # the maps, not pooled vectors; and the flip
    head.eval()
    with torch.no_grad():
        assert torch.allclose(head(features[:, 0]), model(images), atol=1e-5)
        assert torch.allclose(head(features[:, 1]), model(images.flip(-1)), atol=1e-5)
    head.train()
    assert not model.levels.training and model.head.training


def test_frozen_training_trains_all_but_the_backbone(mlms_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(mlms_checkpoint)
    assert checkpoint.spec.name == MLMS_TEST.name and checkpoint.mos_mapping.kind != "identity"
    fresh = create_mlms(MLMS_TEST.name, pretrained=True).state_dict()
    trained = checkpoint.state_dict
    backbone = [k for k in fresh if k.startswith("levels.") and not k.endswith("num_batches_tracked")]
    assert backbone and all(torch.equal(fresh[k], trained[k]) for k in backbone)
    for key in ("fusion.projections.0.weight", "scales.0.blocks.1.attn.qkv.weight", "head.weight.2.weight"):
        assert not torch.allclose(fresh[key], trained[key])  # trained (fresh weights are seeded differently too)
    metrics = json.loads((mlms_checkpoint.parent / "metrics.json").read_text())
    assert metrics["n"] > 0 and metrics["srocc"] is not None and metrics["best_epoch"] >= 1
    history = (mlms_checkpoint.parent / "history.csv").read_text().splitlines()
    assert len(history) >= 3  # header and at least two epochs


def test_resume_continues_an_mlms_run(mlms_checkpoint: Path, demo_dataset: Path, tmp_path: Path) -> None:
    last = mlms_checkpoint.parent / "last.pt"
    done = load_checkpoint(last).train_state["epoch"]  # type: ignore[index]
    settings = TrainSettings(epochs=done + 1, batch_size=8, lr=1e-3, workers=0, quiet=True, device="cpu",
                             pretrained=True, freeze_backbones=True, max_steps=1)
    result = train(load_dataset("csv", csv_path=demo_dataset), tmp_path, settings, resume=last)
    assert result.epochs_run == done + 1 and load_checkpoint(tmp_path / "last.pt").spec.name == MLMS_TEST.name


def test_paper_config_offline_says_how_to_get_the_weights(demo_dataset: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no weights copied in
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # the download fails as offline
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--csv", str(demo_dataset), "--config", "mlms",
                                                "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if not line.startswith("Downloading:")]  # torch.hub's
    assert line.startswith("Error: cannot load ImageNet weights for resnet50") and "offline" in line
    assert "$TORCH_HOME/hub/checkpoints" in line
    assert not (tmp_path / "run" / "model.pt").exists()
