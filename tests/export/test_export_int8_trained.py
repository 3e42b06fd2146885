"""INT8 on checkpoints that ``iqa-train`` wrote (with the MOS mapping every run attaches), and on the lite graph.

Issue 21's defects showed only on such checkpoints: the mapping's scalar constants crashed
the float fall-back, the score chain was quantized, and the lite graph's runtime padding
stopped ONNX Runtime's shape inference. The trained ``tiny`` checkpoint (a few training
steps) is the cheapest model with all of a trained model's nodes.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

from qualitynet.errors import QualityNetError
from qualitynet.export import Reference, export_all
from qualitynet.export.calibration import PhotoDataReader, calibration_inputs
from qualitynet.export.int8 import (
    DEFAULT_MEAN_ABS_FRACTION,
    DEFAULT_RANK_RESOLUTION_FRACTION,
    Int8Settings,
    calibrate,
    cpu_target,
    gate,
    nodes_of,
    pooled_tail,
    preprocess_for_quantization,
    quantize,
    quantize_and_gate,
    score_chain,
    sensitive_nodes,
    sqnr_db,
)
from qualitynet.export.int8_step import check_held_out, gate_inputs
from qualitynet.export.onnx import export_onnx, read_meta
from qualitynet.export.types import Int8Gate
from qualitynet.runtime.int8_fit import X86_NO_VNNI, X86_VNNI, int8_class, int8_concerns
from qualitynet.runtime.ort_runner import OrtRunner
from qualitynet.runtime.scorer import Scorer
from qualitynet.trainer.checkpoint import load_checkpoint, save_untrained_checkpoint


@pytest.fixture(scope="module")
def trained_onnx(trained_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained checkpoint exported to ONNX (MOS mapping in the graph)."""
    assert load_checkpoint(trained_checkpoint).mos_mapping.kind != "identity"
    return export_onnx(trained_checkpoint, tmp_path_factory.mktemp("trained-onnx") / "model.onnx")


