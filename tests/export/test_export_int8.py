"""INT8: calibration, the two quantized graphs, the accuracy gate and its mixed-precision remedy.

The gate and remedy are exercised on a small real convolutional network exported to ONNX
(with an artifact record) whose quantization error is controlled: trained weights are not
available here, and random-weight QualityNet configs amplify rounding so much that INT8
judged on them means nothing (design.md, "INT8"). One channel of its first convolution is
scaled by ``outlier``: per-tensor activation ranges then drown the other channels, the
classic failure that keeping the affected nodes in float repairs. The pipeline and CLI
tests run the tiny QualityNet checkpoint end to end with a bound it can meet.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from qualitynet.artifact import ArtifactMeta, PreprocessCfg, ScoreScale
from qualitynet.errors import QualityNetError
from qualitynet.export import Reference, VerificationError, export_all
from qualitynet.export.calibration import CALIBRATION_SOURCES, GATE_SOURCES, PhotoDataReader, calibration_inputs
from qualitynet.export.cli import main
from qualitynet.export.int8 import (
    Int8Settings,
    calibrate,
    cpu_target,
    gate,
    preprocess_for_quantization,
    quantize,
    quantize_and_gate,
    tensorrt_target,
)
from qualitynet.export.int8_step import check_held_out, gate_inputs
from qualitynet.export.onnx import read_meta, save_with_meta
from qualitynet.runtime.ort_runner import OrtRunner
from qualitynet.runtime.scorer import Scorer

CFG = PreprocessCfg(height=32, width=32)
SCALE = ScoreScale(1.0, 5.0, "test")


class _Net(torch.nn.Module):
    def __init__(self, outlier: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 1)
        with torch.no_grad():  # channel 0 scaled up by conv1 and down again by conv2
            self.conv1.weight[0] *= outlier
            self.conv1.bias[0] *= outlier
            self.conv2.weight[:, 0] /= outlier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.sigmoid(self.fc(x.mean(dim=(2, 3))))


def _small_onnx(path: Path, outlier: float) -> Path:
    """A small real network exported to ONNX with this toolkit's artifact record."""
    tmp = path.with_suffix(".tmp.onnx")
    torch.onnx.export(_Net(outlier).eval(), (torch.zeros(2, 3, 32, 32),), str(tmp), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["quality"],
                      dynamic_axes={"image": {0: "batch"}, "quality": {0: "batch"}})
    save_with_meta(onnx.load(str(tmp)), ArtifactMeta("test-net", CFG, SCALE), path)
    tmp.unlink()
    return path


@pytest.fixture(scope="module")
def calib() -> np.ndarray:
    return calibration_inputs(None, CFG, count=16, seed=0)[0]


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return gate_inputs(check_held_out(None, None), CFG)[0]


def _scales(path: Path) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[1]: inits[n.input[1]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


def _quantized(tmp_path: Path, source: Path, calib: np.ndarray, target: Any = None, seed_tag: str = "a",
               keep: tuple[str, ...] = (), method: str = "minmax") -> Path:
    work = tmp_path / seed_tag
    work.mkdir(exist_ok=True)
    pre = preprocess_for_quantization(source, work / "pre.onnx")
    meta = read_meta(onnx.load(str(source)))
    cache = calibrate(pre, PhotoDataReader("image", calib), method, work / "cache.json", work)
    return quantize(pre, work / "model.int8.onnx", target or cpu_target(), cache, {"method": method}, meta, keep)


# ---- calibration ---------------------------------------------------------------------------------

def test_calibration_is_reproducible(tmp_path: Path) -> None:
    model = _small_onnx(tmp_path / "net.onnx", outlier=1.0)
    first = _scales(_quantized(tmp_path, model, calibration_inputs(None, CFG, 16, seed=0)[0], seed_tag="a"))
    again = _scales(_quantized(tmp_path, model, calibration_inputs(None, CFG, 16, seed=0)[0], seed_tag="b"))
    other = _scales(_quantized(tmp_path, model, calibration_inputs(None, CFG, 16, seed=1)[0], seed_tag="c"))
    assert first.keys() == again.keys() and len(first) >= 3  # input, conv1, conv2 (the pooled tail is float)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert any(not np.array_equal(first[k], other[k]) for k in first), "another seed, other crops, other ranges"


def test_calibration_methods_give_their_own_ranges(tmp_path: Path, calib: np.ndarray) -> None:
    model = _small_onnx(tmp_path / "net.onnx", outlier=1.0)
    scales = {m: _scales(_quantized(tmp_path, model, calib, seed_tag=m, method=m))
              for m in ("minmax", "entropy", "percentile")}
    for method in ("entropy", "percentile"):  # histogram methods clip outliers: smaller scales somewhere
        assert any((scales[method][k] < scales["minmax"][k] * 0.99).any() for k in scales["minmax"]), method


def test_calibration_photos_and_crops() -> None:
    inputs, names = calibration_inputs(None, CFG, count=20, seed=0)
    assert inputs.shape == (20, 3, 32, 32) and inputs.dtype == np.float32
    assert names[:len(CALIBRATION_SOURCES)] == list(CALIBRATION_SOURCES)  # every photo whole first
    crops = names[len(CALIBRATION_SOURCES):]
    assert all("[" in name for name in crops) and any(name.endswith(("1", "2", "3", "4")) for name in crops)
    assert not set(CALIBRATION_SOURCES) & set(GATE_SOURCES)


def test_gate_refuses_calibration_photos(photo_dir: Path) -> None:
    with pytest.raises(QualityNetError, match="both calibration and gate photos"):
        check_held_out(photo_dir, photo_dir)
    with pytest.raises(QualityNetError, match="at least 1"):
        calibration_inputs(photo_dir, CFG, count=0)


# ---- the two graphs --------------------------------------------------------------------------------

def _zero_points(path: Path) -> list[np.ndarray]:
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return [inits[n.input[2]] for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]


def test_tensorrt_graph_is_symmetric_int8_with_per_channel_weights(tmp_path: Path, calib: np.ndarray) -> None:
    source = _small_onnx(tmp_path / "net.onnx", outlier=1.0)
    path = _quantized(tmp_path, source, calib, tensorrt_target())
    zero_points = _zero_points(path)
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[1]]  # weight: float initializer -> QuantizeLinear -> DequantizeLinear
        q = producers[dq.input[0]]
        assert dq.op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear" and q.input[0] in inits
        out_channels = inits[q.input[0]].shape[0]
        assert inits[dq.input[1]].shape == (out_channels,)
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
    assert read_meta(model).precision == "int8"
    assert read_meta(model).extra["int8"]["target"] == "tensorrt"


