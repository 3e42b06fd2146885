"""``iqa-run --ray`` against real Ray heads started by the test, each in a loopback-only namespace
(see ``ray_cluster.py``): a head working in another directory, a node that lacks the files, a head
with token authentication, and a stale record of a cluster that is gone."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from ray_cluster import cluster_env, namespace_unavailable, run_in_namespace

pytest.importorskip("ray", reason="Ray is an extra: pip install 'qualitynet[ray]'")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bool(namespace_unavailable()), reason=namespace_unavailable() or "available")]


def _rows(path: Path) -> dict[str, tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return {row["path"]: (row["score"], row["error"]) for row in csv.DictReader(handle)}


@pytest.fixture
def work(photo_dir: Path, tmp_path: Path) -> Path:
    """A working directory holding ``photos/`` (the bundled photos and one file that cannot be read)."""
    shutil.copytree(photo_dir, tmp_path / "photos")
    (tmp_path / "photos" / "text.jpg").write_text("not an image")
    return tmp_path


def _expected(model: Path, work: Path) -> dict[str, tuple[str, str]]:
    from click.testing import CliRunner

    from qualitynet.runtime.cli import main

    result = CliRunner().invoke(main, [str(model), str(work / "photos"), "-o", str(work / "local.csv"),
                                       "--workers", "0", "-q"])
    assert result.exit_code == 1 or result.exit_code == 0, result.output
    return {Path(path).name: row for path, row in _rows(work / "local.csv").items()}


def test_relative_paths_are_scored_by_a_head_working_elsewhere(onnx_models: tuple[Path, Path], work: Path) -> None:
    """The head and its workers run in ``/``; the driver gives paths relative to its own directory."""
    with cluster_env(work / "home") as env:
        result = run_in_namespace(f"""
            start_head /
            "$IQA_RUN" {onnx_models[0]} photos -o ray.csv --ray 127.0.0.1:6379 --batch-size 4 -q
            echo "exit=$?"
        """, env, work)
    assert "exit=0" in result.stdout, result.stdout + result.stderr[-3000:]
    got, expected = _rows(work / "ray.csv"), _expected(onnx_models[0], work)
    assert sorted(got) == sorted(f"photos/{name}" for name in expected), "paths as the user gave them"
    for path, (score, error) in got.items():
        want_score, want_error = expected[Path(path).name]
        assert error == want_error, path
        assert (score == want_score == "") or abs(float(score) - float(want_score)) <= 1e-6, path
    assert sum(1 for _, error in got.values() if error) == 1


def test_files_missing_on_the_workers_fail_the_run_and_resume_scores_them(onnx_models: tuple[Path, Path],
                                                                           work: Path) -> None:
    """The head's node sees an empty ``photos/`` (no shared filesystem); then a head that sees them."""
    with cluster_env(work / "home") as env:
        result = run_in_namespace(f"""
            start_head "$PWD" "$PWD/photos"
            "$IQA_RUN" {onnx_models[0]} photos -o ray.csv --ray 127.0.0.1:6379 -q 2> first.err
            echo "first=$?"
            stop_head
            start_head "$PWD"
            "$IQA_RUN" {onnx_models[0]} photos -o ray.csv --ray 127.0.0.1:6379 -q --resume
            echo "resumed=$?"
        """, env, work)
    first = (work / "first.err").read_text()
    assert "first=1" in result.stdout, result.stdout + result.stderr[-3000:] + first
    assert "9 file(s) exist here but not on the Ray workers' nodes" in first and "--resume" in first, first
    assert "Traceback" not in first
    assert "resumed=0" in result.stdout, result.stdout + result.stderr[-3000:]
    got = _rows(work / "ray.csv")
    assert sorted(got) == sorted(f"photos/{p.name}" for p in (work / "photos").iterdir()), "each file once"
    assert [path for path, (_, error) in got.items() if error] == ["photos/text.jpg"]


def test_a_head_with_token_authentication_is_named_as_the_reason(onnx_models: tuple[Path, Path],
                                                                  work: Path) -> None:
    with cluster_env(work / "home") as env:
        result = run_in_namespace(f"""
            RAY_AUTH_MODE=token RAY_AUTH_TOKEN=the-clusters-token start_head "$PWD"
            "$IQA_RUN" {onnx_models[0]} photos -o none.csv --ray 127.0.0.1:6379 -q 2> none.err
            echo "none=$?"
            RAY_AUTH_MODE=token RAY_AUTH_TOKEN=a-wrong-token "$IQA_RUN" {onnx_models[0]} photos -o wrong.csv \\
                --ray 127.0.0.1:6379 -q 2> wrong.err
            echo "wrong=$?"
            RAY_AUTH_MODE=token RAY_AUTH_TOKEN=the-clusters-token "$IQA_RUN" {onnx_models[0]} photos -o ok.csv \\
                --ray 127.0.0.1:6379 -q
            echo "ok=$?"
        """, env, work)
    for case in ("none", "wrong"):
        message = (work / f"{case}.err").read_text()
        assert f"{case}=1" in result.stdout, result.stdout + result.stderr[-3000:] + message
        assert "refused this client's authentication" in message and "RAY_AUTH_TOKEN" in message, message
        assert "Traceback" not in message
    assert "ok=0" in result.stdout, result.stdout + result.stderr[-3000:]
    assert len(_rows(work / "ok.csv")) == 9


def test_ray_without_address_starts_a_local_instance_despite_a_stale_record(onnx_models: tuple[Path, Path],
                                                                            work: Path) -> None:
    """``ray_current_cluster`` names a head that is gone: ``--ray`` alone must not try to join it."""
    with cluster_env(work / "home") as env:
        stale = Path(env["RAY_TMPDIR"]) / "ray" / "ray_current_cluster"
        stale.parent.mkdir()
        stale.write_text("127.0.0.1:6379\n")
        result = run_in_namespace(f"""
            "$IQA_RUN" {onnx_models[0]} photos -o local-ray.csv --ray -q
            echo "exit=$?"
        """, env, work)
    assert "exit=0" in result.stdout, result.stdout + result.stderr[-3000:]
    assert len(_rows(work / "local-ray.csv")) == 9
