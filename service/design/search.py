"""Recipe design: the settings that give a wanted electrode (or GDL), found by searching the served models.

The forward models answer "what will this recipe give?"; this answers the inverse, "with the slurry I have, which
settings give 20 mg/cm² at 3.0 g/cm³?". The nets are tiny, so the search can afford to look everywhere:

1. The free parameters span a box: the models' training range (so every recipe is in domain), or narrower bounds
   the caller gives. Fixed parameters keep exactly the given value. A parameter the data holds at a few settings
   only (roll speed: 0.27 or 0.54 m/min) takes those settings, never a value between them.
2. A scrambled Sobol design of the box (`scipy.stats.qmc`) plus the box's corners, for every combination of the
   discrete settings, goes through one batched onnxruntime call per model.
3. The best, mutually distant design points are refined with `scipy.optimize.least_squares` on the deviations
   from the targets in units of their tolerance (discrete settings held); the lowest and highest prediction of each
   target are refined with `scipy.optimize.minimize` (SLSQP), which gives the reachable range.
4. Recipes are rounded to a settable resolution (a thousandth of each parameter's range), evaluated again, and
   those meeting every target are ranked by distance to the targets, then by interval width; a greedy pass keeps
   the first k that differ from every recipe kept in at least one free continuous parameter by a tenth of its range.
5. The chosen recipes go through `Predictor.predict` (the /predict code path): the answer rows are exactly what
   /predict answers, with intervals, domain check and SHAP explanation. If nothing meets the tolerance, the
   request is answered 422 with each target's reachable range and the closest recipe found.

A design is deterministic: the Sobol scramble has a fixed seed, so the same request gives the same recipes.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cellmfg.domain import Kind
from cellmfg.recipe_search import (
    DISCRETE_FEATURES,
    design_units,
    keep_apart,
    round_settings,
    setting_combinations,
    settings_decimals,
)
from service.engine import metrics
from service.engine.errors import RequestRejectedError
from service.engine.model_store import ServedModel
from service.engine.predict import Predictor, conformal_interval

EXTRA_REFINE_STARTS = 2  # local refinements started: one per recipe asked for, plus these (at least MIN_REFINE_STARTS)
MIN_REFINE_STARTS = 4
REFINE_MAX_EVALUATIONS = 40
MAX_RESIDUAL = 1e6  # deviations are clipped here (in tolerances): far beyond reach, and their squares stay finite
CLOSE_ENOUGH = 0.05  # a refinement stops once every target is this close, in units of its tolerance
RANK_RESOLUTION = 0.1  # distances within the same tenth of the tolerance rank as equal; the interval decides
FD_STEP = 1e-4  # finite-difference step in box units (the nets are piecewise linear; float32 has ~7 digits)


# The models as one vectorised function: rows [n, F] float64 -> predictions [n, T] (the refinements take this).
Evaluate = Callable[[np.ndarray], np.ndarray]


class SearchBox(Protocol):
    """What the search box is made from: fixed parameters and narrower bounds (a design or a suggestion request)."""

    @property
    def fixed(self) -> Mapping[str, float]: ...

    @property
    def bounds(self) -> Mapping[str, tuple[float, float]]: ...


@dataclass(frozen=True)
class TargetGoal:
    column: str
    value: float
    tolerance_pct: float

    @property
    def tolerance(self) -> float:
        # Never 0: a subnormal wanted value would otherwise underflow it and divide by zero.
        return max(abs(self.value) * self.tolerance_pct / 100.0, sys.float_info.min)


@dataclass(frozen=True)
class DesignProblem:
    """A validated design request (see `service.design.schemas`): what to reach and what to keep."""

    kind: Kind
    dataset: str
    targets: tuple[TargetGoal, ...]
    fixed: Mapping[str, float] = field(default_factory=dict)
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    k: int = 5
    explain: bool = True


class DesignInfeasibleError(RequestRejectedError):
    """No recipe meets every target within its tolerance: 422 with what is reachable and the closest recipe."""

    def __init__(self, message: str, detail: list[dict[str, Any]], reachable: dict[str, dict[str, Any]],
                 closest: dict[str, Any] | None) -> None:
        super().__init__(422, message, detail)
        self.reachable = reachable
        self.closest = closest

    def body(self) -> dict[str, Any]:
        return {**super().body(), "reachable": self.reachable, "closest": self.closest}


@dataclass(frozen=True)
class SearchSpace:
    """The searched box. Rows are full feature vectors in contract order; the free ones vary."""

    columns: list[str]
    base: np.ndarray  # a full row holding the fixed values (and the free ones' lower bounds)
    low: np.ndarray  # per column: search range (fixed: the fixed value)
    high: np.ndarray
    continuous: np.ndarray  # column indices of free continuous parameters
    discrete: dict[int, np.ndarray]  # column index -> its settings
    decimals: np.ndarray  # per column: decimals the settings are rounded to
    train_low: np.ndarray  # the models' common training range (both ranges where they do not overlap)
    train_high: np.ndarray
    common_low: np.ndarray  # inside every answering model's training range (empty where low > high)
    common_high: np.ndarray
    disjoint: list[str]  # free parameters whose training ranges do not overlap across the answering models

    @property
    def width(self) -> np.ndarray:
        return self.high[self.continuous] - self.low[self.continuous]

    def rows(self, units: np.ndarray, settings: Sequence[float] | np.ndarray) -> np.ndarray:
        """Full rows from continuous coordinates in box units [n, n_continuous] and one discrete combination."""
        x = np.repeat(self.base[None, :], len(units), axis=0)
        x[:, self.continuous] = self.low[self.continuous] + units * self.width
        for index, value in zip(self.discrete, settings, strict=True):
            x[:, index] = value
        return x

    def units(self, x: np.ndarray) -> np.ndarray:
        """Continuous coordinates in box units of full rows (the inverse of `rows`)."""
        width = np.where(self.width > 0, self.width, 1.0)
        return np.asarray((x[:, self.continuous] - self.low[self.continuous]) / width)

    def normalised(self, x: np.ndarray) -> np.ndarray:
        """The free parameters in box units, for the diversity measure: the continuous ones (two recipes that differ
        only in roll speed, which barely matters in the paper's SHAP analysis, are near-duplicates to a lab), or the
        discrete ones when nothing else is free."""
        free = self.continuous if len(self.continuous) else np.array(list(self.discrete), dtype=int)
        span = self.high[free] - self.low[free]
        return np.asarray((x[:, free] - self.low[free]) / np.where(span > 0, span, 1.0))

    def rounded(self, x: np.ndarray) -> np.ndarray:
        """Continuous settings rounded to a settable resolution, kept inside the box; others untouched."""
        return round_settings(x, self.continuous, self.decimals, self.low, self.high)


@dataclass
class _Evaluator:
    """The answering models as one vectorised function: rows [n, F] float64 -> predictions [n, T]."""

    models: list[ServedModel]
    calls: int = 0
    rows: int = 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        self.calls += 1
        self.rows += len(x)
        return np.stack([m.predict(x32) for m in self.models], axis=1)


class Designer:
    """Finds recipes with the served models of a `Predictor`, and answers them through it."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def design(self, problem: DesignProblem) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            answer = self._design(problem, started)
        except DesignInfeasibleError:
            metrics.DESIGNS_INFEASIBLE.labels(dataset=problem.dataset).inc()
            metrics.DESIGN_SECONDS.labels(dataset=problem.dataset).observe(time.perf_counter() - started)
            raise
        metrics.DESIGNS.labels(dataset=problem.dataset).inc()
        metrics.DESIGN_SECONDS.labels(dataset=problem.dataset).observe(time.perf_counter() - started)
        return answer

    def _answering(self, problem: DesignProblem) -> list[Any]:
        """The models /predict answers this dataset with, in its target order; looked up once per design, through
        the predictor, so an unknown or unloaded dataset gets the same answer as at /predict."""
        return self.predictor.answering(problem.kind, problem.dataset)

    def _design(self, problem: DesignProblem, started: float) -> dict[str, Any]:
        answering = self._answering(problem)
        models = [a.model for a in answering]
        served_columns = [a.target.column for a in answering]
        unknown = [t.column for t in problem.targets if t.column not in served_columns]
        if unknown:
            raise RequestRejectedError(400, f"targets.{unknown[0]}: not predicted for {problem.dataset}; the served "
                                            f"models predict {', '.join(served_columns)}",
                                       [problem_detail("unknown_target", ("targets", c),
                                                       f"targets.{c}: not predicted for {problem.dataset}")
                                        for c in unknown])
        space = search_space(problem, models)
        evaluate = _Evaluator(models)
        target_index = np.array([served_columns.index(t.column) for t in problem.targets])
        wanted = np.array([t.value for t in problem.targets])
        tolerance = np.array([t.tolerance for t in problem.targets])

        def residuals(predictions: np.ndarray) -> np.ndarray:
            return _clipped((predictions[:, target_index] - wanted), tolerance, MAX_RESIDUAL)

        # 1-2. Quasi-random design of the box, every discrete combination, in one call per model.
        combos = discrete_combinations(space)
        units = design_units(len(space.continuous), len(combos))
        x = np.concatenate([space.rows(units, combo) for combo in combos])
        p = evaluate(x)

        # 3. Local refinement towards the targets, then of each target's extremes.
        refined_x: list[np.ndarray] = []
        if len(space.continuous):
            r0 = residuals(p)
            starts = _diverse_best(space, x, np.sum(r0**2, axis=1),
                                   max(MIN_REFINE_STARTS, problem.k + EXTRA_REFINE_STARTS))
            # A design point already within CLOSE_ENOUGH of every target is as good as a refinement would make it.
            refined_x = [_refine_to_targets(space, evaluate, x[i], target_index, wanted, tolerance) for i in starts
                         if np.max(np.abs(r0[i])) > CLOSE_ENOUGH]
        reachable_x = reachable_ends(space, evaluate, x, p, target_index.tolist())

        # 4. Round everything to settable values, evaluate once more, rank and pick diverse recipes.
        candidates = space.rounded(np.concatenate([x, *(r[None, :] for r in refined_x), reachable_x]))
        p = evaluate(candidates)
        r = residuals(p)
        distance = np.max(np.abs(r), axis=1)
        width = _relative_width(answering, p, target_index, wanted)
        reachable = {
            c: {"min": float(p[:, j].min()), "max": float(p[:, j].max()), "unit": target_unit(models[j])}
            for j, c in enumerate(served_columns) if c in {t.column for t in problem.targets}}

        feasible = np.flatnonzero(distance <= 1.0)
        order = feasible[np.lexsort((width[feasible], np.floor(distance[feasible] / RANK_RESOLUTION)))]
        chosen = diverse(space, candidates, order, problem.k)
        if not chosen:
            closest = int(np.argmin(distance))
            answer = self.predictor.predict_rows(answering, [settings_of(space, candidates[closest])], explain=False,
                                                 interval=True)
            nearest = _recipe(problem, space, candidates[closest], answer["predictions"][0], 0)
            del nearest["rank"]  # not a recipe that meets the targets, so it has no rank among them
            raise _infeasible(problem, reachable, nearest)

        # 5. The answer rows come from the /predict code path, on the models the search used.
        settings = [settings_of(space, candidates[i]) for i in chosen]
        answer = self.predictor.predict_rows(answering, settings, explain=problem.explain, interval=True)
        recipes = [_recipe(problem, space, candidates[i], row, rank)
                   for rank, (i, row) in enumerate(zip(chosen, answer["predictions"], strict=True), start=1)]
        # The same float32 inputs through the same sessions give the same numbers; a recipe is only returned if
        # /predict's own prediction meets the targets, so the answer never depends on that holding.
        recipes = [rec for rec in recipes if rec["distance"] <= 1.0]
        for rank, rec in enumerate(recipes, start=1):
            rec["rank"] = rank
        return {
            "models": answer["models"],
            "intervals": answer.get("intervals"),
            "targets": {t.column: {"value": t.value, "tolerance_pct": t.tolerance_pct,
                                   "unit": target_unit(models[served_columns.index(t.column)]),
                                   "low": t.value - t.tolerance, "high": t.value + t.tolerance}
                        for t in problem.targets},
            "recipes": recipes,
            "reachable": reachable,
            "search": search_summary(problem, space, len(candidates), evaluate.rows, len(refined_x),
                               time.perf_counter() - started),
        }


# ---------------------------------------------------------------------------------------------------------------
# The search space


def search_space(problem: SearchBox, models: list[ServedModel]) -> SearchSpace:
    """The box of free parameters, after checking fixed values and bounds against the models (400 naming the
    field when a bound leaves the training range)."""
    columns = models[0].feature_names
    # In domain means inside every answering model's training range (as /predict checks it).
    train_low = np.max([m.train_min for m in models], axis=0)
    train_high = np.min([m.train_max for m in models], axis=0)
    # Models trained on different data (a zero-shot source net serving a target beside a transfer) may share no
    # range in some parameter; no recipe is then in domain for all of them, and the search spans both ranges.
    common_low, common_high = train_low, train_high
    disjoint = train_low > train_high
    train_low = np.where(disjoint, np.min([m.train_min for m in models], axis=0), train_low)
    train_high = np.where(disjoint, np.max([m.train_max for m in models], axis=0), train_high)
    low, high = train_low.copy(), train_high.copy()
    problems = []
    for name, (lo, hi) in problem.bounds.items():
        j = columns.index(name)
        if lo < train_low[j] or hi > train_high[j]:
            problems.append(problem_detail(
                "bound_outside_training_range", ("bounds", name),
                f"bounds.{name} = [{lo:g}, {hi:g}]: must lie inside the models' training range "
                f"[{train_low[j]:g}, {train_high[j]:g}] {models[0].contract.features[j].unit}; outside it the "
                f"predictions are extrapolations"))
        low[j], high[j] = lo, hi
    if problems:
        raise RequestRejectedError(400, "; ".join(p["msg"] for p in problems), problems)
    for name, value in problem.fixed.items():
        j = columns.index(name)
        low[j] = high[j] = value
    free = [j for j, c in enumerate(columns) if c not in problem.fixed]
    discrete: dict[int, np.ndarray] = {}
    for j in free:
        if columns[j] in DISCRETE_FEATURES and high[j] > low[j]:
            # The settings the data holds (the ends of the training range) that lie inside the searched range.
            levels = np.unique([v for v in (train_low[j], train_high[j]) if low[j] <= v <= high[j]])
            if len(levels) == 0:
                raise RequestRejectedError(400, f"bounds.{columns[j]} = [{low[j]:g}, {high[j]:g}]: holds none of "
                                                f"the settings {train_low[j]:g}, {train_high[j]:g} the data has",
                                           [problem_detail("no_setting_in_bound", ("bounds", columns[j]),
                                                    f"bounds.{columns[j]}: no allowed setting inside")])
            discrete[j] = levels
    # A free parameter whose range is a single value (coating speed on graphite: always 0.3) is held there.
    continuous = np.array([j for j in free if j not in discrete and high[j] > low[j]], dtype=int)
    base = low.copy()
    span = high - low
    decimals = settings_decimals(span)
    return SearchSpace(columns=columns, base=base, low=low, high=high, continuous=continuous, discrete=discrete,
                  decimals=decimals, train_low=train_low, train_high=train_high, common_low=common_low,
                  common_high=common_high,
                  disjoint=[c for c, d in zip(columns, disjoint.tolist(), strict=True) if d and c not in problem.fixed])


def discrete_combinations(space: SearchSpace) -> list[tuple[float, ...]]:
    return setting_combinations(space.discrete)


def _relative_width(answering: list[Any], p: np.ndarray, target_index: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Per row, the sum over the wanted targets of /predict's interval width relative to the wanted value."""
    width = np.zeros(len(p))
    for k, j in enumerate(target_index.tolist()):
        low, high = conformal_interval(answering[j].model, answering[j].target, p[:, j])
        with np.errstate(over="ignore"):  # inf for a subnormal wanted value: no recipe meets that one anyway
            width += (high - low) / abs(wanted[k])
    return width


def target_unit(model: ServedModel) -> str:
    return model.contract.target.unit


# ---------------------------------------------------------------------------------------------------------------
# Local refinement (scipy.optimize), with finite-difference derivatives from one batched call


def _with_gradient(space: SearchSpace, evaluate: Evaluate, u: np.ndarray,
                   settings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predictions [1 + d, T] at u and at u + step along each continuous axis (stepping inwards at the top)."""
    d = len(u)
    steps = np.where(u + FD_STEP <= 1.0, FD_STEP, -FD_STEP)
    units = np.repeat(u[None, :], d + 1, axis=0)
    units[1:] += np.diag(steps)
    x = space.rows(units, settings)
    return evaluate(x), steps


def _clipped(deviation: np.ndarray, tolerance: np.ndarray, limit: float) -> np.ndarray:
    """deviation / tolerance, clipped to ±limit: for an absurdly small wanted value (a tolerance near the smallest
    float) it would overflow, and least squares needs finite squares; such targets are far out of reach anyway."""
    with np.errstate(over="ignore"):
        return np.clip(deviation / tolerance, -limit, limit)


def _discrete_settings(space: SearchSpace, x: np.ndarray) -> np.ndarray:
    return np.array([x[j] for j in space.discrete])


def _refine_to_targets(space: SearchSpace, evaluate: Evaluate, x0: np.ndarray, target_index: np.ndarray,
                       wanted: np.ndarray, tolerance: np.ndarray) -> np.ndarray:
    """Least-squares deviation from the targets (in tolerances) over the continuous parameters from x0."""
    settings = _discrete_settings(space, x0)

    def fun(u: np.ndarray) -> np.ndarray:
        p = evaluate(space.rows(u[None, :], settings))[0]
        return _clipped(p[target_index] - wanted, tolerance, MAX_RESIDUAL)

    def jac(u: np.ndarray) -> np.ndarray:
        p, steps = _with_gradient(space, evaluate, u, settings)
        return _clipped((p[1:, target_index] - p[0, target_index]) / steps[:, None], tolerance,
                        MAX_RESIDUAL / FD_STEP).T

    def close_enough(intermediate_result: Any) -> None:
        # cost = sum(r²) / 2 bounds max |r|: stop once every target is within CLOSE_ENOUGH tolerances. Recipes
        # that close rank as equal anyway, and most starts get there in a step or two.
        if math.sqrt(2.0 * float(intermediate_result.cost)) <= CLOSE_ENOUGH:
            raise StopIteration

    u0 = np.clip(space.units(x0[None, :])[0], 0.0, 1.0)
    from scipy.optimize import least_squares  # imported on first use, like scipy.stats above

    result = least_squares(fun, u0, jac=jac, bounds=(0.0, 1.0), method="trf", max_nfev=REFINE_MAX_EVALUATIONS,
                           x_scale=1.0, ftol=1e-4, xtol=1e-4, gtol=1e-8, callback=close_enough)
    return space.rows(np.clip(result.x, 0.0, 1.0)[None, :], settings)[0]


def _refine_extreme(space: SearchSpace, evaluate: Evaluate, x0: np.ndarray, column: int, sign: float) -> np.ndarray:
    """The lowest (sign +1) or highest (sign -1) prediction of one target over the continuous parameters."""
    settings = _discrete_settings(space, x0)

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        p, steps = _with_gradient(space, evaluate, u, settings)
        value = sign * p[0, column]
        return float(value), sign * (p[1:, column] - p[0, column]) / steps

    u0 = np.clip(space.units(x0[None, :])[0], 0.0, 1.0)
    # SLSQP: on these piecewise-linear nets it reaches the same extreme as L-BFGS-B in about a third of the
    # model calls (measured on the NMC fakes: 35 against 96).
    from scipy.optimize import minimize

    result = minimize(fun, u0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * len(u0),
                      options={"maxiter": REFINE_MAX_EVALUATIONS, "ftol": 1e-5})
    return space.rows(np.clip(result.x, 0.0, 1.0)[None, :], settings)[0]


def reachable_ends(space: SearchSpace, evaluate: Evaluate, x: np.ndarray, p: np.ndarray,
                   columns: list[int]) -> np.ndarray:
    """Rows at the refined lowest and highest prediction of each wanted target (the reachable range's ends)."""
    if not len(space.continuous):
        return np.empty((0, x.shape[1]))
    ends = []
    for column in columns:
        for sign in (1.0, -1.0):
            ends.append(_refine_extreme(space, evaluate, x[int(np.argmin(sign * p[:, column]))], column, sign))
    return np.array(ends)


# ---------------------------------------------------------------------------------------------------------------
# Picking recipes


def diverse(space: SearchSpace, x: np.ndarray, order: np.ndarray, k: int) -> list[int]:
    """At most `k` rows of `order` (best first), each kept apart from the others in the free parameters
    (`cellmfg.recipe_search.keep_apart`)."""
    return keep_apart(order, space.normalised(x[order]) if len(order) else np.empty((0, 0)), k)


def _diverse_best(space: SearchSpace, x: np.ndarray, loss: np.ndarray, n: int) -> list[int]:
    return diverse(space, x, np.argsort(loss, kind="stable"), n)


def settings_of(space: SearchSpace, x: np.ndarray) -> dict[str, float]:
    return dict(zip(space.columns, x.tolist(), strict=True))


def _recipe(problem: DesignProblem, space: SearchSpace, x: np.ndarray, row: dict[str, Any],
            rank: int) -> dict[str, Any]:
    """One answer entry: the settings, the /predict row for them, and how far that row is from each target."""
    deviation = {t.column: (row[t.column] - t.value) / abs(t.value) * 100.0 for t in problem.targets}
    distance = max(abs(row[t.column] - t.value) / t.tolerance for t in problem.targets)
    return {"rank": rank, "settings": settings_of(space, x), "distance": distance, "deviation_pct": deviation,
            "prediction": row}


def search_summary(problem: SearchBox, space: SearchSpace, candidates: int, model_rows: int, refined: int,
             seconds: float) -> dict[str, Any]:
    columns = space.columns
    # Free: every parameter not fixed by the caller, a single-value range (coating speed on graphite) included.
    free = [j for j, c in enumerate(columns) if c not in problem.fixed]
    outside = [name for name, value in problem.fixed.items()
               if not space.common_low[columns.index(name)] <= value <= space.common_high[columns.index(name)]]
    return {
        "fixed": dict(problem.fixed),
        "free": {columns[j]: (float(space.low[j]), float(space.high[j])) for j in free},
        "discrete": {columns[j]: levels.tolist() for j, levels in space.discrete.items()},
        "within_training_range": not outside and not space.disjoint,
        "fixed_outside_training_range": outside,
        "no_common_training_range": space.disjoint,
        "candidates": candidates,
        "model_rows": model_rows,
        "refined": refined,
        "seconds": seconds,
    }


def problem_detail(kind: str, loc: tuple[str, ...], message: str) -> dict[str, Any]:
    return {"type": kind, "loc": list(loc), "msg": message}


def _infeasible(problem: DesignProblem, reachable: dict[str, dict[str, Any]],
                closest: dict[str, Any]) -> DesignInfeasibleError:
    parts, detail = [], []
    for t in problem.targets:
        r = reachable[t.column]
        unit = "" if r["unit"] == "1" else f" {r['unit']}"  # a dimensionless target (tortuosity) has unit "1"
        text = (f"targets.{t.column}: wanted {t.value:g}{unit} ± {t.tolerance_pct:g} %, reachable "
                f"{r['min']:.4g} to {r['max']:.4g}{unit}")
        parts.append(text)
        detail.append({"type": "unreachable", "loc": ["targets", t.column], "msg": text,
                       "wanted": t.value, "tolerance_pct": t.tolerance_pct, "reachable": r})
    together = " (each alone may be reachable, but not all together)" if len(problem.targets) > 1 else ""
    message = (f"no recipe meets every target within its tolerance under the fixed parameters{together}: "
               + "; ".join(parts))
    return DesignInfeasibleError(message, detail, reachable, closest)
