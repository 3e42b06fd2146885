"""The training loop, resume, evaluation and the trainer's command line, on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from qualitynet.errors import QualityNetError
from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.cli import demo_data_command, eval_command, train_command
from qualitynet.trainer.data import IqaDataset, predict
from qualitynet.trainer.datasets import Split, load_dataset
from qualitynet.trainer.demo_data import demo_photo
from qualitynet.trainer.model import create_model
from qualitynet.trainer.mos_mapping import fit_mos_mapping
from qualitynet.trainer.train import TrainSettings, train


@pytest.fixture(scope="module")
def tiny_run(demo_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    result = CliRunner().invoke(train_command, [
        "--dataset", "csv", "--csv", str(demo_dataset), "--config", "tiny", "--epochs", "2", "--batch-size", "8",
        "--lr", "1e-3", "--workers", "0", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "SROCC" in result.output and "PLCC" in result.output
    return out


def test_run_writes_every_file(tiny_run: Path) -> None:
    for name in ("model.pt", "last.pt", "split.json", "history.csv", "training_curves.png", "metrics.json",
                 "test_scatter.png"):
        assert (tiny_run / name).stat().st_size > 0, name
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["split"] == "test" and -1 <= metrics["srocc"] <= 1
    checkpoint = load_checkpoint(tiny_run / "model.pt")
    assert checkpoint.train_state is None and "test_srocc" in checkpoint.metrics
    assert checkpoint.score_scale.low == 1.0 and checkpoint.score_scale.high == 5.0
    assert len((tiny_run / "history.csv").read_text().splitlines()) == 3
    assert metrics["mos_mapping"]["fitted_on"] == "val" and "srocc" in metrics["before_mos_mapping"]


def test_mos_mapping_is_fitted_on_the_validation_split(tiny_run: Path, demo_dataset: Path) -> None:
    checkpoint = load_checkpoint(tiny_run / "model.pt")
    index = load_dataset("csv", csv_path=demo_dataset)
    split = Split.load(tiny_run / "split.json")
    model = checkpoint.build_model(mapped=False)
    fits = {name: fit_mos_mapping(*predict(model, IqaDataset(index, index.subset(getattr(split, name)),
                                                             checkpoint.preprocess, checkpoint.score_scale)),
                                  checkpoint.score_scale)
            for name in ("val", "test")}
    assert checkpoint.mos_mapping.kind == fits["val"].kind
    assert checkpoint.mos_mapping.params == pytest.approx(fits["val"].params, rel=1e-3, abs=1e-4)


def test_resume_continues_from_last_epoch(tiny_run: Path, demo_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    settings = TrainSettings(config="tiny", epochs=3, batch_size=8, lr=1e-3, workers=0, quiet=True, max_steps=2)
    result = train(index, tmp_path, settings, resume=tiny_run / "last.pt")
    assert result.epochs_run == 3  # two restored epochs and one new one
    assert Split.load(tmp_path / "split.json") == Split.load(tiny_run / "split.json")
    with pytest.raises(QualityNetError, match="holds no training state"):
        train(index, tmp_path, settings, resume=tiny_run / "model.pt")


def test_eval_on_saved_test_split(tiny_run: Path, demo_dataset: Path) -> None:
    json_path, plot_path = tiny_run / "eval.json", tiny_run / "eval.png"
    result = CliRunner().invoke(eval_command, [
        str(tiny_run / "model.pt"), "--dataset", "csv", "--csv", str(demo_dataset), "--split", "test",
        "--json", str(json_path), "--plot", str(plot_path), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    for label in ("PLCC", "SROCC", "KROCC", "RMSE", "MAE", "explained variance", "quantile loss q=0.9",
                  "Before MOS mapping (raw network output)", "After MOS mapping"):
        assert label in result.output
    record = json.loads(json_path.read_text())
    assert record["before_mos_mapping"]["n"] == record["n"]
    trained = json.loads((tiny_run / "metrics.json").read_text())
    assert record["n"] == trained["n"] and record["srocc"] == pytest.approx(trained["srocc"], abs=1e-6)
    assert plot_path.stat().st_size > 0
    index = load_dataset("csv", csv_path=demo_dataset)
    test_references = {index.reference(i) for i in index.subset(Split.load(tiny_run / "split.json").test)}
    assert "within-image SROCC (mean)" in result.output
    assert record["within_references"] == len(test_references) and -1 <= record["within_srocc"] <= 1


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
    help_text = CliRunner().invoke(train_command, ["--help"]).output
    recipe = next(line for line in help_text.splitlines() if "--dataset koniq10k" in line)
    assert "--pretrained" in recipe and "--config" not in recipe  # qualitynet, the default config
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    documented = [line for line in readme.splitlines() if line.startswith("iqa-train --dataset koniq10k")]
    assert documented and all("--pretrained" in line for line in documented)
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
    args = [str(koniq) if arg == "/data/koniq" else arg for arg in recipe.split()[1:]]
    result = CliRunner().invoke(train_command, [*args[:args.index("--out")], "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot load ImageNet weights for resnet50" in result.output and "$TORCH_HOME" in result.output


@pytest.mark.parametrize(("args", "expected"), [
    (["--config", "lite"], {"pretrained": True, "freeze_backbones": True, "lr": 1e-3}),  # the lite recipe
    (["--config", "lite02", "--lr", "3e-4", "--train-backbones"],
     {"pretrained": True, "freeze_backbones": False, "lr": 3e-4}),  # options given win over it
    (["--config", "small"], {"pretrained": False, "freeze_backbones": False, "lr": 1e-4}),  # the paper's
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


def test_help_shows_examples() -> None:
    for command in (train_command, eval_command, demo_data_command):
        result = CliRunner().invoke(command, ["--help"])
        assert result.exit_code == 0 and "Example:" in result.output


@pytest.mark.slow
def test_paper_config_trains_one_step_on_cpu(demo_dataset: Path, tmp_path: Path) -> None:
    index = load_dataset("csv", csv_path=demo_dataset)
    settings = TrainSettings(config="qualitynet", epochs=1, batch_size=2, workers=0, quiet=True, max_steps=1)
    before = create_model("qualitynet").output.weight.detach().clone()
    torch.manual_seed(0)
    result = train(index, tmp_path, settings)
    checkpoint = load_checkpoint(tmp_path / "model.pt")
    assert result.epochs_run == 1 and checkpoint.model_config.name == "qualitynet"
    assert checkpoint.state_dict["output.weight"].shape == before.shape
    assert torch.isfinite(torch.tensor(result.test_metrics["mae"]))