@pytest.fixture(scope="module")
def prepared(trained_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """(pre-processed model, calibration cache, calibration inputs) of the trained model."""
    work = tmp_path_factory.mktemp("trained-int8")
    cfg = read_meta(onnx.load(str(trained_onnx))).preprocess
    calib = calibration_inputs(None, cfg, count=8, seed=0)[0]
    pre = preprocess_for_quantization(trained_onnx, work / "pre.onnx")
    return pre, calibrate(pre, PhotoDataReader(cfg.input_name, calib), "minmax", work / "cache.json", work), calib


def _quantized(prepared: tuple[Path, Path, np.ndarray], trained_onnx: Path, out: Path) -> Path:
    pre, cache, _ = prepared
    return quantize(pre, out, cpu_target(), cache, {"method": "minmax"}, read_meta(onnx.load(str(trained_onnx))))


def test_score_chain_and_pooled_tail_stay_float(prepared: tuple[Path, Path, np.ndarray], trained_onnx: Path,
                                                tmp_path: Path) -> None:
    graph = onnx.load(str(prepared[0])).graph
    chain, tail = score_chain(graph), pooled_tail(graph)
    kinds = {node.op_type for node in graph.node if node.name in chain}
    assert {"Gemm", "Mul", "Add"} <= kinds  # the head's last layer and the MOS mapping's scale and offset
    assert set(chain) <= set(tail) and any(n.op_type == "Gemm" for n in graph.node if n.name in set(tail) - set(chain))
    model = onnx.load(str(_quantized(prepared, trained_onnx, tmp_path / "model.int8.onnx")))
    float_nodes = [node for node in model.graph.node if node.name in tail]
    assert len(float_nodes) == len(tail)
    producers = {out: node for node in model.graph.node for out in node.output}
    quantized = {node.input[0] for node in model.graph.node if node.op_type == "QuantizeLinear"}
    assert not any(out in quantized for node in float_nodes for out in node.output)  # nothing after them rounds
    entries = {node.op_type for node in float_nodes for name in node.input
               if name in producers and producers[name].op_type == "DequantizeLinear"}
    assert entries == {"GlobalAveragePool"}  # float from the backbones' pooling on
    quantized_ops = Counter(producers[n.input[0]].op_type for n in model.graph.node if n.op_type == "Conv")
    assert quantized_ops["DequantizeLinear"] > 0  # the backbone is quantized
    assert set(read_meta(model).extra["int8"]["score_chain_in_float"]) == set(tail)


def test_gate_bounds_the_error_on_the_mos_scale_by_default(prepared: tuple[Path, Path, np.ndarray],
                                                           trained_onnx: Path, tmp_path: Path) -> None:
    path = _quantized(prepared, trained_onnx, tmp_path / "model.int8.onnx")
    meta = read_meta(onnx.load(str(trained_onnx)))
    mos_range = meta.score_scale.high - meta.score_scale.low
    with OrtRunner(trained_onnx, provider="cpu") as runner:
        reference = Reference("model.onnx", runner.infer, prepared[2])
        check = gate(path, reference, Int8Settings(min_srocc=-1.0), mos_range)
    bound = DEFAULT_MEAN_ABS_FRACTION * mos_range
    assert Int8Settings().mean_abs_bound(mos_range) == pytest.approx(bound)
    assert check.passed == all(c.mean_abs * mos_range <= bound for c in check.comparisons)
    strict = gate(path, reference, Int8Settings(min_srocc=-1.0, mean_abs_mos=check.worst.mean_abs * mos_range / 2),
                  mos_range)
    assert not strict and all(c.srocc >= -1 for c in strict.comparisons)  # failed on the MOS-scale error alone


def test_gate_forgives_only_swaps_of_photos_closer_than_the_rank_resolution(
        prepared: tuple[Path, Path, np.ndarray], trained_onnx: Path, tmp_path: Path) -> None:
    path = _quantized(prepared, trained_onnx, tmp_path / "model.int8.onnx")
    meta = read_meta(onnx.load(str(trained_onnx)))
    mos_range = meta.score_scale.high - meta.score_scale.low
    assert Int8Settings().rank_resolution(mos_range) == pytest.approx(DEFAULT_RANK_RESOLUTION_FRACTION * mos_range)
    held_out, _ = gate_inputs(check_held_out(None, None), meta.preprocess)  # 48 photos: 1128 pairs to keep in order
    with OrtRunner(trained_onnx, provider="cpu") as runner:
        reference = Reference("model.onnx", runner.infer, held_out)

        def judged(resolution: float) -> Int8Gate:
            settings = Int8Settings(min_srocc=1.0, rank_resolution_mos=resolution, mean_abs_mos=mos_range)
            return Int8Gate("cpu", path.name, gate(path, reference, settings, mos_range), gate(path, reference,
                            settings, mos_range), mos_range, mean_abs_bound_mos=mos_range)

        gap = judged(0.0).figures()["flipped_gap_mos"]
        assert gap > 0  # the INT8 copy of this trained model reverses some pairs: SROCC < 1
        assert not judged(0.0) and not judged(gap * 0.99)
        passing = judged(gap * 1.01)
        assert passing and f"orders reversed only within {gap:.3f} MOS" in passing.describe()


def test_strict_gate_searches_every_tensor_and_fails_cleanly(prepared: tuple[Path, Path, np.ndarray],
                                                             trained_onnx: Path, tmp_path: Path) -> None:
    pre, cache, calib = prepared
    meta = read_meta(onnx.load(str(trained_onnx)))
    with OrtRunner(trained_onnx, provider="cpu") as runner:
        reference = Reference("model.onnx", runner.infer, calib)
        result = quantize_and_gate(pre, tmp_path / "model.int8.onnx", cpu_target(),
                                   Int8Settings(min_srocc=0.9999, max_abs_mos=1e-4), cache, meta, reference, calib,
                                   tmp_path)
        ranked = sensitive_nodes(tmp_path / "model.int8.onnx", pre, calib, meta.preprocess.input_name, tmp_path)
        every = quantize(pre, tmp_path / "float.onnx", cpu_target(), cache, {"method": "minmax"}, meta,
                         nodes_of(ranked))
        with OrtRunner(every, provider="cpu") as float_runner:
            np.testing.assert_allclose(float_runner.infer(calib), reference.scores, atol=1e-6)
    assert len(ranked) == len(result.sensitivity_db) > 100  # the MOS mapping's scalars did not crash the ranking
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx.load(str(every)).graph.node)
    # the search went past half of the tensors, found a passing graph there and refused to call it INT8
    passing = [p for p in result.probes if p["passed"] and "tensors_in_float" in p]
    assert passing and min(p["tensors_in_float"] for p in passing) > len(ranked) // 2
    assert not result and "not an INT8 model" in result.refusal
    assert not read_meta(onnx.load(str(tmp_path / "model.int8.onnx"))).extra["int8"]["gate"]["passed"]


