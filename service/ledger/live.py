"""Live accuracy of a served model version from its measured predictions, and input drift against its training
data: pure functions on arrays, so each figure can be checked by hand.

- MAPE (%) over the last N outcomes and over those predicted since a promotion, each with a percentile bootstrap
  interval that resamples whole groups (a coated sheet's replicates share its error, so resampling rows would
  pretend to more evidence than there is). When the version was promoted is read from the ledger itself
  (service.ledger.tenure.serving_since): the start of its current run as the answering version of its alias.
- The error series the page draws: each recent outcome's absolute percentage error in order of prediction time,
  with a trailing rolling MAPE, bounded to the last `DEFAULT_SERIES_LIMIT` outcomes.
- Interval coverage: the share of measured values inside their prediction interval (rows that had one).
- Share in domain: of the measured predictions, how many had every feature inside the training range.
- Per feature: the share of recent inputs outside the training range, and the population stability index (PSI)
  of recent inputs against training quantile edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_LAST_N = 50
DEFAULT_RESAMPLES = 2000
DEFAULT_LEVEL = 0.95
# The page's error-over-time chart: at most this many recent outcomes per model (GET /models stays small: about
# 5 kB per model), and the rolling MAPE over this many consecutive outcomes.
DEFAULT_SERIES_LIMIT = 200
DEFAULT_ROLLING_WINDOW = 20
# PSI takes the log of shares: an empty bin counts as this share instead of zero (the usual practice).
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class ScoredOutcomes:
    """Measured predictions of one model (version), one entry per (row, target), in order of measurement."""

    predicted: np.ndarray
    measured: np.ndarray
    interval_low: np.ndarray  # NaN: no interval was asked for
    interval_high: np.ndarray
    in_domain: np.ndarray
    groups: np.ndarray  # the client's group id, or None
    predicted_at: np.ndarray  # aware datetimes

    def __len__(self) -> int:
        return len(self.measured)

    def select(self, mask: np.ndarray) -> ScoredOutcomes:
        return ScoredOutcomes(self.predicted[mask], self.measured[mask], self.interval_low[mask],
                              self.interval_high[mask], self.in_domain[mask], self.groups[mask],
                              self.predicted_at[mask])

    def last(self, n: int) -> ScoredOutcomes:
        return self.select(np.arange(len(self)) >= len(self) - n)


class MapeFigure(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    mape_pct: float | None
    interval_pct: tuple[float, float] | None = Field(description="percentile bootstrap interval over groups")


class PromotionFigure(MapeFigure):
    since: str = Field(description="ISO 8601 UTC time the version's run as the served version began")


class ErrorSeries(BaseModel):
    """The last outcomes of a model version in order of prediction time: the page's error-over-time chart."""

    model_config = ConfigDict(frozen=True)

    window: int = Field(description="outcomes per rolling MAPE")
    predicted_at: tuple[int, ...] = Field(description="Unix time (s, UTC) each measured row was predicted")
    ape_pct: tuple[float, ...] = Field(description="absolute percentage error of each (4 significant digits)")
    rolling_mape_pct: tuple[float, ...] = Field(description="MAPE of this outcome and the `window` - 1 before it")


class LiveAccuracy(BaseModel):
    model_config = ConfigDict(frozen=True)

    n_outcomes: int
    last_n: MapeFigure
    since_promotion: PromotionFigure | None
    interval_coverage: float | None = Field(description="share of measured values inside their interval")
    n_with_interval: int
    share_in_domain: float | None
    recent_errors: ErrorSeries


class FeatureReference(BaseModel):
    """A feature's training range and sorted training quantile edges (equal-probability bins between them)."""

    model_config = ConfigDict(frozen=True)

    training_min: float
    training_max: float
    quantile_edges: tuple[float, ...] = Field(min_length=2)


class FeatureDrift(BaseModel):
    model_config = ConfigDict(frozen=True)

    n: int
    share_outside: float | None
    psi: float | None


class LiveReport(BaseModel):
    """What GET /models shows per served model version: live accuracy and input drift per feature."""

    model_config = ConfigDict(frozen=True)

    model_name: str
    model_version: str
    accuracy: LiveAccuracy
    drift: dict[str, FeatureDrift]


