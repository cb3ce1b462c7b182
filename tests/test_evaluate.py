"""Evaluation primitives: grouped splits never share a group, metrics, recalibration, conformal coverage on a
problem with known noise, and intervals clipped at physical bounds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellmfg.dataio import row_groups
from cellmfg.domain import MASS_LOADING, TORTUOSITY
from training import evaluate


def _replicate_groups(rng: np.random.Generator, sheets: int) -> np.ndarray:
    sizes = rng.integers(1, 8, sheets)
    return np.repeat([f"sheet{i:03d}" for i in range(sheets)], sizes)


@pytest.mark.parametrize("seed", range(25))
def test_no_group_on_both_sides_of_any_split(seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = rng.permutation(_replicate_groups(rng, int(rng.integers(6, 60))))
    for split in evaluate.repeated_grouped_splits(groups, seed, 3, 0.3, 3):
        assert evaluate.groups_disjoint(groups, split.train, split.test)
        assert evaluate.groups_disjoint(groups, *split.folds)
        assert evaluate.groups_disjoint(groups, split.test, *split.folds)
        # The folds partition the training part; train and test partition the data.
        assert np.array_equal(np.sort(np.concatenate(split.folds)), split.train)
        assert np.array_equal(np.sort(np.concatenate([split.train, split.test])), np.arange(len(groups)))
        for fold in range(len(split.folds)):
            assert evaluate.groups_disjoint(groups, split.fold_train(fold), split.folds[fold])


def test_test_share_is_close_to_the_fraction_and_splits_differ() -> None:
    groups = np.repeat([f"g{i}" for i in range(40)], 3)
    splits = evaluate.repeated_grouped_splits(groups, 1, 20, 0.3, 3)
    shares = [len(s.test) / len(groups) for s in splits]
    assert all(abs(share - 0.3) <= 0.03 for share in shares)
    assert len({tuple(s.test) for s in splits}) == 20


def test_csv_without_group_id_groups_identical_inputs() -> None:
    frame = pd.DataFrame({
        "fiber_diameter_um": [6.0, 6.0, 7.0, 8.0], "fiber_concentration_pct": [10.0, 10.0, 10.0, 10.0],
        "binder_concentration_pct": [5.0, 5.0, 5.0, 5.0], "thickness_um": [300.0, 300.0, 300.0, 300.0],
        "compression_factor": [0.1, 0.1, 0.1, 0.2], "tortuosity": [1.05, 1.06, 1.07, 1.08]})
    groups = row_groups(frame, "gdl")
    assert groups[0] == groups[1] and len(set(groups)) == 3
    split = evaluate.grouped_split(groups, 0, 0.3, 2)
    assert evaluate.groups_disjoint(groups, split.train, split.test)


def test_too_few_groups_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 3"):
        evaluate.grouped_split(np.asarray(["a", "a", "b", "b"]), 0, 0.3, 2)


def test_metrics_and_recalibration() -> None:
    y = np.asarray([1.0, 2.0, 4.0])
    assert evaluate.mape_pct(y, y * 1.1) == pytest.approx(10.0)
    assert evaluate.r2(y, y) == pytest.approx(1.0)
    prediction = np.asarray([0.5, 1.0, 3.0, 7.0])
    a, b = evaluate.linear_recalibration(prediction, 2.0 * prediction + 1.0)
    assert (a, b) == (pytest.approx(2.0), pytest.approx(1.0))
    assert evaluate.linear_recalibration(np.ones(4), np.asarray([1.0, 2.0, 3.0, 4.0])) == (0.0, 2.5)


def test_conformal_quantile_finite_sample_rank() -> None:
    residuals = np.arange(1, 20, dtype=float)  # n = 19: rank ceil(20 * 0.9) = 18
    assert evaluate.conformal_quantile(residuals, 0.9) == 18.0
    assert evaluate.conformal_quantile(np.asarray([3.0, 1.0]), 0.9) == 3.0  # too few rows: the largest
    with pytest.raises(ValueError):
        evaluate.conformal_quantile(np.asarray([]), 0.9)


def test_interval_coverage_with_known_noise_is_nominal() -> None:
    """y = f(x)·(1 + ε), ε ~ N(0, 5 %), the model is f itself; calibrate on 30 rows, measure on fresh rows."""
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(400):
        truth = rng.uniform(5.0, 20.0, 230)
        y = truth * (1.0 + rng.normal(0.0, 0.05, 230))
        quantile = evaluate.conformal_quantile(evaluate.relative_residuals(y[:30], truth[:30]), 0.9)
        low, high = evaluate.interval(truth[30:], quantile, 0.0, None)
        covered.append(np.mean((y[30:] >= low) & (y[30:] <= high)))
    assert abs(float(np.mean(covered)) - 0.9) <= 0.05


def test_grouped_leave_one_group_out_coverage_is_nominal() -> None:
    """Replicate groups share a sheet effect; coverage measured group by group stays near nominal."""
    rng = np.random.default_rng(1)
    results = []
    for _ in range(200):
        groups = np.repeat([f"s{i}" for i in range(12)], 3)
        sheet = np.repeat(rng.normal(0.0, 0.04, 12), 3)
        truth = rng.uniform(1.0, 3.0, len(groups))
        y = truth * (1.0 + sheet + rng.normal(0.0, 0.02, len(groups)))
        results.append(evaluate.grouped_coverage(y, truth, groups, 0.9, 0.0, None))
    assert abs(np.mean([r.coverage for r in results]) - 0.9) <= 0.05
    assert all(r.rows == 36 for r in results)
    assert 0.05 < np.mean([r.mean_relative_width for r in results]) < 0.5


def test_intervals_clipped_at_physical_bounds() -> None:
    low, high = evaluate.interval(np.asarray([0.5, 7.25]), 1.7, MASS_LOADING.quantity.physical_min,
                                  MASS_LOADING.quantity.physical_max)
    assert np.all(low >= 0.0) and low[1] == 0.0 and high[1] == pytest.approx(7.25 * 2.7)
    low, high = evaluate.interval(np.asarray([1.02, 1.10]), 0.05, TORTUOSITY.quantity.physical_min,
                                  TORTUOSITY.quantity.physical_max)
    assert np.all(low >= 1.0) and low[0] == 1.0 and high[1] == pytest.approx(1.155)
    # A prediction below the bound gives an interval at the bound, never a reversed one.
    low, high = evaluate.interval(np.asarray([-1.0]), 0.5, 0.0, None)
    assert low[0] == 0.0 and high[0] == 0.0
