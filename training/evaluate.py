"""Grouped splits, metrics, baselines, paired comparisons with verdicts, and conformal intervals: pure functions.

Groups. Rows of one group (replicates of a coated sheet, a recipe, a structure) are never on both sides of any
split: outer train/test, inner validation folds, conformal calibration.

Paired comparisons. Every method runs on the same outer splits; the per-split difference of test MAPEs is
averaged and given a 95 % bootstrap interval over splits. Repeated splits of one dataset share most of their
training rows, so split-to-split scatter understates the real uncertainty; the interval is widened by the
Nadeau–Bengio factor sqrt(1 + J·n_test/n_train) (Nadeau & Bengio, Machine Learning 52, 2003). The words
"wins", "loses" and "indistinguishable" come from that interval only.

Paired comparisons are many per task (the registered net against about nine alternatives), so the verdicts
control the family-wise error per task: each of a task's m intervals is a Bonferroni interval at level
1 − (1 − 0.95)/m (`bonferroni_level`), so the chance that any verdict of the task is a false "wins" or "loses" is at
most 5 %, however the comparisons are correlated.

Intervals. Conformal on relative residuals |y - p| / |p| (the nets are trained on a relative loss), calibrated per
outer split on OUT-OF-FOLD residuals of its training part: each inner validation fold predicted by a model that
never saw it (for the nets, the configuration chosen on the other folds, so no choice read those residuals), then
used around the model refit on the whole training part (a cross-validation conformal scheme, conservative when
the refit is better than the fold models). Calibration is at GROUP level: a group's replicates share a sheet or a
structure, so they are not independent draws and a row-level quantile would count one sheet several times. Each
group contributes one score, the largest relative residual of its rows, and the conformal quantile is taken over
groups (rank ⌈(G + 1)·coverage⌉ of G). Groups are exchangeable, so under that assumption every row of a new group
is inside its interval with probability ≥ the nominal coverage, whatever the correlation within the group; the
price is an interval sized for a group's worst replicate. (A group's mean residual would be narrower but has no
row-level guarantee; a row-level quantile has none when rows of a group are correlated.) Coverage and width are
measured on the split's test groups, which no calibration or choice saw. Where every group is a single row (GDL
structures) the group and the row calibration coincide, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.dummy import DummyRegressor
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import LinearRegression

BASELINES = ("mean", "linear", "random_forest")
Verdict = Literal["wins", "loses", "indistinguishable"]


# -------------------------------------------------------------------------------------------------------------
# Grouped splits


@dataclass(frozen=True)
class Split:
    """One outer split: training part, test part and the inner validation folds that partition the training part."""

    train: np.ndarray
    test: np.ndarray
    folds: tuple[np.ndarray, ...]
    seed: int

    def fold_train(self, fold: int) -> np.ndarray:
        return np.setdiff1d(self.train, self.folds[fold])


def _take_groups(order: list[str], sizes: dict[str, int], wanted_rows: int) -> list[str]:
    """The first groups of `order` whose row count comes closest to `wanted_rows` (at least one group)."""
    taken: list[str] = []
    rows = 0
    for group in order:
        if taken and abs(rows + sizes[group] - wanted_rows) > abs(rows - wanted_rows):
            break
        taken.append(group)
        rows += sizes[group]
    return taken


def group_folds(rows: np.ndarray, groups: np.ndarray, folds: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, ...]:
    """Partition `rows` into up to `folds` folds of whole groups, balanced by row count."""
    labels = groups[rows]
    unique = list(dict.fromkeys(labels[rng.permutation(len(labels))]))
    count = min(folds, len(unique))
    if count < 2:
        raise ValueError(f"{len(unique)} group(s) in the training part; validation folds need at least 2")
    members: list[list[int]] = [[] for _ in range(count)]
    for group in unique:
        smallest = min(range(count), key=lambda f: len(members[f]))
        members[smallest].extend(rows[labels == group].tolist())
    return tuple(np.sort(np.asarray(m, dtype=int)) for m in members)


def grouped_split(groups: np.ndarray, seed: int, test_fraction: float, inner_folds: int) -> Split:
    """Test part: random whole groups holding about `test_fraction` of the rows; the rest trains, in grouped folds."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    groups = np.asarray(groups).astype(str)
    rng = np.random.default_rng(seed)
    unique, counts = np.unique(groups, return_counts=True)
    if len(unique) < 3:
        raise ValueError(f"{len(unique)} group(s); a grouped train/validation/test split needs at least 3")
    sizes = dict(zip(unique.tolist(), counts.tolist(), strict=True))
    order = [str(g) for g in rng.permutation(unique)]
    test_groups = _take_groups(order, sizes, round(len(groups) * test_fraction))
    if len(test_groups) > len(unique) - 2:
        test_groups = test_groups[: len(unique) - 2]
    is_test = np.isin(groups, test_groups)
    test, train = np.flatnonzero(is_test), np.flatnonzero(~is_test)
    return Split(train, test, group_folds(train, groups, inner_folds, rng), seed)