def absolute_percentage_errors(measured: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """|measured - predicted| / |measured| in %, as training.evaluate.mape_pct computes it."""
    measured, predicted = np.asarray(measured, dtype=float), np.asarray(predicted, dtype=float)
    return 100.0 * np.abs((measured - predicted) / np.maximum(np.abs(measured), 1e-12))


def mape_pct(measured: np.ndarray, predicted: np.ndarray) -> float | None:
    errors = absolute_percentage_errors(measured, predicted)
    return float(errors.mean()) if errors.size else None


def bootstrap_mape_interval(measured: np.ndarray, predicted: np.ndarray, groups: np.ndarray | None = None,
                            resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                            seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the MAPE, resampling groups with replacement (each row its own group
    when `groups` is None or a row has none). Deterministic for a given seed. None for no rows."""
    errors = absolute_percentage_errors(measured, predicted)
    if errors.size == 0:
        return None
    labels = _group_labels(groups, errors.size)
    _, codes = np.unique(labels, return_inverse=True)
    sums = np.bincount(codes, weights=errors)
    counts = np.bincount(codes).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, sums.size, size=(resamples, sums.size))
    # A resample's MAPE is over its rows: sum of the picked groups' errors over their row count.
    estimates = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(estimates, [tail, 1.0 - tail])
    return float(low), float(high)


def _group_labels(groups: np.ndarray | None, n: int) -> np.ndarray:
    if groups is None:
        return np.array([f"row-{i}" for i in range(n)], dtype=object)
    return np.array([f"row-{i}" if g is None or g == "" else f"group-{g}" for i, g in enumerate(groups)],
                    dtype=object)


def interval_coverage(measured: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[float | None, int]:
    """(share of measured values inside [low, high], number of rows that had an interval)."""
    measured, low, high = (np.asarray(a, dtype=float) for a in (measured, low, high))
    has = ~(np.isnan(low) | np.isnan(high))
    if not has.any():
        return None, 0
    inside = (measured[has] >= low[has]) & (measured[has] <= high[has])
    return float(inside.mean()), int(has.sum())


def mape_figure(scored: ScoredOutcomes, resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL,
                seed: int = 0) -> MapeFigure:
    return MapeFigure(n=len(scored), mape_pct=mape_pct(scored.measured, scored.predicted),
                      interval_pct=bootstrap_mape_interval(scored.measured, scored.predicted, scored.groups,
                                                           resamples, level, seed))


def error_series(scored: ScoredOutcomes, limit: int = DEFAULT_SERIES_LIMIT,
                 window: int = DEFAULT_ROLLING_WINDOW) -> ErrorSeries:
    """The last `limit` outcomes (in order of measurement, as the last-N MAPE takes them), put in order of
    prediction time, where a drifting line shows when it began; the rolling MAPE is the trailing mean over up to
    `window` of them (fewer at the start)."""
    if limit < 1 or window < 1:
        raise ValueError(f"error series: limit {limit} and window {window} must be at least 1")
    recent = scored.last(limit)
    times = np.array([t.timestamp() for t in recent.predicted_at], dtype=float)
    order = np.argsort(times, kind="stable")
    errors = absolute_percentage_errors(recent.measured, recent.predicted)[order]
    sums = np.concatenate([[0.0], np.cumsum(errors)])
    ends = np.arange(1, errors.size + 1)
    starts = np.maximum(ends - window, 0)
    rolling = (sums[ends] - sums[starts]) / (ends - starts)
    return ErrorSeries(window=window, predicted_at=tuple(int(t) for t in np.floor(times[order])),
                       ape_pct=tuple(_significant(v) for v in errors),
                       rolling_mape_pct=tuple(_significant(v) for v in rolling))


def _significant(value: float, digits: int = 4) -> float:
    """`value` to `digits` significant digits: the page shows four, and the series stays small."""
    return float(f"{value:.{digits}g}")


def live_accuracy(scored: ScoredOutcomes, last_n: int = DEFAULT_LAST_N, promoted_at: datetime | None = None,
                  resamples: int = DEFAULT_RESAMPLES, level: float = DEFAULT_LEVEL, seed: int = 0,
                  series_limit: int = DEFAULT_SERIES_LIMIT) -> LiveAccuracy:
    """Live figures of one model version; `promoted_at` (aware) adds the MAPE of rows predicted at or after it."""
    since = None
    if promoted_at is not None:
        after = np.array([t >= promoted_at for t in scored.predicted_at], dtype=bool)
        figure = mape_figure(scored.select(after), resamples, level, seed)
        since = PromotionFigure(**figure.model_dump(), since=promoted_at.astimezone(UTC).isoformat())
    coverage, with_interval = interval_coverage(scored.measured, scored.interval_low, scored.interval_high)
    return LiveAccuracy(
        n_outcomes=len(scored),
        last_n=mape_figure(scored.last(last_n), resamples, level, seed),
        since_promotion=since,
        interval_coverage=coverage,
        n_with_interval=with_interval,
        share_in_domain=float(scored.in_domain.mean()) if len(scored) else None,
        recent_errors=error_series(scored, series_limit),
    )


def psi(values: np.ndarray, quantile_edges: np.ndarray | tuple[float, ...], floor: float = PSI_FLOOR) -> float | None:
    """Population stability index of `values` against equal-probability training bins given by sorted quantile
    edges (k + 1 edges, k bins of training share 1/k; the outer bins extend to ±inf, so out-of-range values count).

    Tied edges (a feature the training data holds at one value, like a fixed coating speed) mark a point mass: the
    training share of the tied quantile intervals goes to a bin holding exactly that value, and live values off it
    fall in the interval bins around it, which training never reached. Bins empty on both sides are skipped.
    PSI = sum over bins of (live - training) * ln(live / training), shares floored at `floor`."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    edges = np.asarray(quantile_edges, dtype=float)
    if edges.size < 2 or np.any(np.diff(edges) < 0):
        raise ValueError(f"quantile edges must be sorted and at least two, got {edges.tolist()}")
    if values.size == 0:
        return None
    k = edges.size - 1
    tied = np.unique(edges[:-1][edges[:-1] == edges[1:]])
    # Where each training quantile interval's mass sits: its midpoint, or the point itself when its edges tie.
    mass_points = np.where(edges[:-1] == edges[1:], edges[:-1], (edges[:-1] + edges[1:]) / 2.0)
    expected = np.bincount(_psi_bins(mass_points, edges[1:-1], tied), minlength=k + tied.size) / k
    observed = np.bincount(_psi_bins(values, edges[1:-1], tied), minlength=k + tied.size) / values.size
    used = (expected > 0) | (observed > 0)
    e, o = np.maximum(expected[used], floor), np.maximum(observed[used], floor)
    return float(np.sum((o - e) * np.log(o / e)))


def _psi_bins(values: np.ndarray, cuts: np.ndarray, tied: np.ndarray) -> np.ndarray:
    """Bin index per value: 0..k-1 for the intervals between cuts, k + i for exactly the i-th tied value."""
    interval = np.searchsorted(cuts, values, side="right")
    if tied.size == 0:
        return interval
    position = np.searchsorted(tied, values)
    on_tied = tied[np.minimum(position, tied.size - 1)] == values
    return np.where(on_tied, cuts.size + 1 + position, interval)


def feature_drift(values: np.ndarray, reference: FeatureReference) -> FeatureDrift:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return FeatureDrift(n=0, share_outside=None, psi=None)
    outside = (values < reference.training_min) | (values > reference.training_max)
    return FeatureDrift(n=int(values.size), share_outside=float(outside.mean()),
                        psi=psi(values, reference.quantile_edges))


def input_drift(inputs: Mapping[str, np.ndarray], references: Mapping[str, FeatureReference],
                ) -> dict[str, FeatureDrift]:
    """Drift of every referenced feature (a feature missing from `inputs` has n = 0)."""
    return {feature: feature_drift(inputs.get(feature, np.array([])), reference)
            for feature, reference in references.items()}
