"""``iqa-run``: help, exit codes, output choices, and a real interrupted run resumed."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from qualitynet.runtime.cli import main

from runtime_helpers import kill_after_rows, repeated_folder


def _run(*args: object, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], input=stdin)


def _csv_paths(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [row["path"] for row in csv.DictReader(handle)]


@pytest.mark.parametrize(("args", "message"), [
    ([], "at least one folder"),
    (["photos", "--resume"], "--resume needs --output"),
    (["photos", "-o", "x.csv", "--retry-errors"], "--retry-errors applies only with --resume"),
    (["/no/such/folder"], "does not exist"),
])
def test_usage_errors_exit_2(onnx_models: tuple[Path, Path], photo_dir: Path, args: list[str],
                             message: str) -> None:
    result = _run(onnx_models[0], *(photo_dir if a == "photos" else a for a in args))
    assert result.exit_code == 2 and message in result.output


def test_model_that_cannot_load_exits_1(tmp_path: Path, photo_dir: Path) -> None:
    corrupt = tmp_path / "model.onnx"
    corrupt.write_bytes(b"not a protobuf")
    result = _run(corrupt, photo_dir)
    assert result.exit_code == 1 and "ONNX Runtime cannot load it" in result.output and "Traceback" not in result.output
    unknown = tmp_path / "model.bin"
    unknown.write_bytes(b"x")
    assert "unknown model type" in _run(unknown, photo_dir).output


def test_onnx_without_artifact_metadata_exits_1(tmp_path: Path, photo_dir: Path) -> None:
    import onnx

    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    bare = tmp_path / "bare.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), bare)
    result = _run(bare, photo_dir)
    assert result.exit_code == 1 and "export the model with iqa-export" in result.output


def test_nothing_to_score_exits_1(onnx_models: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no image files found" in _run(onnx_models[0], empty).output
    (empty / "broken.jpg").write_bytes(b"\xff\xd8\xff nonsense")
    result = _run(onnx_models[0], empty, "--workers", "0")
    assert result.exit_code == 1 and "no image could be scored" in result.output
    assert "broken.jpg,,cannot read image" in result.stdout


def test_stdout_jsonl_files_from_stdin_and_no_recursion(onnx_models: tuple[Path, Path], photo_dir: Path,
                                                        tmp_path: Path) -> None:
    nested = tmp_path / "tree"
    shutil.copytree(photo_dir, nested / "sub")
    first = sorted(photo_dir.glob("*.jpg"))[0]
    result = _run(onnx_models[0], nested, "--files-from", "-", "--format", "jsonl", "--no-recursive", "-q",
                  stdin=f"{first}\n\n{first}\n")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == [str(first)], "sub/ not walked, the listed file once"
    assert rows[0]["error"] == "" and isinstance(rows[0]["score"], float)
    assert result.stderr == "", "--quiet: no summary, no progress"


def test_existing_output_needs_resume_or_overwrite(onnx_models: tuple[Path, Path], photo_dir: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    assert _run(onnx_models[0], sorted(photo_dir.iterdir())[0], "-o", out).exit_code == 0
    refused = _run(onnx_models[0], photo_dir, "-o", out)
    assert refused.exit_code == 1 and "--resume" in refused.output and "--overwrite" in refused.output
    resumed = _run(onnx_models[0], photo_dir, "-o", out, "--resume", "--workers", "1")
    assert resumed.exit_code == 0 and "skipped the 1 files already in the output" in resumed.output
    paths = _csv_paths(out)
    assert sorted(paths) == sorted(str(p) for p in photo_dir.iterdir())
    again = _run(onnx_models[0], photo_dir, "-o", out, "--resume")
    assert again.exit_code == 0 and _csv_paths(out) == paths, "nothing left: exit 0, no new rows"
    assert _run(onnx_models[0], photo_dir, "-o", out, "--overwrite").exit_code == 0
    assert len(_csv_paths(out)) == len(paths)


def test_killed_run_resumes_with_every_file_exactly_once(onnx_models: tuple[Path, Path], photo_dir: Path,
                                                         tmp_path: Path) -> None:
    """A real ``iqa-run`` process is SIGKILLed part-way, then rerun with --resume."""
    folder = tmp_path / "many"
    expected = repeated_folder(photo_dir, folder, 30)
    out = tmp_path / "scores.csv"
    command = [str(Path(sys.executable).parent / "iqa-run"), str(onnx_models[0]), str(folder), "-o", str(out),
               "--batch-size", "2", "--workers", "1", "--threads", "1"]
    kill_after_rows(command, out)
    first = _csv_paths(out)
    assert 5 <= len(first) < len(expected)

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    paths = _csv_paths(out)
    assert sorted(paths) == expected, "every file exactly once"
    assert paths[: len(first)] == first, "earlier rows kept, new ones appended"


def test_resume_keeps_error_rows_unless_retry_errors(onnx_models: tuple[Path, Path], photo_dir: Path,
                                                     tmp_path: Path) -> None:
    """A file missing at the first run (a mount not there yet) is retried only when asked."""
    photo = next(photo_dir.glob("*.jpg"))
    late = tmp_path / "late.jpg"
    listed = tmp_path / "list.txt"
    listed.write_text(f"{photo}\n{late}\n")
    out = tmp_path / "scores.csv"
    args = [onnx_models[0], "--files-from", listed, "-o", out, "--workers", "0"]
    assert _run(*args).exit_code == 0
    shutil.copy(photo, late)
    assert _run(*args, "--resume").exit_code == 0
    with open(out, newline="", encoding="utf-8") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    assert len(rows) == 2 and rows[str(late)]["error"] == "file not found"
    result = _run(*args, "--resume", "--retry-errors")
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as handle:
        rows = {row["path"]: row for row in csv.DictReader(handle)}
    assert sorted(rows) == sorted([str(photo), str(late)]), "each file once"
    assert rows[str(late)]["error"] == "" and rows[str(late)]["score"] == rows[str(photo)]["score"]
