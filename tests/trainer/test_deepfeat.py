"""Deep features + Gaussian-process regression: the kernel graph, the fit, and the iqa-train run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from deepfeat_test_config import DEEPFEAT_TEST

from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.cli import train_command
from qualitynet.trainer.datasets import load_dataset
from qualitynet.trainer.deepfeat import DeepFeatGpr, deepfeat_gpr, pooled_layers
from qualitynet.trainer.evaluate import evaluate_checkpoint
from qualitynet.trainer.gpr import fit_gpr, gpr_kernel
from qualitynet.trainer.train import TrainSettings, train


def test_matern_graph_equals_scikit_learns_predictive_mean() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 24)) * rng.uniform(0.1, 10, 24) + rng.normal(size=24) * 5
    standard = (x - x.mean(axis=0)) / x.std(axis=0)
    y = np.tanh(standard.sum(axis=1) / 5) + rng.normal(0, 0.05, 60)
    fit = fit_gpr(x[:40], y[:40])
    z = (x - fit.center) * fit.inv_scale * fit.process.kernel_.k1.k2.length_scale  # standardised, as fitted
    theirs = fit.process.predict(z) * y[:40].std() + y[:40].mean()  # scikit-learn's own mean, original scale
    with torch.no_grad():
        exact = fit.regressor(torch.float64)(torch.from_numpy(x)).numpy()  # the graph's formula in float64
        ours = fit.regressor()(torch.from_numpy(x.astype(np.float32))).double().numpy()
    assert np.abs(exact - theirs).max() < 1e-6
    assert np.abs(ours - theirs).max() < 1e-3  # float32, as exported
    assert np.corrcoef(theirs[40:], y[40:])[0, 1] > 0.5  # it learned something that holds on unseen points


def test_hyper_parameters_come_from_the_marginal_likelihood() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    smooth, noisy = fit_gpr(x, np.sin(x[:, 0])), fit_gpr(x, np.sin(x[:, 0]) + rng.normal(0, 1, 50))
    noise_level = [f.process.kernel_.k2.noise_level for f in (smooth, noisy)]
    assert noise_level[0] < 1e-3 and noise_level[1] > 0.3  # on standardised targets: the noise is found
    for fit in (smooth, noisy):  # the fitted kernel beats its starting point
        start = fit.process.log_marginal_likelihood(gpr_kernel(4).theta)
        assert fit.log_marginal_likelihood > start
    with pytest.raises(QualityNetError, match="at least 3 training images"):
        fit_gpr(x[:2], np.zeros(2))


def test_hyper_parameters_of_a_large_set_are_tuned_on_a_subset_and_every_point_is_kept() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(60, 3))
    y = np.sin(x[:, 0]) + rng.normal(0, 0.1, 60)
    whole, part = fit_gpr(x, y), fit_gpr(x, y, tune_points=30)
    assert part.points.shape == whole.points.shape == (60, 3)  # the process is conditioned on every point
    assert part.kernel != whole.kernel  # the hyper-parameters come from the 30-point subset
    assert part.log_marginal_likelihood <= whole.log_marginal_likelihood + 1e-6  # the full-set optimum is higher


def test_model_scores_each_image_and_its_flip() -> None:
    torch.manual_seed(0)
    model = deepfeat_gpr("efficientnet_lite0", "head", train_points=7).eval()
    with torch.no_grad():
        for name in ("points_t", "weights", "inv_scale"):
            getattr(model.regressor, name).normal_().abs_()
        model.regressor.inv_scale.mul_(0.01)
        x = torch.randn(3, 3, 64, 64)
        views = model.views(x)
        assert views.shape == (3, 2, 1280) and model(x).shape == (3, 1)
        expected = (model.regressor(model.features(x)) + model.regressor(model.features(x.flip(-1)))) / 2
        assert torch.allclose(model(x)[:, 0], expected, atol=1e-5)
        single = DeepFeatGpr(model.features, model.regressor, flips=False)
        assert single.views(x).shape == (3, 1, 1280)
    with pytest.raises(QualityNetError, match="layers \\['pool5'\\] are not among stem, block0"):
        pooled_layers("efficientnet_lite0", ("pool5",))
    with pytest.raises(QualityNetError, match="has 1280 channels, not 320"):
        deepfeat_gpr("efficientnet_lite0", "head", 3, features=320)


def test_fit_run_writes_an_ordinary_checkpoint(deepfeat_checkpoint: Path) -> None:
    run = deepfeat_checkpoint.parent
    checkpoint = load_checkpoint(deepfeat_checkpoint)
    spec = checkpoint.spec
    assert spec.factory == "qualitynet.trainer.deepfeat:deepfeat_gpr" and spec.name == DEEPFEAT_TEST.name
    candidates = json.loads((run / "candidates.json").read_text())
    assert [(c["backbone"], c["layer"], c["features"]) for c in candidates] == [
        ("efficientnet_lite0", "block6", 320), ("efficientnet_lite0", "head", 1280)]
    best = max(candidates, key=lambda c: (c["val_srocc"], c["val_plcc"]))
    assert (spec.kwargs["backbone"], spec.kwargs["layer"]) == (best["backbone"], best["layer"])
    train_keys = json.loads((run / "split.json").read_text())["train"]
    assert spec.kwargs["train_points"] == len(train_keys) and spec.kwargs["flips"] is True
    assert checkpoint.mos_mapping.kind in ("linear", "logistic4") and checkpoint.mos_mapping.fitted_on == "val"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["chosen"] == {"backbone": best["backbone"], "layer": best["layer"]}
    assert metrics["srocc"] > 0.5  # unseen photos, ranked by a frozen ImageNet backbone and a GP
    assert isinstance(checkpoint.build_model(), torch.nn.Module)


def test_whole_model_scores_the_test_split_as_the_cached_fit_did(deepfeat_checkpoint: Path,
                                                                 demo_dataset: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    result = evaluate_checkpoint(deepfeat_checkpoint, index, "test", workers=0, quiet=True, device="cpu")
    metrics = json.loads((deepfeat_checkpoint.parent / "metrics.json").read_text())
    for key in ("srocc", "plcc", "rmse"):
        assert result.metrics[key] == pytest.approx(metrics[key], abs=1e-4)  # float32 batches differ
        assert result.raw_metrics[key] == pytest.approx(metrics["before_mos_mapping"][key], abs=1e-4)


def _subset(demo_dataset: Path, folder: Path, per_group: int = 3) -> Path:
    """A few images of each scene of the demo data, as its own CSV."""
    with open(demo_dataset, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    kept: list[dict[str, str]] = []
    for group in sorted({row["group"] for row in rows}):
        kept += [row for row in rows if row["group"] == group][:: 17 // per_group][:per_group]
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "scores.csv"
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "image": str(demo_dataset.parent / row["image"])} for row in kept)
    return out


def test_crops_view_is_fitted_and_scored_per_crop(demo_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset("csv", csv_path=_subset(demo_dataset, tmp_path / "data", per_group=2))
    settings = TrainSettings(config=DEEPFEAT_TEST.name, batch_size=16, workers=0, quiet=True, device="cpu",
                             pretrained=True, freeze_backbones=True, view="crops", short_side=112)
    result = train(index, tmp_path / "run", settings)
    checkpoint = load_checkpoint(result.out_dir / "model.pt")
    assert checkpoint.preprocess.view == "crops" and checkpoint.preprocess.inputs_per_image == 5
    evaluation = evaluate_checkpoint(result.out_dir / "model.pt", index, "test", workers=0, quiet=True, device="cpu")
    assert evaluation.raw_metrics["rmse"] == pytest.approx(result.raw_test_metrics["rmse"], abs=1e-4)


def test_paper_config_offline_says_how_to_get_the_weights(demo_dataset: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # no weights copied in
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):  # the download fails as offline
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    csv_path = _subset(demo_dataset, tmp_path / "data")
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--csv", str(csv_path), "--config", "deepfeat",
                                                "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 1
    (line,) = [line for line in result.output.splitlines() if not line.startswith("Downloading:")]  # torch.hub's
    assert line.startswith("Error: cannot load ImageNet weights for resnet50") and "offline" in line
    assert "$TORCH_HOME/hub/checkpoints" in line and "--no-pretrained" in line
    assert not (tmp_path / "run" / "model.pt").exists()


@pytest.mark.slow
def test_paper_config_fits_resnet50_features(demo_dataset: Path, tmp_path: Path) -> None:
    csv_path = _subset(demo_dataset, tmp_path / "data", per_group=2)
    args = ["--dataset", "csv", "--csv", str(csv_path), "--config", "deepfeat", "--no-pretrained", "--view", "resize",
            "--out", str(tmp_path / "run"), "--workers", "0", "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(train_command, args)
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(tmp_path / "run" / "model.pt")
    assert checkpoint.spec.kwargs["backbone"] == "resnet50"
    assert checkpoint.spec.kwargs["features"] == {"layer3": 1024, "layer4": 2048}[checkpoint.spec.kwargs["layer"]]
    with torch.no_grad():
        assert checkpoint.build_model()(torch.zeros(2, 3, 224, 224)).shape == (2, 1)


def test_what_a_gaussian_process_cannot_do_is_refused(demo_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    settings = TrainSettings(config=DEEPFEAT_TEST.name, workers=0, quiet=True, pretrained=True,
                             freeze_backbones=False)
    with pytest.raises(QualityNetError, match="leave out --train-backbones"):
        train(index, tmp_path / "a", settings)
    settings.freeze_backbones = True
    with pytest.raises(QualityNetError, match="nothing to resume"):
        train(index, tmp_path / "b", settings, resume=tmp_path / "last.pt")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
