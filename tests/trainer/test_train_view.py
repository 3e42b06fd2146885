"""iqa-train's view and decode options: the record they write, training on crops (fine-tuned and
frozen) and evaluation that scores an image as the mean of its crops' mapped scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qualitynet.trainer.checkpoint import load_checkpoint
from qualitynet.trainer.cli import eval_command, train_command
from qualitynet.trainer.datasets import Split, load_dataset
from qualitynet.trainer.mos_mapping import apply_mos_mapping
from qualitynet.trainer.torch_data import IqaDataset, crop_mean, predict

TRAIN = ["--config", "tiny", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3", "--workers", "0", "--quiet"]
# A run that ranks on any CPU (a from-scratch tiny model's predictions collapse to a constant, and
# such a run exits 1): the pretrained lite backbones give features that differ between photos.
LEARNING = ["--config", "lite", "--pretrained", "--epochs", "1", "--max-steps", "2", "--batch-size", "8", "--lr",
            "1e-3", "--workers", "0", "--quiet"]


@pytest.mark.parametrize("frozen", [False, True])
def test_a_crops_run_records_its_view_and_scores_the_mean_of_mapped_crop_scores(
        demo_dataset: Path, tmp_path: Path, frozen: bool) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(train_command, [
        "--dataset", "csv", "--csv", str(demo_dataset), *LEARNING, "--view", "crops", "--crops",
        "center,top-left,right", "--crop-scale", "256", "--decode", "dct", "--out", str(out),
        *(["--freeze-backbones"] if frozen else [])])
    assert result.exit_code == 0, result.output
    checkpoint = load_checkpoint(out / "model.pt")
    cfg = checkpoint.preprocess
    assert (cfg.view, cfg.crops, cfg.short_side, cfg.decode, cfg.decode_side) == (
        "crops", ("center", "top-left", "right"), 256, "dct", 256)

    index = load_dataset("csv", csv_path=demo_dataset)
    test = IqaDataset(index, index.subset(Split.load(out / "split.json").test), cfg, checkpoint.score_scale)
    raw, _ = predict(checkpoint.build_model(mapped=False), test, per_crop=True)
    assert raw.shape == (len(test), 3)
    expected = crop_mean(apply_mos_mapping(checkpoint.mos_mapping, checkpoint.score_scale, raw))
    mapped, _ = predict(checkpoint.build_model(), test, per_crop=True)  # the graph exports carry
    np.testing.assert_allclose(crop_mean(mapped), expected, rtol=0, atol=1e-5)

    metrics = json.loads((out / "metrics.json").read_text())
    evaluation = CliRunner().invoke(eval_command, [str(out / "model.pt"), "--dataset", "csv", "--csv",
                                                   str(demo_dataset), "--split", "test", "--workers", "0", "-q",
                                                   "--json", str(tmp_path / "eval.json")])
    assert evaluation.exit_code == 0, evaluation.output
    assert "mean of 3 224x224 crops (center, top-left, right)" in evaluation.output
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["srocc"] == pytest.approx(metrics["srocc"], abs=1e-9) or np.isnan(metrics["srocc"])


@pytest.mark.parametrize(("options", "message"), [
    (["--view", "crops", "--crops", "center,middle"], "crops ('center', 'middle') are not distinct names"),
    (["--view", "crops", "--decode", "dct"], "DCT-scaled decoding does not apply to crops at native resolution"),
    (["--view", "crops", "--crop-scale", "64"], "short side 64 is neither 0"),
    (["--view", "crops", "--crop-scale", "big"], "--crop-scale 'big' is neither 'native' nor a short side"),
])
def test_bad_view_options_are_one_line_errors(demo_dataset: Path, tmp_path: Path, options: list[str],
                                              message: str) -> None:
    result = CliRunner().invoke(train_command, ["--dataset", "csv", "--csv", str(demo_dataset), *TRAIN,
                                                "--out", str(tmp_path / "run"), *options])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "run").exists()
