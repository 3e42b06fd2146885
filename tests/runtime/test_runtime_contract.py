"""A model's view and decode travel in its record: every front end scores the same JPEGs the same way.

Three records on the same weights (the shared untrained ``tiny``, BatchNorm calibrated on real
photos): five crops at a stated short side with full decoding, the whole image with DCT-scaled
decoding, and crops with DCT-scaled decoding. Each is exported with ``iqa-export``'s API (which
verifies it on crops of real photos), then scored through ``iqa-run`` (decode in the process and
in worker processes), the code ``iqa-serve`` and Ray's actors run on encoded bytes, a real Ray
instance, the trainer's evaluation (``iqa-eval``) and, where PyTriton runs, a real Triton
server. The runtime's front ends must agree to 1e-5 on the unit scale; the trainer's dataset
must feed bit-identical inputs, and its PyTorch scores agree to 1e-5 or, for these untrained
weights whose outputs are large, to twice the PyTorch-vs-ONNX Runtime FP32 noise on identical
inputs. Changing the decode or the view moves scores by far more, so the agreement is the
record's doing.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from qualitynet.artifact import FIVE_CROPS, ONNX_METADATA_KEY, PreprocessCfg
from qualitynet.runtime.cli import main
from qualitynet.runtime.decode_pool import decode_bytes, decode_path
from qualitynet.runtime.ray_scoring import ScoreActor
from qualitynet.runtime.scorer import Scorer
from qualitynet.trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from qualitynet.trainer.datasets import DatasetIndex, load_dataset
from qualitynet.trainer.demo_dataset import demo_photo
from qualitynet.trainer.evaluate import evaluate_checkpoint
from qualitynet.trainer.torch_data import IqaDataset

from runtime_helpers import kill_after_rows, repeated_folder

SOURCES = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")
QUALITIES = (90, 30, 75, 10, 60, 95)
RECORDS = ("crops", "dct", "crops-dct")
UNIT_ATOL = 1e-5


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of six 640x480 JPEGs of real photos at qualities 10-95; ``../scores.csv`` names them."""
    folder = tmp_path_factory.mktemp("contract") / "images"
    folder.mkdir()
    rows = []
    for name, quality in zip(SOURCES, QUALITIES, strict=True):
        demo_photo(name, max_side=640).resize((640, 480)).save(folder / f"{name}.jpg", quality=quality)
        rows.append({"image": f"images/{name}.jpg", "score": 1 + 4 * quality / 100})
    with open(folder.parent / "scores.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "score"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def models(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """``record -> (model.pt, model.onnx)``: the tiny weights under each record, exported and verified."""
    from qualitynet.export.exporter import export_all

    base = load_checkpoint(tiny_checkpoint)
    records = {
        "crops": base.preprocess.with_view("crops", FIVE_CROPS, short_side=128),
        "dct": base.preprocess.with_decode("dct"),
        "crops-dct": base.preprocess.with_view("crops", ("center", "top-left", "bottom-right"), 160).with_decode("dct"),
    }
    made = {}
    for name, preprocess in records.items():
        folder = tmp_path_factory.mktemp(name)
        save_checkpoint(folder / "model.pt", Checkpoint(base.model_config, base.state_dict, preprocess,
                                                        base.score_scale, "untrained"))
        made[name] = (folder / "model.pt", export_all(folder / "model.pt").onnx)
    return made


def _iqa_run(model: Path, folder: Path, *options: str) -> dict[str, float]:
    """``iqa-run`` scores by file name (every file must score)."""
    result = CliRunner().invoke(main, [str(model), str(folder), *options])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(result.stdout.splitlines()))
    assert all(not row["error"] for row in rows), rows
    return {Path(row["path"]).name: float(row["score"]) for row in rows}


def _unit_error(got: dict[str, float], expected: dict[str, float]) -> float:
    """Max abs difference on the unit scale (the untrained checkpoint claims MOS 1-5)."""
    assert sorted(got) == sorted(expected)
    return max(abs(got[name] - expected[name]) for name in expected) / 4.0


@pytest.mark.parametrize("record", RECORDS)
def test_iqa_run_serving_ray_actor_and_iqa_eval_score_alike(models: dict[str, tuple[Path, Path]], jpegs: Path,
                                                           tiny_checkpoint: Path, record: str) -> None:
    checkpoint, model = models[record]
    expected = _iqa_run(model, jpegs, "--workers", "0")
    assert _iqa_run(model, jpegs, "--workers", "2", "--batch-size", "4") == expected  # crops through shared memory

    names = sorted(expected)
    with Scorer(model, workers=0) as scorer:  # what iqa-serve's infer function runs on each request's bytes
        cfg = scorer.meta.preprocess
        served = scorer.score_decoded([decode_bytes((jpegs / n).read_bytes(), cfg, scorer.fast_decode, name=n)
                                       for n in names])
    assert _unit_error({r.path: np.nan if r.score is None else r.score for r in served}, expected) <= UNIT_ATOL

    actor = ScoreActor(str(model), "cpu", 1, 4, 0, None)  # Ray's actor on read_binary_files rows
    scored = actor({"path": np.array(names, dtype=object),
                    "bytes": np.array([(jpegs / n).read_bytes() for n in names], dtype=object)})
    assert _unit_error(dict(zip(scored["path"], scored["score"], strict=True)), expected) <= UNIT_ATOL

    index = load_dataset("csv", csv_path=jpegs.parent / "scores.csv")
    _assert_trainer_sees_what_the_runtime_sees(index, cfg)
    evaluation = evaluate_checkpoint(checkpoint, index, workers=0, device="cpu", quiet=True)
    trainer = {Path(key).name: float(p) for key, p in zip(evaluation.keys, evaluation.predictions, strict=True)}
    assert _unit_error(trainer, expected) <= max(UNIT_ATOL, 2 * _backend_noise(checkpoint, model, index.paths))

    # The controls: another decode or another view of the same weights scores visibly otherwise.
    other = _iqa_run(model, jpegs, "--exact-decode") if "dct" in record else _iqa_run(
        export_of(tiny_checkpoint), jpegs)
    assert _unit_error(other, expected) > 100 * UNIT_ATOL


def _assert_trainer_sees_what_the_runtime_sees(index: DatasetIndex, cfg: PreprocessCfg) -> None:
    """The trainer's dataset items are bit-identical to the decode workers' inputs."""
    dataset = IqaDataset(index, range(len(index)), cfg, index.score_scale)
    for i, path in enumerate(index.paths):
        _, inputs, error = decode_path(str(path), cfg)
        assert inputs is not None, error
        item = dataset[i][0].numpy()
        np.testing.assert_array_equal(item if cfg.view == "crops" else item[None], inputs)


def _backend_noise(checkpoint: Path, model: Path, paths: list[Path]) -> float:
    """Max unit-scale difference between PyTorch and ONNX Runtime on identical inputs (FP32 summation
    order): the untrained model's outputs are large, so it can exceed 1e-5 (about 2e-5 here)."""
    import torch

    ckpt = load_checkpoint(checkpoint)
    inputs = np.concatenate([decode_path(str(p), ckpt.preprocess)[1] for p in paths])  # type: ignore[misc]
    with torch.inference_mode():
        eager = ckpt.build_model()(torch.from_numpy(inputs)).numpy().reshape(-1)
    with Scorer(model, workers=0) as scorer:
        onnx_unit = scorer.runner.infer(inputs)
    return float(np.abs(eager - onnx_unit).max())


def export_of(checkpoint: Path) -> Path:
    """The ONNX export of a checkpoint (the whole-image, full-decode record of the shared weights)."""
    from qualitynet.export import export_onnx

    return export_onnx(checkpoint)


def test_an_old_record_scores_exactly_as_before(tiny_checkpoint: Path, jpegs: Path, tmp_path: Path) -> None:
    model = export_of(tiny_checkpoint)
    proto = onnx.load(str(model))
    for prop in proto.metadata_props:
        if prop.key == ONNX_METADATA_KEY:
            record = json.loads(prop.value)  # a default export is written as records were before the view keys
            assert record["format"] == "qualitynet-artifact/1"
            assert not {"view", "crops", "short_side", "decode", "decode_side"} & set(record["preprocess"])
            record["versions"]["qualitynet"] = "0.0.1"
            prop.value = json.dumps(record)
    old = tmp_path / "old.onnx"
    onnx.save(proto, str(old))
    scores = _iqa_run(old, jpegs)
    assert scores == _iqa_run(model, jpegs) == _iqa_run(old, jpegs, "--exact-decode")
    assert _unit_error(_iqa_run(old, jpegs, "--fast-decode"), scores) > 100 * UNIT_ATOL


def test_a_crops_run_killed_and_resumed_scores_each_image_once_and_whole(models: dict[str, tuple[Path, Path]],
                                                                          jpegs: Path, tmp_path: Path) -> None:
    model = models["crops"][1]
    folder = tmp_path / "many"
    expected = repeated_folder(jpegs, folder, 8)
    reference = _iqa_run(model, jpegs)
    out = tmp_path / "scores.csv"
    command = [str(Path(sys.executable).parent / "iqa-run"), str(model), str(folder), "-o", str(out),
               "--batch-size", "7", "--workers", "1", "--threads", "1"]  # 7 // 5 crops: one image per batch
    kill_after_rows(command, out, rows=4)
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "mean of 5 96x96 crops" in resumed.stderr  # the output says how a score was made
    with open(out, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["path"] for row in rows) == expected, "every image exactly once"
    for row in rows:
        assert abs(float(row["score"]) - reference[Path(row["path"]).name.split("_", 1)[1]]) <= 4 * UNIT_ATOL


def test_resuming_with_another_decode_is_refused(models: dict[str, tuple[Path, Path]], jpegs: Path,
                                                 tmp_path: Path) -> None:
    model, out = models["dct"][1], tmp_path / "scores.csv"
    assert CliRunner().invoke(main, [str(model), str(jpegs), "-o", str(out)]).exit_code == 0
    runs = json.loads(out.with_name(out.name + ".iqa-run.json").read_text())
    assert "JPEGs DCT-scaled to sides >= 96 px" in runs["runs"][0]["model"]["preprocessing"]
    mixed = CliRunner().invoke(main, [str(model), str(jpegs), "-o", str(out), "--resume", "--exact-decode"])
    assert mixed.exit_code == 1 and "holds scores of another model" in mixed.output and "full decode" in mixed.output
    assert CliRunner().invoke(main, [str(model), str(jpegs), "-o", str(out), "--resume"]).exit_code == 0


def test_ray_scores_a_crops_and_dct_record_like_iqa_run(models: dict[str, tuple[Path, Path]], jpegs: Path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is an extra: pip install 'qualitynet[ray]'")
    model = models["crops-dct"][1]
    expected = _iqa_run(model, jpegs)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        on_ray = _iqa_run(model, jpegs, "--ray", ray.get_runtime_context().gcs_address, "--batch-size", "4")
    finally:
        ray.shutdown()
    assert _unit_error(on_ray, expected) <= UNIT_ATOL


def _pytriton_missing() -> str:
    """Why a Triton server cannot run here ("" when it can; see scripts/test-serve.sh)."""
    from qualitynet.errors import QualityNetError
    from qualitynet.runtime.serve import check_python

    try:
        check_python()
    except QualityNetError as exc:
        return str(exc)[:200]
    return ""


@pytest.mark.slow
@pytest.mark.skipif(bool(_pytriton_missing()), reason=_pytriton_missing())
def test_a_real_triton_server_scores_a_crops_and_dct_record_like_iqa_run(models: dict[str, tuple[Path, Path]],
                                                                         jpegs: Path) -> None:
    import socket

    import tritonclient.http as httpclient

    from qualitynet.runtime.serve import ScoreServer, ServeSettings

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    model = models["crops-dct"][1]
    expected = _iqa_run(model, jpegs)
    names = sorted(expected)
    settings = ServeSettings(max_batch_size=8, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port())
    with ScoreServer(model, settings) as server:
        client = httpclient.InferenceServerClient(server.url)
        data = np.array([[(jpegs / n).read_bytes()] for n in names], dtype=np.object_)
        request = httpclient.InferInput("image", list(data.shape), "BYTES")
        request.set_data_from_numpy(data)
        scores = client.infer("qualitynet", [request]).as_numpy("score").reshape(-1)
        client.close()
    assert _unit_error(dict(zip(names, scores.tolist(), strict=True)), expected) <= UNIT_ATOL
