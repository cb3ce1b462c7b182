"""Live accuracy and input drift (service.ledger.live): pure functions checked against hand-computed values."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from service.ledger.live import (
    PSI_FLOOR,
    FeatureReference,
    ScoredOutcomes,
    bootstrap_mape_interval,
    error_series,
    feature_drift,
    input_drift,
    interval_coverage,
    live_accuracy,
    mape_pct,
    psi,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def scored(predicted: list[float], measured: list[float], groups: list[str | None] | None = None,
           low: list[float] | None = None, high: list[float] | None = None,
           in_domain: list[bool] | None = None, hours: list[int] | None = None) -> ScoredOutcomes:
    n = len(measured)
    return ScoredOutcomes(
        predicted=np.array(predicted, dtype=float), measured=np.array(measured, dtype=float),
        interval_low=np.array(low if low is not None else [math.nan] * n, dtype=float),
        interval_high=np.array(high if high is not None else [math.nan] * n, dtype=float),
        in_domain=np.array(in_domain if in_domain is not None else [True] * n, dtype=bool),
        groups=np.array(groups if groups is not None else [None] * n, dtype=object),
        predicted_at=np.array([T0 + timedelta(hours=h) for h in (hours or range(n))], dtype=object))


def test_mape_is_the_mean_absolute_percentage_error() -> None:
    # |2-2.2|/2 = 10 %, |4-3|/4 = 25 %, |5-5|/5 = 0 %  -> 35/3 %
    assert mape_pct(np.array([2.0, 4.0, 5.0]), np.array([2.2, 3.0, 5.0])) == pytest.approx(35 / 3)
    assert mape_pct(np.array([]), np.array([])) is None


def test_the_bootstrap_resamples_whole_groups() -> None:
    # Ten rows of sheet A off by 10 %, ten of sheet B off by 30 %. Resampling the two sheets can only give MAPEs
    # of 10, 20 or 30 % (with chances 1/4, 1/2, 1/4), so the 95 % interval is [10, 30]; resampling rows instead
    # pretends to twenty independent errors and gives a much narrower interval around 20 %.
    measured = np.full(20, 100.0)
    predicted = np.array([110.0] * 10 + [130.0] * 10)
    groups = np.array(["A"] * 10 + ["B"] * 10, dtype=object)
    low, high = bootstrap_mape_interval(measured, predicted, groups, resamples=4000) or (0, 0)
    assert (low, high) == pytest.approx((10.0, 30.0))
    row_low, row_high = bootstrap_mape_interval(measured, predicted, None, resamples=4000) or (0, 0)
    assert 14 < row_low < 20 < row_high < 26
    assert bootstrap_mape_interval(measured, predicted, groups, seed=3) == \
        bootstrap_mape_interval(measured, predicted, groups, seed=3)


def test_identical_errors_give_a_point_interval_and_rows_without_a_group_stand_alone() -> None:
    measured, predicted = np.full(6, 2.0), np.full(6, 2.1)  # 5 % each
    assert bootstrap_mape_interval(measured, predicted, np.array([None, "", "s", "s", None, "t"], dtype=object)) == \
        pytest.approx((5.0, 5.0))


def test_interval_coverage_counts_rows_inside_their_interval_and_skips_rows_without_one() -> None:
    measured = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    low = np.array([0.5, 2.5, 2.0, math.nan, 5.0])
    high = np.array([1.5, 3.0, 3.0, math.nan, 6.0])
    assert interval_coverage(measured, low, high) == (0.75, 4)  # 1 in, 2 out, 3 on the edge (in), 5 on the edge
    assert interval_coverage(measured[:1], low[3:4], high[3:4]) == (None, 0)


def test_live_accuracy_over_the_last_n_and_since_promotion() -> None:
    # errors (%): 10, 20, 30, 40, 50 in order of measurement; predicted at hours 0..4; promoted at hour 3
    data = scored(predicted=[1.1, 1.2, 1.3, 1.4, 1.5], measured=[1.0] * 5,
                  low=[1.0, 1.0, math.nan, 0.0, 0.0], high=[1.2, 1.1, math.nan, 0.5, 2.0],
                  in_domain=[True, True, False, True, False])
    live = live_accuracy(data, last_n=2, promoted_at=T0 + timedelta(hours=3), resamples=500)
    assert live.n_outcomes == 5
    assert (live.last_n.n, live.last_n.mape_pct) == (2, pytest.approx(45.0))
    assert live.since_promotion is not None
    assert (live.since_promotion.n, live.since_promotion.mape_pct) == (2, pytest.approx(45.0))
    assert live.since_promotion.since == "2026-05-01T03:00:00+00:00"
    assert live.since_promotion.interval_pct is not None
    assert live.last_n.interval_pct is not None and 40 - 1e-9 <= live.last_n.interval_pct[0] <= 45
    assert (live.interval_coverage, live.n_with_interval) == (0.75, 4)  # row 4 (measured 1.0) outside [0, 0.5]
    assert live.share_in_domain == pytest.approx(0.6)
    everything = live_accuracy(data, resamples=500)
    assert everything.last_n.n == 5 and everything.last_n.mape_pct == pytest.approx(30.0)
    assert everything.since_promotion is None
    none = live_accuracy(scored([], []), promoted_at=T0)
    assert none.n_outcomes == 0 and none.last_n.mape_pct is None and none.share_in_domain is None


def test_psi_against_equal_probability_training_bins_by_hand() -> None:
    edges = (0.0, 1.0, 2.0, 3.0, 4.0)  # four bins of training share 1/4
    same = np.array([0.5, 1.5, 2.5, 3.5] * 5)
    assert psi(same, edges) == pytest.approx(0.0)
    shifted = np.array([0.5] * 10)  # all in the first bin
    expected = (1 - 0.25) * math.log(1 / 0.25) + 3 * (PSI_FLOOR - 0.25) * math.log(PSI_FLOOR / 0.25)
    assert psi(shifted, edges) == pytest.approx(expected)
    # beyond the training range counts in the outer bins: half below 0, half above 4
    outer = np.array([-1.0] * 5 + [9.0] * 5)
    expected_outer = 2 * (0.5 - 0.25) * math.log(0.5 / 0.25) + 2 * (PSI_FLOOR - 0.25) * math.log(PSI_FLOOR / 0.25)
    assert psi(outer, edges) == pytest.approx(expected_outer)
    assert psi(np.array([]), edges) is None
    with pytest.raises(ValueError, match="sorted"):
        psi(same, (1.0, 0.0))


def test_psi_of_a_feature_the_training_data_held_constant() -> None:
    # Coating speed 0.3 m/min in every training row: all edges tie, the whole training share sits at 0.3.
    edges = (0.3,) * 11
    assert psi(np.full(8, 0.3), edges) == pytest.approx(0.0)
    moved = psi(np.full(8, 0.5), edges)  # all live values off it: each side has a bin the other never reaches
    expected = (PSI_FLOOR - 1.0) * math.log(PSI_FLOOR / 1.0) + (1.0 - PSI_FLOOR) * math.log(1.0 / PSI_FLOOR)
    assert moved == pytest.approx(expected)
    # Half the training rows at 0.3, the rest spread over (0.3, 0.7]: bins {0.3}: 1/2, (0.3, 0.5]: 1/4, (0.5, ∞): 1/4
    partly = (0.3, 0.3, 0.3, 0.5, 0.7)
    assert psi(np.array([0.3, 0.3, 0.4, 0.6]), partly) == pytest.approx(0.0)
    at_point = (1 - 0.5) * math.log(1 / 0.5) + 2 * (PSI_FLOOR - 0.25) * math.log(PSI_FLOOR / 0.25)
    assert psi(np.full(4, 0.3), partly) == pytest.approx(at_point)


def test_feature_drift_reports_the_share_outside_the_training_range() -> None:
    reference = FeatureReference(training_min=20.0, training_max=206.0,
                                 quantile_edges=(20.0, 60.0, 100.0, 150.0, 206.0))
    drift = feature_drift(np.array([10.0, 50.0, 120.0, 250.0, math.nan]), reference)
    assert (drift.n, drift.share_outside) == (4, 0.5)
    assert drift.psi is not None and drift.psi > 0
    both = input_drift({"roll_gap_um": np.array([50.0])}, {"roll_gap_um": reference, "comma_gap_um": reference})
    assert both["roll_gap_um"].share_outside == 0.0 and both["comma_gap_um"].n == 0


def test_the_error_series_is_in_order_of_prediction_with_a_trailing_rolling_mape() -> None:
    # Measured in the order 10, 20, 30, 40, 50 % error, but predicted at hours 4, 0, 1, 2, 3: by prediction time
    # the errors are 20, 30, 40, 50, 10; a window of 2 averages each with the one before (the first alone).
    data = scored(predicted=[1.1, 1.2, 1.3, 1.4, 1.5], measured=[1.0] * 5, hours=[4, 0, 1, 2, 3])
    series = error_series(data, limit=5, window=2)
    hour = 3600
    start = int(T0.timestamp())
    assert series.predicted_at == (start, start + hour, start + 2 * hour, start + 3 * hour, start + 4 * hour)
    assert series.ape_pct == pytest.approx((20.0, 30.0, 40.0, 50.0, 10.0))
    assert series.rolling_mape_pct == pytest.approx((20.0, 25.0, 35.0, 45.0, 30.0))
    # Bounded: the last `limit` measured (40 and 50 %, predicted at hours 2 and 3), whatever their prediction time.
    last_two = error_series(data, limit=2, window=20)
    assert last_two.ape_pct == pytest.approx((40.0, 50.0)) and last_two.rolling_mape_pct == pytest.approx((40.0, 45.0))
    assert error_series(scored([], [])).ape_pct == ()
    with pytest.raises(ValueError, match="window 0"):
        error_series(data, window=0)


def test_the_error_series_keeps_four_significant_digits_and_the_default_bound() -> None:
    n = 250
    data = scored(predicted=[1.0 + 1 / 3] * n, measured=[1.0] * n)
    live = live_accuracy(data, resamples=50)
    assert len(live.recent_errors.ape_pct) == 200 and live.recent_errors.window == 20
    assert live.recent_errors.ape_pct[0] == 33.33  # 33.333… % to four digits