def repeated_grouped_splits(groups: np.ndarray, seed: int, repeats: int, test_fraction: float, inner_folds: int
                            ) -> list[Split]:
    """`repeats` grouped splits; the first is the one whose model is registered."""
    return [grouped_split(groups, seed * 1000 + repeat, test_fraction, inner_folds) for repeat in range(repeats)]


def groups_disjoint(groups: np.ndarray, *parts: np.ndarray) -> bool:
    """No group has rows in two of `parts`."""
    seen: set[str] = set()
    for part in parts:
        labels = set(np.asarray(groups)[part].astype(str).tolist())
        if seen & labels:
            return False
        seen |= labels
    return True


# -------------------------------------------------------------------------------------------------------------
# Metrics and baselines


def mape_pct(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    return float(100.0 * np.mean(np.abs((y_true - y_pred) / np.maximum(np.abs(y_true), 1e-12))))


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float))))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    total = float(np.sum((y_true - y_true.mean()) ** 2))
    return float(1.0 - np.sum((y_true - y_pred) ** 2) / total) if total > 0 else float("nan")


def scores(y_true: np.ndarray, y_pred: np.ndarray, part: str) -> dict[str, float]:
    """MAPE %, MAE and R² named for MLflow, e.g. `test_mape_pct`."""
    return {f"{part}_mape_pct": mape_pct(y_true, y_pred), f"{part}_mae": mae(y_true, y_pred),
            f"{part}_r2": r2(y_true, y_pred)}


def fit_baseline(name: str, x_train: np.ndarray, y_train: np.ndarray, seed: int, trees: int
                 ) -> DummyRegressor | LinearRegression | RandomForestRegressor:
    if name == "mean":
        model: DummyRegressor | LinearRegression | RandomForestRegressor = DummyRegressor(strategy="mean")
    elif name == "linear":
        model = LinearRegression()
    elif name == "random_forest":
        # Each tree is seeded up front, so the result does not depend on the thread count.
        model = RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=2)
    else:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return model.fit(x_train, y_train)