def test_sqnr_of_scalars_and_exact_zeros() -> None:
    assert sqnr_db(np.float32(2.0), np.float32(2.0)) == np.inf
    assert sqnr_db(np.zeros(4), np.zeros(4)) == np.inf  # exactly quantized: not "most damaged"
    assert 0 < sqnr_db(np.array(1.0), np.array(1.01)) < 60


def test_cli_report_is_merged_and_written_when_the_gate_fails(trained_checkpoint: Path, tmp_path: Path) -> None:
    checkpoint = Path(shutil.copy(trained_checkpoint, tmp_path / "model.pt"))
    export_all(checkpoint, tmp_path, fp16=True, require_tensorrt=False)
    with pytest.raises(QualityNetError, match="fails the INT8 gate"):
        export_all(checkpoint, tmp_path, int8=Int8Settings(count=8, min_srocc=0.99999, max_abs_mos=1e-6,
                                                           remedy=False))
    report = json.loads((tmp_path / "model.export.json").read_text())
    assert {"fp16_onnx", "int8_onnx", "int8_trt_onnx"} <= set(report["files"])  # the FP16 entry survives
    assert "fp16_onnx" in report["verifications"] and not report["passed"]
    assert not report["int8"]["cpu"]["passed"] and "mean_abs_mos" in report["int8"]["cpu"]
    assert report["int8"]["cpu"]["max_abs_bound_mos"] == pytest.approx(1e-6)
    assert not list(Path.cwd().glob("*.data"))


