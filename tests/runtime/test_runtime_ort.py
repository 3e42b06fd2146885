"""ONNX Runtime backend and the Scorer API: scores match PyTorch eager within the export's tolerance."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.stats import spearmanr

from qualitynet.artifact import ArtifactMeta
from qualitynet.cpus import usable_cpus
from qualitynet.errors import QualityNetError
from qualitynet.runtime import Scorer
from qualitynet.runtime.cli import main
from qualitynet.runtime.ort_runner import OrtRunner, choose_providers
from qualitynet.runtime.preprocess import image_to_tensor, load_rgb

from runtime_helpers import photo_paths

CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


def _cli_scores(model: Path, folder: Path, tmp_path: Path) -> dict[str, float]:
    out = tmp_path / f"{model.stem}.csv"
    result = CliRunner().invoke(main, [str(model), str(folder), "-o", str(out), "--workers", "2", "--batch-size", "3"])
    assert result.exit_code == 0, result.output
    with open(out, newline="", encoding="utf-8") as handle:
        return {row["path"]: float(row["score"]) for row in csv.DictReader(handle)}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_iqa_run_matches_pytorch_eager(precision: str, onnx_models: tuple[Path, Path], photo_dir: Path,
                                       torch_reference: tuple[np.ndarray, float], tmp_path: Path) -> None:
    model = onnx_models[0] if precision == "fp32" else onnx_models[1]
    paths = photo_paths(photo_dir)
    reference, floor = torch_reference
    assert reference.std() > 1e-2, "the fixture model must score photos differently"
    scores = _cli_scores(model, photo_dir, tmp_path)
    assert sorted(scores) == sorted(str(p) for p in paths)
    meta = ArtifactMeta.from_json(_metadata(model))
    unit = meta.score_scale.to_unit(np.array([scores[str(p)] for p in paths]))
    # The export's rule: its tolerance, with atol widened to 10x the score change one FP16
    # rounding of the input causes (an untrained model amplifies rounding; a trained one not).
    from qualitynet.export.verify import TOLERANCES

    tolerance = TOLERANCES[precision].widened(floor if precision == "fp16" else 0.0)
    error = np.abs(unit - reference)
    too_far = (error > tolerance.atol) & (error > tolerance.rtol * np.abs(reference))
    srocc = spearmanr(unit, reference).statistic
    print(f"{precision}: max abs error {error.max():.2e} vs torch (atol {tolerance.atol:.1e}), SROCC {srocc:.4f}")
    assert not too_far.any(), f"max abs error {error.max():.2e} exceeds {tolerance} ({precision})"
    assert srocc >= tolerance.min_srocc
    # And the runtime adds nothing of its own: same model, trainer-preprocessed tensors, ONNX Runtime directly.
    np.testing.assert_allclose(unit, _direct_ort_unit_scores(model, paths, meta), rtol=0, atol=1e-5)


def _direct_ort_unit_scores(model: Path, paths: list[Path], meta: ArtifactMeta) -> np.ndarray:
    import onnxruntime

    batch = np.stack([image_to_tensor(load_rgb(p), meta.preprocess) for p in paths])
    session = onnxruntime.InferenceSession(str(model), providers=[CPU])
    return session.run(None, {session.get_inputs()[0].name: batch})[0].reshape(-1)


def _metadata(model: Path) -> str:
    import onnxruntime

    from qualitynet.artifact import ONNX_METADATA_KEY

    session = onnxruntime.InferenceSession(str(model), providers=[CPU])
    return session.get_modelmeta().custom_metadata_map[ONNX_METADATA_KEY]


def test_scorer_api_paths_folder_arrays_agree(onnx_models: tuple[Path, Path], photo_dir: Path) -> None:
    paths = photo_paths(photo_dir)
    with Scorer(onnx_models[0], workers=0, batch_size=3, threads=1) as scorer:
        by_path = [r.score for r in scorer.score_paths(paths)]
        by_folder = {r.path: r.score for r in scorer.score_folder(photo_dir)}
        batch = np.concatenate([scorer.preprocess(Image.open(p)) for p in paths])  # (1, 3, H, W) each
        by_array = scorer.score_arrays(batch)
        assert scorer.meta.score_scale.high == 5.0
    assert by_folder == {str(p): s for p, s in zip(paths, by_path, strict=True)}
    np.testing.assert_allclose(by_array, by_path, rtol=0, atol=1e-6)
    assert not scorer.runner.is_active, "the context manager released the session"


def test_warm_up_starts_every_worker_and_changes_no_score(onnx_models: tuple[Path, Path], photo_dir: Path) -> None:
    paths = photo_paths(photo_dir)
    with Scorer(onnx_models[0], workers=0, threads=1) as scorer:
        cold = [r.score for r in scorer.score_paths(paths)]
    with Scorer(onnx_models[0], workers=2, batch_size=4, threads=1) as scorer:
        scorer.warm_up()
        pool = scorer._pool  # noqa: SLF001
        assert pool is not None and pool._executor is not None  # noqa: SLF001
        assert len(pool._executor._processes) == 2, "both decode workers run before the first image"  # noqa: SLF001
        warm = [r.score for r in scorer.score_paths(paths)]
    assert warm == cold


def _spins(runner: object) -> bool:
    options = runner._session.get_session_options()  # type: ignore[attr-defined]  # noqa: SLF001
    try:
        return bool(options.get_session_config_entry("session.intra_op.allow_spinning") != "0")
    except RuntimeError:  # not set: ONNX Runtime's default, spinning
        return True


def test_inference_threads_sleep_when_decode_workers_share_the_cpus(onnx_models: tuple[Path, Path],
                                                                   photo_dir: Path) -> None:
    paths = photo_paths(photo_dir)
    with Scorer(onnx_models[0], workers=0, threads=1) as alone:
        assert _spins(alone.runner)
        scores = [r.score for r in alone.score_paths(paths)]
    with Scorer(onnx_models[0], workers=1, threads=1) as shared:
        assert not _spins(shared.runner)
        assert [r.score for r in shared.score_paths(paths)] == scores
    with Scorer(onnx_models[0], threads=1) as default:  # the model on the CPU: one decode worker per CPU
        assert default.runner.runs_on_cpu and default.workers == min(16, usable_cpus())
        assert not _spins(default.runner)


def test_provider_order_and_choice() -> None:
    assert choose_providers([CPU], None) == [CPU]
    assert choose_providers([TRT, CUDA, CPU], None) == [TRT, CUDA, CPU]
    assert choose_providers([CUDA, CPU], None) == [CUDA, CPU]
    assert choose_providers([TRT, CUDA, CPU], "cuda") == [CUDA, CPU]
    assert choose_providers([TRT, CUDA, CPU], "cpu") == [CPU]
    with pytest.raises(QualityNetError, match="onnxruntime-gpu"):
        choose_providers(["AzureExecutionProvider", CPU], "cuda")
    with pytest.raises(QualityNetError, match="unknown provider"):
        choose_providers([CPU], "rocm")


def test_runner_checks_state_and_shapes(onnx_models: tuple[Path, Path]) -> None:
    runner = OrtRunner(onnx_models[0], provider="cpu", threads=1)
    with pytest.raises(QualityNetError, match="not active"):
        runner.infer(np.zeros((1, 3, 96, 96), np.float32))
    with runner:
        assert runner.infer(np.zeros((2, 3, 96, 96), np.float32)).shape == (2,)
        with pytest.raises(QualityNetError, match="does not fit"):
            runner.infer(np.zeros((2, 3, 64, 64), np.float32))
    assert not runner.is_active


def test_runtime_imports_no_torch_trainer_or_export(onnx_models: tuple[Path, Path], photo_dir: Path) -> None:
    """In a fresh interpreter, load and run the whole runtime, then look at what got imported."""
    code = textwrap.dedent(f"""
        import json, sys
        from click.testing import CliRunner
        import qualitynet.runtime, qualitynet.runtime.cli, qualitynet.runtime.trt_runner
        from qualitynet.runtime.cli import main
        result = CliRunner().invoke(main, [{str(onnx_models[1])!r}, {str(photo_dir)!r}, "--workers", "1"])
        assert result.exit_code == 0, result.output
        packages = ("torch", "torchvision", "onnx", "ray", "tritonclient", "pytriton", "timm")
        stages = ("qualitynet.trainer", "qualitynet.export", "qualitynet.bench")
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in packages or m.startswith(stages))))
    """)
    env = {**os.environ, "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs a machine with 2 or more CPUs (one is allowed)")
def test_session_threads_follow_a_restricted_affinity(onnx_models: tuple[Path, Path]) -> None:
    """As under ``taskset -c N``: the default session gets the one CPU allowed, not the machine's count."""
    code = textwrap.dedent(f"""
        from qualitynet.runtime.ort_runner import OrtRunner
        with OrtRunner({str(onnx_models[0])!r}, provider="cpu") as runner:
            print(runner.intra_op_threads)
    """)
    cpu = min(os.sched_getaffinity(0))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    assert result.stdout.split()[-1] == "1"