def linear_recalibration(prediction: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of the least-squares line y ≈ a·prediction + b; a constant prediction gets a = 0 (the mean)."""
    prediction, y = np.asarray(prediction, dtype=float), np.asarray(y, dtype=float)
    if len(y) < 2 or np.ptp(prediction) == 0.0:
        return 0.0, float(np.mean(y))
    a, b = np.polyfit(prediction, y, 1)
    return float(a), float(b)


def cross_selected_out_of_fold(y: np.ndarray, folds: tuple[np.ndarray, ...], candidates: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions untouched by the choice among candidates, and which candidate served each fold.

    `candidates` [C, N]: each candidate's out-of-fold predictions (row r predicted by the candidate's model of the
    fold holding r), in tie-break order. Fold f takes the candidate with the lowest MAPE on the OTHER folds, so no
    fold's residuals chose the model that predicts it. (The chosen configuration's own out-of-fold MAPE is the
    minimum over the candidates, hence optimistic; this one is not.) Rows outside the folds are NaN.
    """
    y, candidates = np.asarray(y, dtype=float), np.asarray(candidates, dtype=float)
    out = np.full(len(y), np.nan)
    picks = np.zeros(len(folds), dtype=int)
    for index, fold in enumerate(folds):
        others = np.concatenate([f for j, f in enumerate(folds) if j != index])
        errors = [mape_pct(y[others], c[others]) for c in candidates]
        picks[index] = int(np.argmin(errors))  # first of equals: the caller's tie-break order
        out[fold] = candidates[picks[index], fold]
    return out, picks


def mean_std(values: list[float] | np.ndarray) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


# -------------------------------------------------------------------------------------------------------------
# Paired comparisons and verdicts


@dataclass(frozen=True)
class PairedDifference:
    """Mean over splits of (method − competitor) test MAPE in points, with its 95 % interval; negative: better."""

    mean: float
    low: float
    high: float
    n_splits: int

    @property
    def verdict(self) -> Verdict:
        return verdict(self.low, self.high)


def verdict(low: float, high: float) -> Verdict:
    """The method `wins` when the whole interval of (method − competitor) lies below 0, `loses` when above."""
    if math.isnan(low) or math.isnan(high):
        return "indistinguishable"
    if high < 0.0:
        return "wins"
    if low > 0.0:
        return "loses"
    return "indistinguishable"


def bonferroni_level(family_level: float, comparisons: int) -> float:
    """Per-interval confidence so that `comparisons` intervals hold together with `family_level` (Bonferroni)."""
    if not 0.0 < family_level < 1.0:
        raise ValueError(f"family-wise confidence must be between 0 and 1 (exclusive), got {family_level}")
    return 1.0 - (1.0 - family_level) / max(comparisons, 1)


def nadeau_bengio_factor(n_splits: int, test_train_ratio: float) -> float:
    """How much wider an interval over J overlapping repeated splits must be: sqrt(1 + J·n_test/n_train)."""
    return math.sqrt(1.0 + n_splits * test_train_ratio)


def paired_difference(method: np.ndarray, competitor: np.ndarray, seed: int, test_train_ratio: float,
                      resamples: int = 4000, level: float = 0.95) -> PairedDifference:
    """Bootstrap (over splits) percentile interval of the mean paired difference, widened by Nadeau–Bengio.

    `test_train_ratio` = n_test / n_train of the splits; 0 treats the splits as independent data sets.
    """
    differences = np.asarray(method, dtype=float) - np.asarray(competitor, dtype=float)
    count = len(differences)
    mean = float(differences.mean()) if count else float("nan")
    if count < 2:
        return PairedDifference(mean, float("nan"), float("nan"), count)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, count, (resamples, count))].mean(axis=1)
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    factor = nadeau_bengio_factor(count, test_train_ratio)
    return PairedDifference(mean, mean - factor * (mean - float(low)), mean + factor * (float(high) - mean), count)


# -------------------------------------------------------------------------------------------------------------
# Conformal intervals


