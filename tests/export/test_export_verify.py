"""Parity checks: tolerances, the comparator's semantics, and that real bugs fail verification."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from qualitynet.artifact import PreprocessCfg
from qualitynet.errors import QualityNetError
from qualitynet.export import TOLERANCES, ExportResult, Reference, Tolerance, compare, load_photos, torch_scorer, verify
from qualitynet.runtime.ort_runner import OrtRunner
from qualitynet.trainer.checkpoint import load_checkpoint

TIGHT = Tolerance(atol=1e-3, rtol=1e-3, min_srocc=0.99)


def test_fp32_export_matches_torch_within_tolerance(tiny_export: ExportResult) -> None:
    check = tiny_export.verifications["onnx"]
    assert check and check.reference == "torch" and check.photos == 8
    assert [c.batch_size for c in check.comparisons] == [1, 8]
    for comparison in check.comparisons:
        assert comparison.max_abs < 1e-4  # measured 1.4e-5 on this model
        assert comparison.max_abs <= comparison.tolerance.atol
        assert comparison.srocc > 0.999
    assert tiny_export.report.is_file()


def test_compare_fails_only_when_both_tolerances_are_exceeded() -> None:
    reference = np.array([0.1, 0.5, 2.0, 3.0])
    small_abs = compare(reference, reference + [5e-4, 0, 0, 0], TIGHT)
    assert small_abs and small_abs.max_abs == pytest.approx(5e-4)
    relative_ok = compare(reference, reference + [0, 0, 0, 2e-3], TIGHT)  # 2e-3 > atol, but 6.7e-4 relative
    assert relative_ok and relative_ok.max_rel == pytest.approx(2e-3 / 3)
    both = compare(reference, reference + [2e-3, 0, 0, 0], TIGHT)
    assert not both and both.mismatches == 1


def test_compare_reports_reordering_and_non_finite_scores() -> None:
    reference = np.linspace(0, 1, 8)
    swapped = compare(reference, reference[::-1], Tolerance(atol=0.05, rtol=0.05, min_srocc=0.99))
    assert not swapped and swapped.srocc == pytest.approx(-1)
    nan = compare(reference, np.where(reference > 0.5, np.nan, reference), Tolerance(10, 10, 0.0))
    assert not nan and math.isinf(nan.max_abs)


def test_constant_reference_checks_values_not_ranks() -> None:
    flat = np.full(6, 0.25)
    assert compare(flat, flat + 1e-6, TIGHT)
    assert not compare(flat, flat + np.linspace(0, 0.01, 6), TIGHT)
    # scores spread less than 10 x atol (a collapsed model): shuffled ranks within the bounds pass
    nearly_flat = 0.25 + np.linspace(0, 3e-8, 6)
    assert compare(nearly_flat, nearly_flat[::-1], TIGHT)
    # spread wider than that: two neighbours swapped within atol fail on SROCC alone
    spread = np.linspace(0, 1, 21)
    swapped = spread.copy()
    swapped[[2, 3]] = swapped[[3, 2]]
    check = compare(spread, swapped, Tolerance(atol=0.06, rtol=1.0, min_srocc=0.9995))
    assert check.mismatches == 0 and not check


def test_a_rank_resolution_forgives_swaps_of_photos_scored_closer_than_it_and_no_others() -> None:
    # 35 photos crowded within 0.001 of a ceiling and 13 spread below it, as a trained model's scores
    reference = np.concatenate([np.linspace(0.0, 0.45, 13), 0.461 + np.linspace(0, 0.001, 35)])
    near = reference.copy()
    near[13:] = near[13:][::-1]  # the crowded photos in reverse order: SROCC 0.22
    far = reference.copy()
    far[[0, 12]] = far[[12, 0]]  # two photos 0.45 apart swapped
    srocc_alone = Tolerance(atol=1.0, rtol=0.0, min_srocc=0.99)
    resolved = dataclasses.replace(srocc_alone, rank_resolution=0.002)
    assert not compare(reference, near, srocc_alone, rank_spread=0.0)  # judged on ranks, as the INT8 gate is
    check = compare(reference, near, resolved, rank_spread=0.0)
    assert check and check.srocc < 0.99 and check.flipped_gap == pytest.approx(0.001)
    assert "largest reversed gap 1.00e-03" in check.summary()
    check = compare(reference, far, resolved, rank_spread=0.0)
    assert not check and check.mismatches == 0 and check.flipped_gap == pytest.approx(0.45)
    exact = dataclasses.replace(srocc_alone, min_srocc=1.0, rank_resolution=1e-9)
    assert compare(reference, reference + 1e-3, exact, rank_spread=0.0)


def test_perturbed_onnx_weight_fails_verification(tiny_export: ExportResult, photo_dir: Path, tmp_path: Path) -> None:
    """A bias of the score layer shifted by 0.01 (a 1 % slip on the unit scale) must be caught."""
    model = onnx.load(str(tiny_export.onnx))
    bias = next(t for t in model.graph.initializer if t.name == "output.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32(0.01), bias.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    checkpoint = load_checkpoint(tiny_export.checkpoint)
    inputs, _ = load_photos(photo_dir, checkpoint.preprocess)
    reference = Reference("torch", torch_scorer(checkpoint.build_model()), inputs)
    with OrtRunner(broken, provider="cpu") as runner:
        check = verify(runner.infer, reference, "broken.onnx")
    assert not check
    assert check.worst.max_abs == pytest.approx(0.01, rel=0.05)


def test_batchnorm_in_train_mode_fails_verification(tiny_export: ExportResult, photo_dir: Path) -> None:
    checkpoint = load_checkpoint(tiny_export.checkpoint)
    inputs, _ = load_photos(photo_dir, checkpoint.preprocess)
    reference = Reference("torch (train mode)", torch_scorer(checkpoint.build_model().train()), inputs)
    torch.manual_seed(0)
    with OrtRunner(tiny_export.onnx, provider="cpu") as runner:
        assert not verify(runner.infer, reference, "model.onnx")


def test_wrong_normalisation_fails_verification(tiny_export: ExportResult, photo_dir: Path) -> None:
    checkpoint = load_checkpoint(tiny_export.checkpoint)
    inputs, _ = load_photos(photo_dir, checkpoint.preprocess)
    reference = Reference("torch", torch_scorer(checkpoint.build_model()), inputs)
    std = np.asarray(checkpoint.preprocess.std, np.float32)[:, None, None]
    with OrtRunner(tiny_export.onnx, provider="cpu") as runner:
        # the runtime forgetting to divide by std: pixels stay mean-subtracted only
        check = verify(lambda batch: runner.infer(np.ascontiguousarray(batch * std)), reference, "model.onnx")
    assert not check


def test_noise_floor_widens_only_atol() -> None:
    widened = TOLERANCES["fp32"].widened(1e-4)
    assert widened.atol == pytest.approx(1e-3)
    assert (widened.rtol, widened.min_srocc) == (TOLERANCES["fp32"].rtol, TOLERANCES["fp32"].min_srocc)
    assert TOLERANCES["fp32"].widened(0.0) == TOLERANCES["fp32"]


def test_load_photos_takes_a_folder_and_needs_two(photo_dir: Path, tmp_path: Path) -> None:
    inputs, names = load_photos(photo_dir, PreprocessCfg(height=32, width=48))
    assert inputs.shape == (8, 3, 32, 48) and inputs.dtype == np.float32
    assert names == sorted(names) and all(Path(n).parent == photo_dir for n in names)
    with pytest.raises(QualityNetError, match="at least 2 photos"):
        load_photos(tmp_path, PreprocessCfg())
