"""The training loop, resume, evaluation and the trainer's command line, on real photos."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.cli import eval_command, train_command
from qualitynet.trainer.datasets import Split, load_dataset
from qualitynet.trainer.demo_dataset import demo_photo
from qualitynet.trainer.model import create_model
from qualitynet.trainer.mos_mapping import fit_mos_mapping
from qualitynet.trainer.torch_data import IqaDataset, predict
from qualitynet.trainer.train import BestEpoch, TrainSettings, train

# A short run that learns on any CPU: the pretrained lite backbones, frozen, give features that
# differ between photos by far more than float rounding, so the head's predictions vary after
# every epoch (validation std ~0.1-1 MOS) and no figure below depends on the last bits of the
# arithmetic. A from-scratch model this small collapses to constant predictions instead. The whole
# image is the view (one backbone pass per image, not the lite recipe's five crops): these tests are
# about the loop; training on crops is tested in test_train_view.py.
SHORT_RUN = ["--config", "lite", "--pretrained", "--freeze-backbones", "--view", "resize", "--epochs", "3",
             "--batch-size", "8", "--lr", "1e-3", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def short_run(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--csv", str(demo_dataset), *SHORT_RUN,
                                                "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "SROCC" in result.output and "PLCC" in result.output
    return out


def test_run_writes_every_file(short_run: Path) -> None:
    for name in ("model.pt", "last.pt", "split.json", "history.csv", "training_curves.png", "metrics.json",
                 "test_scatter.png"):
        assert (short_run / name).stat().st_size > 0, name
    metrics = json.loads((short_run / "metrics.json").read_text())
    assert metrics["split"] == "test" and "collapsed" not in metrics and "undefined_because" not in metrics
    for name in ("srocc", "plcc", "krocc", "rmse"):
        assert math.isfinite(metrics[name]) and math.isfinite(metrics["before_mos_mapping"][name]), name
    assert -1 <= metrics["srocc"] <= 1 and 0 <= metrics["rmse"] <= 4
    checkpoint = load_checkpoint(short_run / "model.pt")
    assert checkpoint.train_state is None and "test_srocc" in checkpoint.metrics
    assert checkpoint.score_scale.low == 1.0 and checkpoint.score_scale.high == 5.0
    history = list(csv.DictReader((short_run / "history.csv").open()))
    assert len(history) == 3 and all(math.isfinite(float(row["val_srocc"])) for row in history)
    assert metrics["mos_mapping"]["fitted_on"] == "val" and "srocc" in metrics["before_mos_mapping"]


def test_mos_mapping_is_fitted_on_the_validation_split(short_run: Path, demo_dataset: Path) -> None:
    checkpoint = load_checkpoint(short_run / "model.pt")
    index = load_dataset("csv", csv_path=demo_dataset)
    split = Split.load(short_run / "split.json")
    model = checkpoint.build_model(mapped=False)
    fits = {name: fit_mos_mapping(*predict(model, IqaDataset(index, index.subset(getattr(split, name)),
                                                             checkpoint.preprocess, checkpoint.score_scale)),
                                  checkpoint.score_scale)
            for name in ("val", "test")}
    assert checkpoint.mos_mapping.kind == fits["val"].kind
    assert checkpoint.mos_mapping.params == pytest.approx(fits["val"].params, rel=1e-3, abs=1e-4)


def test_resume_continues_from_last_epoch_and_refuses_another_config(demo_dataset: Path, short_run: Path,
                                                                     tmp_path: Path) -> None:
    # One resumed run (its frozen features are computed again, the costly part), through the CLI without --config.
    common = ["--dataset", "csv", "--csv", str(demo_dataset), "--batch-size", "8", "--workers", "0", "--pretrained",
              "--freeze-backbones", "--max-steps", "1", "--resume", str(short_run / "last.pt"), "--quiet"]
    result = CliRunner().invoke(train_command, [*common, "--epochs", "4", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    resumed = load_checkpoint(tmp_path / "b" / "last.pt")
    assert resumed.model_config.name == "lite" and resumed.train_state is not None
    assert [row["epoch"] for row in resumed.train_state["history"]] == [1, 2, 3, 4]  # three restored, one new
    assert Split.load(tmp_path / "b" / "split.json") == Split.load(short_run / "split.json")
    settings = TrainSettings(epochs=4, batch_size=8, workers=0, quiet=True, pretrained=True, freeze_backbones=True)
    with pytest.raises(QualityNetError, match="holds no training state"):
        train(load_dataset("csv", csv_path=demo_dataset), tmp_path / "d", settings, resume=short_run / "model.pt")
    result = CliRunner().invoke(train_command, [*common, "--config", "small", "--out", str(tmp_path / "c")])
    assert result.exit_code == 1
    assert "--config small" in result.output and "'lite' run" in result.output
    assert "Traceback" not in result.output


def test_eval_on_saved_test_split(short_run: Path, demo_dataset: Path) -> None:
    json_path, plot_path = short_run / "eval.json", short_run / "eval.png"
    result = CliRunner().invoke(eval_command, [
        str(short_run / "model.pt"), "--dataset", "csv", "--csv", str(demo_dataset), "--split", "test",
        "--json", str(json_path), "--plot", str(plot_path), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    for label in ("PLCC", "SROCC", "KROCC", "RMSE", "MAE", "explained variance", "quantile loss q=0.9",
                  "Before MOS mapping (raw network output)", "After MOS mapping"):
        assert label in result.output
    record = json.loads(json_path.read_text())
    assert record["before_mos_mapping"]["n"] == record["n"]
    trained = json.loads((short_run / "metrics.json").read_text())
    assert record["n"] == trained["n"] and record["srocc"] == pytest.approx(trained["srocc"], abs=1e-6)
    assert plot_path.stat().st_size > 0
    index = load_dataset("csv", csv_path=demo_dataset)
    test_references = {index.reference(i) for i in index.subset(Split.load(short_run / "split.json").test)}
    assert "within-image SROCC (mean)" in result.output
    assert record["within_references"] == len(test_references) and -1 <= record["within_srocc"] <= 1


def test_best_epoch_prefers_a_ranking_epoch_to_a_collapsed_one() -> None:
    best = BestEpoch()
    assert best.offer(1, 9.0, collapsed=True)  # the first epoch is the best so far, collapsed or not
    assert best.offer(2, 12.0, collapsed=False)  # any ranking epoch beats a collapsed one
    assert not best.offer(3, 2.0, collapsed=True)  # a collapsed epoch never replaces a ranking one
    assert not best.offer(4, float("nan"), collapsed=False)  # a NaN loss counts as infinite
    assert best.offer(5, 11.0, collapsed=False) and (best.epoch, best.loss, best.collapsed) == (5, 11.0, False)


def _constant_scores(csv_path: Path, name: str) -> Path:
    """The same photos with every score 3 (a CSV beside the original, so the split's keys still name
    them): SROCC and PLCC are undefined on any split."""
    rows = list(csv.DictReader(csv_path.open()))
    out = csv_path.with_name(f"constant-{name}.csv")
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**row, "score": "3"} for row in rows)
    return out


def test_collapse_keeps_the_ranking_checkpoint_and_writes_no_nan(short_run: Path, demo_dataset: Path,
                                                                 tmp_path: Path) -> None:
    # The short run's epochs rank; resumed on scores that cannot be ranked, every new epoch is degenerate.
    constant = _constant_scores(demo_dataset, tmp_path.name)
    out = tmp_path / "run"
    result = CliRunner().invoke(train_command, [
        "--dataset", "csv", "--csv", str(constant), "--score-range", "1:5", "--resume", str(short_run / "last.pt"),
        "--epochs", "5", "--max-steps", "2", "--workers", "0", "--freeze-backbones", "--pretrained", "--quiet",
        "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "training collapsed on the validation split: the scores are all equal" in result.output
    assert "learning rate too high" in result.output and "Traceback" not in result.output
    kept = load_checkpoint(out / "model.pt")
    assert kept.metrics["val_loss"] == load_checkpoint(short_run / "model.pt").metrics["val_loss"]
    text = (out / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    metrics = json.loads(text)
    assert metrics["srocc"] is None and metrics["plcc"] is None and math.isfinite(metrics["rmse"])
    assert "scores are all equal" in metrics["undefined_because"] and "collapsed" not in metrics
    history = list(csv.DictReader((out / "history.csv").open()))
    assert [row["val_srocc"] for row in history[3:]] == ["undefined", "undefined"]
    assert "nan" not in (out / "history.csv").read_text().lower()
    assert "undefined" in result.output  # the printed metrics say so too


def test_a_run_that_collapses_in_every_epoch_fails_clearly(demo_dataset: Path, tmp_path: Path) -> None:
    constant = _constant_scores(demo_dataset, tmp_path.name)
    out = tmp_path / "run"
    result = CliRunner().invoke(train_command, [
        "--dataset", "csv", "--csv", str(constant), "--score-range", "1:5", *SHORT_RUN, "--epochs", "2",
        "--max-steps", "2", "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "training collapsed: the validation predictions were degenerate in every epoch (2)" in result.output
    assert re.search(r"model\.pt \(epoch [12], lowest validation loss\) is kept but does not rank", result.output)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["collapsed"].startswith("training collapsed") and metrics["srocc"] is None
    eval_json = tmp_path / "eval.json"
    evaluated = CliRunner().invoke(eval_command, [str(out / "model.pt"), "--dataset", "csv", "--csv", str(constant),
                                                  "--score-range", "1:5", "--json", str(eval_json), "--workers", "0",
                                                  "--quiet"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "SROCC and PLCC are undefined: the scores are all equal" in evaluated.output
    assert "NaN" not in eval_json.read_text() and json.loads(eval_json.read_text())["srocc"] is None


def test_missing_images_fail_before_training(tmp_path: Path) -> None:
    (tmp_path / "scores.csv").write_text("image,score\n" + "".join(f"gone{i}.jpg,{i}\n" for i in range(6)))
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--csv", str(tmp_path / "scores.csv"),
                                                "--config", "tiny", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "6 of 6 image(s) cannot be read" in result.output and "gone0.jpg: missing" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "run" / "model.pt").exists()


def test_pretrained_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty weights cache and a proxy that refuses connections: the machine is offline.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    with pytest.raises(QualityNetError, match="cannot load ImageNet weights for mobilenet_v3_small.*--no-pretrained"):
        create_model("tiny", pretrained=True)


def test_paper_recipe_is_pretrained_and_fails_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    koniq = tmp_path / "koniq"  # a KonIQ-10k layout with six real photos
    (koniq / "1024x768").mkdir(parents=True)
    for i, name in enumerate(("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")):
        demo_photo(name, max_side=64).save(koniq / "1024x768" / f"{name}.jpg")
    (koniq / "koniq10k_scores_and_distributions.csv").write_text(
        "image_name,MOS\n" + "".join(f"{n}.jpg,{1 + i * 0.5}\n" for i, n in enumerate(
            ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins"))))
    recipe = ["--dataset", "koniq10k", "--data-root", str(koniq), "--pretrained"]  # qualitynet, the default config
    result = CliRunner().invoke(train_command, [*recipe, "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot load ImageNet weights for resnet50" in result.output and "$TORCH_HOME" in result.output


LITE_VIEW = {"view": "crops", "short_side": 768, "decode": "dct"}
PAPER_VIEW = {"view": "resize", "short_side": 0, "decode": "full"}


@pytest.mark.parametrize(("args", "expected"), [
    (["--config", "lite"], {"pretrained": True, "freeze_backbones": True, "lr": 1e-3, **LITE_VIEW}),  # the recipe
    (["--config", "lite02"], {"pretrained": True, "freeze_backbones": True, "lr": 3e-4, **LITE_VIEW}),  # its own lr
    (["--config", "lite02", "--lr", "1e-3", "--train-backbones"],
     {"pretrained": True, "freeze_backbones": False, "lr": 1e-3, **LITE_VIEW}),  # options given win over it
    (["--config", "lite", "--view", "resize"], {"view": "resize", "decode": "dct"}),  # DCT-scaled to 224
    (["--config", "lite", "--crop-scale", "native"], {"view": "crops", "short_side": 0, "decode": "full"}),
    (["--config", "lite", "--crop-scale", "512", "--decode", "full"], {"short_side": 512, "decode": "full"}),
    (["--config", "small"], {"pretrained": False, "freeze_backbones": False, "lr": 1e-4, **PAPER_VIEW}),  # the paper's
    (["--config", "deepfeat-lite"], {"pretrained": True, "freeze_backbones": True, "view": "resize"}),
    (["--config", "deepfeat"], {"pretrained": True, "freeze_backbones": True, "view": "crops"}),  # five crops
    (["--config", "deepfeat", "--view", "resize"], {"view": "resize"}),
])
def test_lite_configs_default_to_their_recipe(args: list[str], expected: dict[str, object], demo_dataset: Path,
                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[TrainSettings] = []
    monkeypatch.setattr("qualitynet.trainer.distributed.run_training",
                        lambda nproc, index, out, settings, resume: seen.append(settings))  # settings only, no run
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--csv", str(demo_dataset), "--out",
                                                str(tmp_path), *args])
    assert result.exit_code == 0, result.output
    assert {key: getattr(seen[0], key) for key in expected} == expected


@pytest.mark.slow
def test_paper_config_trains_one_step_on_cpu(demo_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    settings = TrainSettings(config="qualitynet", epochs=1, batch_size=2, workers=0, quiet=True, max_steps=1)
    torch.manual_seed(0)
    result = train(index, tmp_path, settings)
    checkpoint = load_checkpoint(tmp_path / "model.pt")
    assert result.epochs_run == 1 and checkpoint.model_config.name == "qualitynet"
    assert checkpoint.state_dict["output.weight"].shape == (1, 256)  # the paper's head ends 256 -> 1
    assert torch.isfinite(torch.tensor(result.test_metrics["mae"]))
