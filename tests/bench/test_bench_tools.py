"""The benchmark package's shared pieces and the iqa-bench subcommands built on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from qualitynet.bench.cli import main
from qualitynet.bench.record import markdown_table, measurement
from qualitynet.trainer.checkpoint import load_checkpoint


def test_photos_are_made_once_and_are_the_same_files_every_time(tmp_path: Path) -> None:
    for folder in (tmp_path / "a", tmp_path / "b"):
        result = CliRunner().invoke(main, ["photos", str(folder), "--count", "3", "--size", "96x64"])
        assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "a").glob("*.jpg"))
    assert len(files) == 3 and Image.open(files[0]).size == (96, 64)
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted((tmp_path / "b").glob("*.jpg"))]
    before = files[0].stat().st_mtime_ns
    assert CliRunner().invoke(main, ["photos", str(tmp_path / "a"), "--count", "2", "--size", "96x64"]).exit_code == 0
    assert files[0].stat().st_mtime_ns == before  # enough there: nothing rewritten
    bad = CliRunner().invoke(main, ["photos", str(tmp_path / "c"), "--size", "big"])
    assert bad.exit_code == 2 and "WIDTHxHEIGHT" in bad.output


def test_untrained_writes_a_loadable_checkpoint_of_the_config(tmp_path: Path) -> None:
    path = tmp_path / "m" / "model.pt"
    assert CliRunner().invoke(main, ["untrained", str(path), "--config", "tiny"]).exit_code == 0
    assert load_checkpoint(path).model_config.name == "tiny"


def test_a_checkpoint_as_first_argument_is_the_benchmark_itself(tmp_path: Path) -> None:
    for args in ([str(tmp_path / "missing.pt")], ["-q", str(tmp_path / "missing.pt")]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "checkpoint not found" in result.output


def test_measurement_records_the_machine_and_the_load_around_the_run(tmp_path: Path) -> None:
    with measurement(tmp_path / "out" / "r.json", threads=1) as report:
        report["figure"] = 1.5
    written = json.loads((tmp_path / "out" / "r.json").read_text())
    assert written["figure"] == 1.5 and written["machine"]["cpu_cores"]
    assert len(written["load_average_at_start"]) == 3 and len(written["load_average_at_end"]) == 3
    with pytest.raises(RuntimeError), measurement(tmp_path / "failed.json", machine=False):
        raise RuntimeError("a failed run writes no report")
    assert not (tmp_path / "failed.json").exists()


def test_runs_table_puts_training_runs_side_by_side(tmp_path: Path) -> None:
    run = tmp_path / "lite-frozen"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({
        "srocc": 0.6012, "plcc": 0.6, "rmse": 1.2, "best_epoch": 7, "mos_mapping": {"kind": "logistic4"},
        "before_mos_mapping": {"srocc": 0.6012, "rmse": None}}))
    (run / "seconds").write_text("42\n")
    result = CliRunner().invoke(main, ["runs-table", str(run)])
    assert result.exit_code == 0, result.output
    row = "| lite-frozen | 0.601 | 0.600 | 1.200 | 0.601 | undefined | logistic4 | 7 | 42 s |"
    assert result.output.splitlines()[2] == row
    (tmp_path / "empty").mkdir()
    failed = CliRunner().invoke(main, ["runs-table", str(tmp_path / "empty")])
    assert failed.exit_code == 1 and "metrics.json" in failed.output and "Traceback" not in failed.output
    assert markdown_table(["a"], [[1]]) == "| a |\n|---|\n| 1 |"