def test_cpu_graph_on_x86_has_uint8_activations(tmp_path: Path, calib: np.ndarray) -> None:
    assert cpu_target("x86_64").describe()["activations"].startswith("uint8")
    assert cpu_target("aarch64").describe()["activations"].startswith("int8")
    path = _quantized(tmp_path, _small_onnx(tmp_path / "net.onnx", outlier=1.0), calib, cpu_target("x86_64"))
    kinds = {z.dtype for z in _zero_points(path)}
    assert kinds == {np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.int32)}  # activations, weights, biases


# ---- the gate and the remedy -----------------------------------------------------------------------

def _reference(source: Path, inputs: np.ndarray) -> tuple[Reference, OrtRunner]:
    runner = OrtRunner(source, provider="cpu")
    runner.activate()
    return Reference(source.name, runner.infer, inputs), runner


def test_gate_fails_a_damaged_quantization(tmp_path: Path, calib: np.ndarray, held_out: np.ndarray) -> None:
    source = _small_onnx(tmp_path / "net.onnx", outlier=1.0)
    good = _quantized(tmp_path, source, calib)
    model = onnx.load(str(good))  # damage: every weight scale x 30, so weights clip at +-127
    producers = {out: node for node in model.graph.node for out in node.output}
    weight_scales = {n.input[1] for n in model.graph.node if n.op_type == "DequantizeLinear"
                     and n.input[0] not in producers}
    for init in model.graph.initializer:
        if init.name in weight_scales:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 30, init.name))
    damaged = tmp_path / "damaged.int8.onnx"
    onnx.save(model, str(damaged))
    reference, runner = _reference(source, held_out)
    try:
        settings = Int8Settings(min_srocc=0.99)
        passed, failed = gate(good, reference, settings, 4.0), gate(damaged, reference, settings, 4.0)
        too_tight = gate(good, reference, Int8Settings(max_abs_mos=1e-7), 4.0)
    finally:
        runner.deactivate()
    assert passed and [c.batch_size for c in passed.comparisons] == [1, 8]
    assert not failed and not all(c.srocc >= 0.99 for c in failed.comparisons)  # NaN: constant scores
    assert failed.worst.max_abs > 3 * passed.worst.max_abs
    assert not too_tight and too_tight.worst.mismatches > 0  # the optional max abs bound, on the MOS scale


def test_mixed_precision_rescues_a_graph_plain_int8_fails(tmp_path: Path, calib: np.ndarray,
                                                         held_out: np.ndarray) -> None:
    source = _small_onnx(tmp_path / "net.onnx", outlier=300.0)
    meta = read_meta(onnx.load(str(source)))
    pre = preprocess_for_quantization(source, tmp_path / "pre.onnx")
    reference, runner = _reference(source, held_out)
    try:
        cache = calibrate(pre, PhotoDataReader("image", calib), "minmax", tmp_path / "cache.json", tmp_path)
        result = quantize_and_gate(pre, tmp_path / "net.int8.onnx", cpu_target(), Int8Settings(min_srocc=0.99),
                                   cache, meta, reference, calib, tmp_path, fp32_path=source)
    finally:
        runner.deactivate()
    plain = result.figures(result.plain)
    final = result.figures()
    assert not plain["passed"] and plain["srocc"] < 0.99
    assert result and final["srocc"] >= 0.99 and final["srocc"] > plain["srocc"]
    # the activations the outlier channel swamps (the convolutions' outputs, after their fused ReLUs,
    # which are not counted as noise) rank ahead of the input and the weights, and conv2 stays float
    assert set(list(result.sensitivity_db)[:2]) == {"/Relu_output_0", "/Relu_1_output_0"}
    assert "/conv2/Conv" in result.kept_in_float
    assert result.probes and result.probes[-1]["passed"]
    assert {"fp32", "int8_plain", "int8_mixed"} <= set(result.speed_img_s)
    record = read_meta(onnx.load(str(tmp_path / "net.int8.onnx"))).extra["int8"]
    assert record["kept_in_float"] == result.kept_in_float and record["gate"]["passed"]
    assert record["gate"]["plain"]["srocc"] == pytest.approx(plain["srocc"])


