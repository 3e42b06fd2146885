"""``iqa-run --ray`` and :func:`score_dataset` on a real local Ray instance (``ray.init(num_cpus=2)``)."""

from __future__ import annotations

import csv
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from qualitynet.runtime.cli import main

from runtime_helpers import kill_after_rows, repeated_folder

ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'qualitynet[ray]'")


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A local Ray instance for this module; other processes join it at the address yielded.

    Hermetic: Ray's files go to a folder of its own, where a stale ``ray_current_cluster`` (a
    record of a cluster that is gone, as an earlier ``ray start`` leaves) must not be joined.
    """
    temp = tempfile.mkdtemp(prefix="iqa-ray-", dir="/tmp")  # short: Ray's socket paths must fit 108 bytes
    (Path(temp) / "ray").mkdir()
    (Path(temp) / "ray" / "ray_current_cluster").write_text("127.0.0.1:9\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("RAY_ADDRESS", raising=False)
        patch.setenv("RAY_TMPDIR", temp)
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
            yield ray.get_runtime_context().gcs_address
        finally:
            ray.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def mixed_folder(photo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled photos plus files that cannot be scored."""
    folder = tmp_path_factory.mktemp("mixed")
    for photo in photo_dir.iterdir():
        shutil.copy(photo, folder / photo.name)
    (folder / "truncated.jpg").write_bytes((photo_dir / "astronaut.jpg").read_bytes()[:300])
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.jpg").write_text("not an image")
    return folder


def _rows(path: Path) -> dict[str, tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["path"]: (row["score"], row["error"]) for row in csv.DictReader(handle)}


def test_ray_scores_equal_iqa_run(scored_onnx: Path, mixed_folder: Path, ray_address: str, tmp_path: Path) -> None:
    local, on_ray = tmp_path / "local.csv", tmp_path / "ray.csv"
    runner = CliRunner()
    result = runner.invoke(main, [str(scored_onnx), str(mixed_folder), "-o", str(local), "--workers", "0"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, [str(scored_onnx), str(mixed_folder), "-o", str(on_ray), "--ray", ray_address,
                                  "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    expected, got = _rows(local), _rows(on_ray)
    assert sorted(got) == sorted(expected) and len(got) == 11
    for path, (score, error) in expected.items():
        assert got[path][1] == error
        if error:
            assert got[path][0] == ""
        else:
            assert abs(float(got[path][0]) - float(score)) <= 1e-6, path
    assert sum(1 for _, error in got.values() if error) == 3


def test_score_dataset_writes_parquet(onnx_models: tuple[Path, Path], mixed_folder: Path, ray_address: str,
                                      tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from qualitynet.runtime import Scorer
    from qualitynet.runtime.ray_scoring import score_dataset

    paths = sorted(str(p) for p in mixed_folder.iterdir())
    scored = score_dataset(ray.data.from_items([{"path": p} for p in paths]), onnx_models[0], actors=2,
                           batch_size=3)
    scored.write_parquet(str(tmp_path / "scores"))
    table = pq.read_table(tmp_path / "scores").to_pydict()
    rows = dict(zip(table["path"], zip(table["score"], table["error"], strict=True), strict=True))
    with Scorer(onnx_models[0], workers=0) as scorer:
        for record in scorer.score_paths(paths):
            score, error = rows.pop(record.path)
            assert error == record.error
            assert (record.score is None and score != score) or abs(score - record.score) <= 1e-6  # NaN on error
    assert not rows


def test_binary_files_dataset_scores_like_paths(onnx_models: tuple[Path, Path], mixed_folder: Path,
                                                 ray_address: str) -> None:
    """Ray's own reader (the one that reads object stores) gives the bytes; the scores are the files'."""
    from qualitynet.runtime import Scorer
    from qualitynet.runtime.ray_scoring import records_of, score_dataset

    dataset = ray.data.read_binary_files(str(mixed_folder), include_paths=True)
    got = {Path(r.path).name: r for batch in records_of(score_dataset(dataset, onnx_models[0], actors=1,
                                                                      batch_size=4)) for r in batch}
    with Scorer(onnx_models[0], workers=0) as scorer:
        expected = {Path(r.path).name: r for r in scorer.score_folder(mixed_folder)}
    assert sorted(got) == sorted(expected)
    for name, record in expected.items():
        if record.error:
            assert got[name].score is None and got[name].error.startswith("cannot read image")
        else:
            assert got[name].error == "" and abs(got[name].score - record.score) <= 1e-6  # type: ignore[operator]


@pytest.mark.slow
def test_killed_ray_run_resumes_with_every_file_exactly_once(onnx_models: tuple[Path, Path], mixed_folder: Path,
                                                             ray_address: str, tmp_path: Path) -> None:
    """A real ``iqa-run --ray`` driver is SIGKILLed part-way, then rerun with --resume on the same cluster."""
    folder = tmp_path / "many"
    expected = repeated_folder(mixed_folder, folder, 20)
    out = tmp_path / "scores.csv"
    command = [str(Path(sys.executable).parent / "iqa-run"), str(onnx_models[0]), str(folder), "-o", str(out),
               "--ray", ray_address, "--ray-actors", "1", "--batch-size", "2", "-q"]
    kill_after_rows(command, out, timeout=120)
    first = list(_rows(out))
    assert 5 <= len(first) < len(expected)

    result = CliRunner().invoke(main, [*command[1:-1], "--resume"])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as handle:
        paths = [row["path"] for row in csv.DictReader(handle)]
    assert sorted(paths) == expected, "every file exactly once"
    assert paths[: len(first)] == first, "earlier rows kept, new ones appended"