def relative_residuals(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    y_pred = np.asarray(y_pred, dtype=float)
    return np.asarray(np.abs(np.asarray(y_true, dtype=float) - y_pred) / np.maximum(np.abs(y_pred), 1e-12))


def conformal_quantile(residuals: np.ndarray, coverage: float) -> float:
    """The ⌈(n+1)·coverage⌉-th smallest residual (split-conformal); the largest when n is too small for that."""
    ordered = np.sort(np.asarray(residuals, dtype=float))
    n = len(ordered)
    if n == 0:
        raise ValueError("conformal calibration needs at least one held-out row")
    rank = min(n, math.ceil((n + 1) * coverage))
    return float(ordered[rank - 1])


def interval(prediction: np.ndarray, relative_quantile: float, lower_bound: float | None,
             upper_bound: float | None) -> tuple[np.ndarray, np.ndarray]:
    """[p - q|p|, p + q|p|], clipped to the physical range."""
    prediction = np.asarray(prediction, dtype=float)
    half = relative_quantile * np.abs(prediction)
    low, high = prediction - half, prediction + half
    if lower_bound is not None:
        low, high = np.maximum(low, lower_bound), np.maximum(high, lower_bound)
    if upper_bound is not None:
        low, high = np.minimum(low, upper_bound), np.minimum(high, upper_bound)
    return low, high


def group_scores(residuals: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """One conformity score per group: the largest relative residual of its rows (see the module docstring)."""
    residuals, groups = np.asarray(residuals, dtype=float), np.asarray(groups).astype(str)
    _, index = np.unique(groups, return_inverse=True)
    scores = np.full(int(index.max()) + 1 if len(index) else 0, -np.inf)
    np.maximum.at(scores, index, residuals)
    return scores


def group_conformal_quantile(residuals: np.ndarray, groups: np.ndarray, coverage: float) -> float:
    """The conformal quantile over groups of their largest relative residual (`group_scores`)."""
    return conformal_quantile(group_scores(residuals, groups), coverage)


@dataclass(frozen=True)
class Coverage:
    """Measured on held-out rows: share inside their interval (rows, and groups with every row inside) and mean
    (upper − lower) / |prediction|."""

    coverage: float
    mean_relative_width: float
    rows: int
    groups: int = 0
    group_coverage: float = float("nan")


def held_out_coverage(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, relative_quantile: float,
                      lower_bound: float | None, upper_bound: float | None) -> Coverage:
    """Coverage and width of the interval [p ± q|p|] (clipped) on held-out rows calibrated elsewhere."""
    y_true, y_pred, groups = np.asarray(y_true, float), np.asarray(y_pred, float), np.asarray(groups).astype(str)
    if len(y_true) == 0:
        return Coverage(float("nan"), float("nan"), 0)
    low, high = interval(y_pred, relative_quantile, lower_bound, upper_bound)
    inside = (y_true >= low) & (y_true <= high)
    widths = (high - low) / np.maximum(np.abs(y_pred), 1e-12)
    labels, index = np.unique(groups, return_inverse=True)
    whole = np.ones(len(labels), dtype=bool)
    np.logical_and.at(whole, index, inside)
    return Coverage(float(np.mean(inside)), float(np.mean(widths)), len(y_true), len(labels), float(np.mean(whole)))


# -------------------------------------------------------------------------------------------------------------
# Normalised conformal intervals: width scaled by the ensemble spread
#
# Score of a row: |y - p| / (σ + β·|p|), σ the ensemble members' standard deviation at that recipe and β the median
# relative spread σ/|p| of the calibration rows (so a recipe where the members happen to agree still gets a width,
# and the score stays relative, like the constant scheme's). Group level as above: one score per group, its largest.
# Interval: p ± q·(σ + β·|p|), clipped to the physical range. The constant scheme is the special case σ ≡ 0, β = 1.


def spread_offset(prediction: np.ndarray, spread: np.ndarray) -> float:
    """β: the median relative spread σ/|p| of the calibration rows."""
    relative = np.asarray(spread, dtype=float) / np.maximum(np.abs(np.asarray(prediction, dtype=float)), 1e-12)
    return float(np.median(relative)) if len(relative) else 0.0


def spread_scale(prediction: np.ndarray, spread: np.ndarray, offset: float) -> np.ndarray:
    """σ + β·|p|: what a row's normalised residual is divided by and its half-width multiplied by."""
    return np.asarray(spread, dtype=float) + offset * np.abs(np.asarray(prediction, dtype=float))


def normalised_residuals(y_true: np.ndarray, y_pred: np.ndarray, spread: np.ndarray, offset: float) -> np.ndarray:
    scale = np.maximum(spread_scale(y_pred, spread, offset), 1e-12)
    return np.asarray(np.abs(np.asarray(y_true, dtype=float) - np.asarray(y_pred, dtype=float)) / scale)


def spread_interval(prediction: np.ndarray, spread: np.ndarray, quantile: float, offset: float,
                    lower_bound: float | None, upper_bound: float | None) -> tuple[np.ndarray, np.ndarray]:
    """[p - q(σ + β|p|), p + q(σ + β|p|)], clipped to the physical range."""
    prediction = np.asarray(prediction, dtype=float)
    half = quantile * spread_scale(prediction, spread, offset)
    return _clipped(prediction - half, prediction + half, lower_bound, upper_bound)


def _clipped(low: np.ndarray, high: np.ndarray, lower_bound: float | None, upper_bound: float | None
             ) -> tuple[np.ndarray, np.ndarray]:
    if lower_bound is not None:
        low, high = np.maximum(low, lower_bound), np.maximum(high, lower_bound)
    if upper_bound is not None:
        low, high = np.minimum(low, upper_bound), np.minimum(high, upper_bound)
    return low, high


@dataclass(frozen=True)
class SpreadCalibration:
    """A normalised conformal interval calibrated on one split's out-of-fold rows, and the rule's verdict.

    `uses_spread` is the stated rule, read on those calibration (validation) rows only: the spread-scaled interval
    is served when its mean relative width there is narrower than the constant-width interval's, both at their
    own group-level conformal quantile, that is at equal calibration coverage. Otherwise the spread carries no
    usable information about the errors and the constant width is kept."""

    quantile: float
    offset: float
    constant_quantile: float
    spread_width: float  # mean relative width on the calibration rows (unclipped)
    constant_width: float
    uses_spread: bool

    def reason(self) -> str:
        verdict = "narrower: the spread is served" if self.uses_spread else \
            "not narrower: the spread carries no usable information, constant width kept"
        return (f"rule: scale by the ensemble spread only if, on the out-of-fold (validation) rows of the first "
                f"split's training part and at equal calibration coverage, its mean relative width is narrower than "
                f"the constant width's; it was {self.spread_width:.4g} against {self.constant_width:.4g}, {verdict}")


def calibrate_spread(y_true: np.ndarray, y_pred: np.ndarray, spread: np.ndarray, groups: np.ndarray,
                     coverage: float) -> SpreadCalibration | None:
    """Both group-level quantiles on the same calibration rows, and the rule; None when the spread is all zero
    (a single net, or members that never disagree), where it cannot scale anything."""
    y_true, y_pred, spread = np.asarray(y_true, float), np.asarray(y_pred, float), np.asarray(spread, float)
    offset = spread_offset(y_pred, spread)
    if not np.any(spread > 0.0) or offset <= 0.0:
        return None
    quantile = group_conformal_quantile(normalised_residuals(y_true, y_pred, spread, offset), groups, coverage)
    constant = group_conformal_quantile(relative_residuals(y_true, y_pred), groups, coverage)
    relative_scale = spread_scale(y_pred, spread, offset) / np.maximum(np.abs(y_pred), 1e-12)
    spread_width = float(np.mean(2.0 * quantile * relative_scale))
    constant_width = 2.0 * constant
    return SpreadCalibration(quantile, offset, constant, spread_width, constant_width, spread_width < constant_width)


def held_out_spread_coverage(y_true: np.ndarray, y_pred: np.ndarray, spread: np.ndarray, groups: np.ndarray,
                             quantile: float, offset: float, lower_bound: float | None,
                             upper_bound: float | None) -> Coverage:
    """`held_out_coverage` for the spread-scaled interval."""
    y_true, y_pred, groups = np.asarray(y_true, float), np.asarray(y_pred, float), np.asarray(groups).astype(str)
    if len(y_true) == 0:
        return Coverage(float("nan"), float("nan"), 0)
    low, high = spread_interval(y_pred, spread, quantile, offset, lower_bound, upper_bound)
    return _coverage(y_true, y_pred, groups, low, high)


def _coverage(y_true: np.ndarray, y_pred: np.ndarray, groups: np.ndarray, low: np.ndarray, high: np.ndarray
              ) -> Coverage:
    inside = (y_true >= low) & (y_true <= high)
    widths = (high - low) / np.maximum(np.abs(y_pred), 1e-12)
    labels, index = np.unique(groups, return_inverse=True)
    whole = np.ones(len(labels), dtype=bool)
    np.logical_and.at(whole, index, inside)
    return Coverage(float(np.mean(inside)), float(np.mean(widths)), len(y_true), len(labels), float(np.mean(whole)))