def test_a_model_named_relative_to_the_working_directory_is_prepared(trained_onnx: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`iqa-export --int8 demo-output/run/model.pt` named the ONNX relative to the caller's folder, and the
    preparation resolved it inside its scratch folder ("No such file or directory")."""
    (tmp_path / "run").mkdir()
    shutil.copy(trained_onnx, tmp_path / "run" / "model.onnx")
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    prepared_model = preprocess_for_quantization(Path("run/model.onnx"), scratch / "pre.onnx")
    assert prepared_model.is_file() and onnx.load(str(prepared_model)).graph.node


# ---- photos held out by content and by group -----------------------------------------------------------------

def test_gate_photos_held_out_by_content(photo_dir: Path, tmp_path: Path) -> None:
    calib = tmp_path / "calib"
    calib.mkdir()
    shutil.copy(photo_dir / "astronaut.jpg", calib / "renamed.jpg")  # same content, another path
    with pytest.raises(QualityNetError, match="both calibration and gate photos.*content"):
        check_held_out(photo_dir, calib)


def test_gate_photos_of_calibration_groups_leave_the_gate(demo_dataset: Path) -> None:
    held = check_held_out(demo_dataset, None)  # bundled calibration: astronaut, chelsea, rocket, ...
    assert held.record["disjoint_by"] == ["content (file SHA-256)", "group"]
    assert held.record["left_out"]["groups"] == ["astronaut", "chelsea", "rocket"]
    assert held.photos and not any(Path(p).name.startswith(("astronaut", "chelsea", "rocket")) for p in held.photos)


# ---- the CPU's instruction set ------------------------------------------------------------------------------

def test_reduce_range_without_vnni_and_the_class_recorded(prepared: tuple[Path, Path, np.ndarray],
                                                          trained_onnx: Path, tmp_path: Path) -> None:
    assert cpu_target("x86_64", {"avx2", "avx512f"}).reduce_range
    assert not cpu_target("x86_64", {"avx2", "avx512f", "avx512_vnni"}).reduce_range
    other = X86_NO_VNNI if int8_class() == X86_VNNI else X86_VNNI
    target = cpu_target("x86_64", {"avx2"} if other == X86_NO_VNNI else {"avx512_vnni"})
    pre, cache, _ = prepared
    path = quantize(pre, tmp_path / "model.int8.onnx", target, cache, {"method": "minmax"},
                    read_meta(onnx.load(str(trained_onnx))))
    record = read_meta(onnx.load(str(path))).extra["int8"]
    assert record["instruction_set"] == other
    assert any("VNNI" in concern for concern in int8_concerns(record))
    assert any("no INT8 accuracy gate" in concern for concern in int8_concerns(record))


def test_scorer_warns_on_a_model_for_the_other_cpu_class(prepared: tuple[Path, Path, np.ndarray],
                                                         trained_onnx: Path, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    other = X86_NO_VNNI if int8_class() == X86_VNNI else X86_VNNI
    target = cpu_target("x86_64", {"avx2"} if other == X86_NO_VNNI else {"avx512_vnni"})
    path = quantize(prepared[0], tmp_path / "model.int8.onnx", target, prepared[1], {"method": "minmax"},
                    read_meta(onnx.load(str(trained_onnx))))
    with caplog.at_level(logging.WARNING, logger="qualitynet.runtime.scorer"), Scorer(path, batch_size=2):
        pass
    assert "VNNI" in caplog.text and "no INT8 accuracy gate" in caplog.text


# ---- the lite graph -----------------------------------------------------------------------------------------

def test_lite_graph_has_static_padding_and_prepares_for_quantization(tmp_path: Path) -> None:
    checkpoint = save_untrained_checkpoint(tmp_path / "model.pt", "lite")
    path = export_onnx(checkpoint, tmp_path / "model.onnx")
    ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert not ops["Shape"] and not ops["Gather"] and not ops["Pad"], ops
    model = load_checkpoint(checkpoint).build_model()
    inputs = calibration_inputs(None, load_checkpoint(checkpoint).preprocess, count=2)[0]
    import torch

    with torch.no_grad():
        expected = model(torch.from_numpy(inputs)).numpy().reshape(-1)
    with OrtRunner(path, provider="cpu") as runner:
        np.testing.assert_allclose(runner.infer(inputs), expected, atol=1e-4)
    preprocess_for_quantization(path, tmp_path / "pre.onnx")  # raised "Incomplete symbolic shape inference"


# ---- TensorRT records (no TensorRT needed) ---------------------------------------------------------------

def test_pascal_calibration_cache_is_keyed(trained_onnx: Path, tmp_path: Path) -> None:
    from qualitynet.export.trt_calibration import calibration_cache_key, read_calibration_cache, write_calibration_cache

    meta = read_meta(onnx.load(str(trained_onnx)))
    inputs = np.zeros((8, 3, 4, 4), np.float32)
    key = calibration_cache_key(meta, inputs, "8.6.1")
    cache = tmp_path / "model.int8.plan.calib"
    cache.write_bytes(b"a cache of unknown origin")
    assert read_calibration_cache(cache, key) is None  # a file at the path is not enough
    write_calibration_cache(cache, key, b"ranges")
    assert read_calibration_cache(cache, key) == b"ranges"
    for other in (calibration_cache_key(meta, inputs, "8.6.2"), calibration_cache_key(meta, inputs + 1, "8.6.1")):
        assert read_calibration_cache(cache, other) is None
    meta.checkpoint_sha256 = "0" * 64
    assert read_calibration_cache(cache, calibration_cache_key(meta, inputs, "8.6.1")) is None


def test_plan_precision_and_rebuild_hint_come_from_the_sidecar(trained_onnx: Path, tmp_path: Path) -> None:
    from qualitynet.bench.subjects import plan_precision
    from qualitynet.runtime.trt_compat import rebuild_hint

    meta = read_meta(onnx.load(str(trained_onnx)))
    meta.precision = "fp32"  # what a P5000 build records: FP16 runs at 1/64 rate there
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"engine")
    meta.write_sidecar(plan)
    assert plan_precision(plan) == "fp32"
    assert "iqa-run model.onnx" in rebuild_hint("fp32") and "model.fp16.onnx" in rebuild_hint("fp16")