# ---- the export pipeline, the runtime and the CLI -----------------------------------------------------

@pytest.fixture(scope="module")
def int8_cli(varied_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """``iqa-export --int8`` of the tiny checkpoint: its folder and the command's result.

    Random weights amplify rounding (SROCC ~0.4-0.7 against FP32), so the bounds given are
    ones the tiny model meets; the figures are recorded all the same."""
    out = tmp_path_factory.mktemp("int8")
    checkpoint = shutil.copy(varied_checkpoint, out / "model.pt")
    result = CliRunner().invoke(main, [str(checkpoint), "--int8", "--calib-count", "16", "--min-srocc", "-1",
                                       "--max-abs-error", "1e6", "--max-mean-error", "1e6"])
    return out, result


def test_cli_writes_both_graphs_with_their_records(int8_cli: tuple[Path, Any]) -> None:
    out, result = int8_cli
    assert result.exit_code == 0, result.output
    assert "model.int8.onnx: INT8 (cpu)" in result.output and "x FP32 on this CPU" in result.output
    meta = read_meta(onnx.load(str(out / "model.int8.onnx")))
    record = meta.extra["int8"]
    assert meta.precision == "int8" and record["target"] == "cpu"
    assert record["calibration"] == {"method": "minmax", "inputs": 16, "seed": 0, "photos": "bundled"}
    gate_record = record["gate"]
    assert gate_record["photos"] == 48 and gate_record["max_abs_mos"] > 0 and -1 <= gate_record["srocc"] <= 1
    assert gate_record["speed_img_s"]["fp32"] > 0 and gate_record["speed_img_s"]["int8"] > 0
    assert read_meta(onnx.load(str(out / "model.int8.trt.onnx"))).extra["int8"]["target"] == "tensorrt"
    report = json.loads((out / "model.export.json").read_text())
    assert report["files"]["int8_onnx"].endswith("model.int8.onnx") and report["int8"]["cpu"]["passed"]
    assert report["int8"]["tensorrt"]["model"] == "model.int8.trt.onnx"
    assert "engine_skipped" in report["int8"] or (out / "model.int8.plan").is_file()


def test_scorer_runs_the_int8_model(int8_cli: tuple[Path, Any], photo_dir: Path) -> None:
    with Scorer(int8_cli[0] / "model.int8.onnx", batch_size=4) as scorer:
        records = list(scorer.score_folder(photo_dir))
    assert len(records) == 8 and all(r.score is not None and np.isfinite(r.score) for r in records)


def test_export_fails_below_the_bound_and_keeps_the_files(varied_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copy(varied_checkpoint, tmp_path / "model.pt"))
    with pytest.raises(VerificationError, match=r"model.int8.onnx fails the INT8 gate.*SROCC .*needs >= 0.999"):
        export_all(checkpoint, tmp_path, int8=Int8Settings(count=8, min_srocc=0.999, remedy=False))
    assert (tmp_path / "model.int8.onnx").is_file() and (tmp_path / "model.int8.trt.onnx").is_file()
    report = json.loads((tmp_path / "model.export.json").read_text())
    assert not report["passed"] and not report["int8"]["cpu"]["passed"] and report["int8"]["cpu"]["srocc"] < 0.999


def test_cli_refuses_calibration_photos_as_gate_photos(varied_checkpoint: Path, tmp_path: Path,
                                                       photo_dir: Path) -> None:
    runner = CliRunner()
    for gate_option in ("--gate-photos", "--photos"):  # --photos as the gate set: deprecated, still honoured
        clash = runner.invoke(main, [str(varied_checkpoint), "--out-dir", str(tmp_path), "--int8", gate_option,
                                     str(photo_dir), "--calib-photos", str(photo_dir)])
        assert clash.exit_code == 1 and "both calibration and gate photos" in clash.output
        assert "Traceback" not in clash.output
        assert ("deprecated; give them with --gate-photos" in clash.output) == (gate_option == "--photos")
    help_text = runner.invoke(main, ["--help"]).output
    assert "--calib-method" in help_text and "--calib-photos train/" in help_text
