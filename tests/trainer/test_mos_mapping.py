"""The MOS mapping: increasing, fitted on the data it is given, the same formula in numpy and torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qualitynet.artifact import MosMapping, ScoreScale
from qualitynet.trainer.metrics import logistic4
from qualitynet.trainer.mos_mapping import BOUNDED_PREFERENCE, MosMappingLayer, apply_mos_mapping, fit_mos_mapping

SCALE = ScoreScale(1.0, 5.0, "MOS 1-5")


def test_off_scale_saturating_predictions_get_an_increasing_logistic_inside_the_scale() -> None:
    rng = np.random.default_rng(0)
    raw = rng.uniform(-6.0, -2.0, 300)  # ranks well, but nowhere near the 1-5 scale
    mos = logistic4(raw, 4.8, 1.2, -4.0, 0.4) + rng.normal(0, 0.05, raw.size)
    mapping = fit_mos_mapping(raw, mos, SCALE)
    assert mapping.kind == "logistic4" and mapping.fitted_on == "val"
    b1, b2, _, b4 = mapping.params
    assert 1.0 <= b2 <= b1 <= 5.0 and b4 > 0
    mapped = apply_mos_mapping(mapping, SCALE, raw)
    assert np.sqrt(np.mean((mapped - mos) ** 2)) < 0.1
    grid = apply_mos_mapping(mapping, SCALE, np.linspace(-8, 0, 200))
    assert np.all(np.diff(grid) >= 0) and np.all((grid >= 1.0) & (grid <= 5.0))


def test_a_line_that_fits_clearly_better_wins() -> None:
    rng = np.random.default_rng(1)
    raw = rng.uniform(0.0, 1.0, 200)
    mos = 1.5 + 3.0 * raw + rng.normal(0, 0.05, raw.size)  # a straight line inside the scale
    mapping = fit_mos_mapping(raw, mos, SCALE)
    assert mapping.kind == "linear"
    assert mapping.params == pytest.approx(tuple(np.polyfit(raw, mos, 1)))


def test_a_noisy_validation_split_gets_the_logistic_that_keeps_unseen_scores_on_the_scale() -> None:
    # 34 validation images of 5 levels, ranked noisily (a demo model's validation split): the line fits them
    # slightly better than the logistic, and would put unseen images far off the 1-5 scale.
    rng = np.random.default_rng(5)
    mos = np.repeat([1.0, 2.0, 3.0, 4.0, 5.0], 7)[:34]
    raw = (mos - 3.0) / 2.0 + rng.normal(0, 0.5, mos.size)
    line = MosMapping("linear", tuple(np.polyfit(raw, mos, 1)))
    assert not np.all((apply_mos_mapping(line, SCALE, np.array([-4.0, 4.0])) >= 1) &
                      (apply_mos_mapping(line, SCALE, np.array([-4.0, 4.0])) <= 5))
    mapping = fit_mos_mapping(raw, mos, SCALE)
    assert mapping.kind == "logistic4"
    errors = [np.sqrt(np.mean((apply_mos_mapping(m, SCALE, raw) - mos) ** 2)) for m in (line, mapping)]
    assert errors[0] < errors[1] < errors[0] / (1 - BOUNDED_PREFERENCE)
    unseen = apply_mos_mapping(mapping, SCALE, np.linspace(-4.0, 4.0, 81))
    assert np.all((unseen >= 1.0) & (unseen <= 5.0)) and np.all(np.diff(unseen) > 0)


def test_backward_predictions_keep_the_identity() -> None:
    raw = np.linspace(1, 5, 50)
    mapping = fit_mos_mapping(raw, raw[::-1].copy(), SCALE)
    assert mapping.kind == "identity"
    assert np.array_equal(apply_mos_mapping(mapping, SCALE, raw), raw)


@pytest.mark.parametrize("mapping", [MosMapping("logistic4", (4.6, 1.3, 2.2, 0.7)), MosMapping("linear", (0.8, 0.9))])
def test_the_layer_on_the_unit_scale_is_the_formula_on_the_mos_scale(mapping: MosMapping) -> None:
    mos = np.linspace(0.0, 6.0, 61)
    expected = logistic4(mos, *mapping.params) if mapping.kind == "logistic4" else np.polyval(mapping.params, mos)
    layer = MosMappingLayer(mapping, SCALE)
    unit = torch.from_numpy(SCALE.to_unit(mos).astype(np.float32))[:, None]
    with torch.no_grad():
        got = SCALE.to_mos(layer(unit).numpy().ravel())
    assert got == pytest.approx(expected, abs=1e-5)


def test_a_few_validation_points_do_not_get_a_step_that_flattens_unseen_scores() -> None:
    raw = np.array([0.10, 0.11, 0.12, 0.13, 0.50, 0.51, 0.52, 0.53])  # two clusters: a step fits them exactly
    mos = np.array([1.0, 1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0])
    mapping = fit_mos_mapping(raw, mos, SCALE)
    unseen = apply_mos_mapping(mapping, SCALE, np.linspace(0.2, 0.45, 6))
    assert np.all(np.diff(unseen) > 1e-3)  # unseen images between the clusters keep their order


def test_a_nearly_constant_model_keeps_the_ranking_of_unseen_scores() -> None:
    rng = np.random.default_rng(2)
    mos = rng.uniform(1, 5, 20)
    raw = 3.0 + 1e-4 * (mos - 3) + rng.normal(0, 2e-5, mos.size)  # undertrained: output barely moves
    mapping = fit_mos_mapping(raw, mos, SCALE)
    unseen = apply_mos_mapping(mapping, SCALE, 3.0 + np.linspace(-0.02, 0.02, 9))  # a little outside
    assert np.all(np.diff(unseen) > 0)
