"""Which experiment next: k diverse recipes worth measuring, chosen with the served ensembles' spread.

A lab runs few, expensive experiments. With the ensemble's spread σ(x) (the disagreement of its members, served
beside each prediction) the models say where they know least, and that is where a measurement teaches them most:

1. The box to search is /design's (`service.design.search`): the models' training range or the caller's narrower bounds,
   fixed parameters held, a parameter the data holds at a few settings (roll speed) at those settings only. A
   scrambled Sobol design of it (plus its corners, for every discrete combination) goes through one onnxruntime call
   per model, which gives the mean and the spread of every candidate.
2. Each candidate is scored:
   - no window: by its relative spread, the mean over the dataset's targets of σ/|p| (uncertainty sampling);
   - with a wanted window per target (`window`): by the chance that the measurement lands inside it, the product over
     the windowed targets of Φ((high − p)/σ) − Φ((low − p)/σ). With an improvement of 1 for a measurement inside the
     window and 0 outside, this chance is the expected improvement toward the window. Near-certain candidates tie,
     and the one with the larger spread (more to learn) goes first.
   A window no recipe in the box can reach (its reachable range refined as /design's is) is a 422 naming that range.
3. A greedy pass keeps, best first, the k candidates that differ from every one kept in at least one free continuous
   parameter by a tenth of its range (the same diversity rule as /design), so the k experiments are not near-copies;
   candidates the models answer exactly alike (they differ only in a parameter the nets ignore) count once.
4. The chosen recipes go through `Predictor.predict_rows` (the /predict code path): each suggestion carries exactly
   what /predict answers for it (prediction, interval, spread, in-domain flag), its score and why it was chosen.

Models without an ensemble spread (single nets from earlier releases) give no uncertainty to rank by: the answer then
says so (`strategy` "space_filling", or "window_without_spread") and picks recipes spread evenly over the box, or
predicted inside the window, instead. A suggestion is deterministic: the same request gives the same recipes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from cellmfg.domain import Kind
from cellmfg.recipe_search import design_units, distinct_answers
from service.design.search import (
    DesignInfeasibleError,
    discrete_combinations,
    diverse,
    problem_detail,
    reachable_ends,
    search_space,
    search_summary,
    settings_of,
    target_unit,
)
from service.engine import metrics
from service.engine.errors import RequestRejectedError
from service.engine.model_store import ServedModel
from service.engine.predict import Predictor, predict_with_spread

Strategy = Literal["spread", "window", "space_filling", "window_without_spread"]
# A spread this small relative to the prediction is no spread: the chance of landing in the window is then 0 or 1.
MIN_RELATIVE_SPREAD = 1e-9
# Chances within this of each other rank as equal; the larger spread goes first.
CHANCE_RESOLUTION = 0.01

_REASONS: dict[Strategy, str] = {
    "spread": "largest ensemble spread: the recipes the models are least sure of, where a measurement teaches "
              "them most",
    "window": "largest chance that the measured values land inside the wanted window (the expected improvement "
              "toward it)",
    "space_filling": "the served models carry no ensemble spread, so there is no uncertainty to rank by: recipes "
                     "spread evenly over the searched box",
    "window_without_spread": "the served models carry no ensemble spread, so no chance can be given: recipes "
                             "predicted inside the wanted window, closest to its middle first",
}


@dataclass(frozen=True)
class SuggestProblem:
    """A validated suggestion request (see `service.design.suggest_schemas`)."""

    kind: Kind
    dataset: str
    k: int
    fixed: Mapping[str, float] = field(default_factory=dict)
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    window: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # target column -> (low, high)
    explain: bool = False


@dataclass
class _EnsembleEvaluator:
    """The answering models as one vectorised function: rows [n, F] -> (means [n, T], spreads [n, T] or None)."""

    models: list[ServedModel]
    rows: int = 0

    @property
    def has_spread(self) -> bool:
        return all(m.contract.spread_output_name is not None for m in self.models)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Means only (what `service.design.search`'s refinements take)."""
        return self.both(x)[0]

    def both(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        self.rows += len(x)
        outputs = [predict_with_spread(m, x32) for m in self.models]
        means = np.stack([mean for mean, _ in outputs], axis=1)
        spreads = [spread for _, spread in outputs]
        if any(s is None for s in spreads):
            return means, None
        return means, np.stack([s for s in spreads if s is not None], axis=1)


class Suggester:
    """Suggests experiments with the served models of a `Predictor`, and answers them through it."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    def suggest(self, problem: SuggestProblem) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            answer = self._suggest(problem, started)
        except DesignInfeasibleError:
            metrics.SUGGESTIONS_INFEASIBLE.labels(dataset=problem.dataset).inc()
            metrics.SUGGEST_SECONDS.labels(dataset=problem.dataset).observe(time.perf_counter() - started)
            raise
        metrics.SUGGESTIONS.labels(dataset=problem.dataset, strategy=answer["strategy"]).inc()
        metrics.SUGGEST_SECONDS.labels(dataset=problem.dataset).observe(time.perf_counter() - started)
        return answer

    def _suggest(self, problem: SuggestProblem, started: float) -> dict[str, Any]:
        answering = self.predictor.answering(problem.kind, problem.dataset)
        models = [a.model for a in answering]
        columns = [a.target.column for a in answering]
        unknown = [c for c in problem.window if c not in columns]
        if unknown:
            raise RequestRejectedError(400, f"window.{unknown[0]}: not predicted for {problem.dataset}; the served "
                                            f"models predict {', '.join(columns)}",
                                       [problem_detail("unknown_target", ("window", c),
                                                       f"window.{c}: not predicted for {problem.dataset}")
                                        for c in unknown])
        space = search_space(problem, models)  # 400 naming the field for a bound outside the training range
        evaluate = _EnsembleEvaluator(models)

        # 1. Quasi-random design of the box, every discrete combination, mean and spread in one call per model.
        combos = discrete_combinations(space)
        units = design_units(len(space.continuous), len(combos))
        x = space.rounded(np.concatenate([space.rows(units, combo) for combo in combos]))  # settable values
        p, spread = evaluate.both(x)

        # 2. Scores; a window nothing in the box reaches is refused with the reachable range.
        window_index = [columns.index(c) for c in problem.window]
        reachable = {}
        ends = np.empty((0, x.shape[1]))
        if problem.window:
            ends = reachable_ends(space, evaluate, x, p, window_index)
            if len(ends):
                x = np.concatenate([x, space.rounded(ends)])
                p, spread = evaluate.both(x)
            reachable = {columns[j]: {"min": float(p[:, j].min()), "max": float(p[:, j].max()),
                                      "unit": target_unit(models[j])} for j in window_index}
            _refuse_unreachable(problem, reachable)
        strategy, score, order = _ranked(problem, p, spread, window_index)

        # 3. The best k, mutually distant.
        chosen = diverse(space, x, _distinct_answers(order, p, spread), problem.k)

        # 4. Answered through the /predict code path.
        answer = self.predictor.predict_rows(answering, [settings_of(space, x[i]) for i in chosen],
                                             explain=problem.explain, interval=True)
        suggestions = []
        for rank, (i, row) in enumerate(zip(chosen, answer["predictions"], strict=True), start=1):
            suggestions.append({
                "rank": rank,
                "settings": settings_of(space, x[i]),
                "score": None if score is None else float(score[i]),
                "why": _why(strategy, problem, columns, p[i], None if spread is None else spread[i],
                            None if score is None else float(score[i]), rank, len(x)),
                "spread": None if spread is None else {c: float(spread[i, j]) for j, c in enumerate(columns)},
                "prediction": row,
            })
        summary = search_summary(problem, space, len(x), evaluate.rows, len(ends), time.perf_counter() - started)
        return {
            "models": answer["models"],
            "intervals": answer.get("intervals"),
            "strategy": strategy,
            "strategy_reason": _REASONS[strategy],
            "window": {c: {"low": low, "high": high, "unit": target_unit(models[columns.index(c)])}
                       for c, (low, high) in problem.window.items()},
            "suggestions": suggestions,
            "reachable": reachable,
            "search": summary,
        }


def _ranked(problem: SuggestProblem, p: np.ndarray, spread: np.ndarray | None,
            window_index: list[int]) -> tuple[Strategy, np.ndarray | None, np.ndarray]:
    """The strategy, each candidate's score (None without a spread) and the candidates best first."""
    n = len(p)
    if spread is not None:
        relative = np.mean(spread / np.maximum(np.abs(p), np.finfo(float).tiny), axis=1)
        if not problem.window:
            return "spread", relative, np.argsort(-relative, kind="stable")
        chance = _chance_in_window(problem, p, spread, window_index)
        return "window", chance, np.lexsort((-relative, -np.round(chance / CHANCE_RESOLUTION)))
    if not problem.window:
        return "space_filling", None, np.arange(n)  # Sobol order is itself space-filling
    lows = np.array([low for low, _ in problem.window.values()])
    highs = np.array([high for _, high in problem.window.values()])
    inside = np.all((p[:, window_index] >= lows) & (p[:, window_index] <= highs), axis=1)
    off_centre = np.max(np.abs(p[:, window_index] - (lows + highs) / 2) / ((highs - lows) / 2), axis=1)
    candidates = np.flatnonzero(inside)
    return "window_without_spread", None, candidates[np.argsort(off_centre[candidates], kind="stable")]


def _distinct_answers(order: np.ndarray, p: np.ndarray, spread: np.ndarray | None) -> np.ndarray:
    """`order` without candidates answered exactly like an earlier one, spread included."""
    return distinct_answers(order, p if spread is None else np.concatenate([p, spread], axis=1))


def _chance_in_window(problem: SuggestProblem, p: np.ndarray, spread: np.ndarray,
                      window_index: list[int]) -> np.ndarray:
    from scipy.special import ndtr  # the normal CDF; scipy is imported on first use, as in service.design.search

    chance = np.ones(len(p))
    for (low, high), j in zip(problem.window.values(), window_index, strict=True):
        sigma = np.maximum(spread[:, j], MIN_RELATIVE_SPREAD * np.abs(p[:, j]) + np.finfo(float).tiny)
        chance *= ndtr((high - p[:, j]) / sigma) - ndtr((low - p[:, j]) / sigma)
    return np.asarray(chance)


def _refuse_unreachable(problem: SuggestProblem, reachable: dict[str, dict[str, Any]]) -> None:
    """422 when a window lies wholly outside what the free parameters can reach."""
    parts, detail = [], []
    for column, (low, high) in problem.window.items():
        r = reachable[column]
        if high < r["min"] or low > r["max"]:
            unit = "" if r["unit"] == "1" else f" {r['unit']}"
            text = (f"window.{column}: wanted {low:g} to {high:g}{unit}, reachable {r['min']:.4g} to "
                    f"{r['max']:.4g}{unit}")
            parts.append(text)
            detail.append({"type": "unreachable", "loc": ["window", column], "msg": text, "low": low, "high": high,
                           "reachable": r})
    if parts:
        raise DesignInfeasibleError("no recipe in the searched box can reach the wanted window under the fixed "
                                    "parameters: " + "; ".join(parts), detail, reachable, None)


def _why(strategy: Strategy, problem: SuggestProblem, columns: list[str], p: np.ndarray, spread: np.ndarray | None,
         score: float | None, rank: int, candidates: int) -> str:
    """One sentence a lab can read: why this recipe, in the targets' own terms."""
    if strategy == "spread" and spread is not None and score is not None:
        parts = ", ".join(f"{c} {p[j]:.4g} ± {spread[j]:.2g} ({100 * spread[j] / abs(p[j]):.1f} %)"
                          for j, c in enumerate(columns))
        return (f"ensemble spread {100 * score:.1f} % of the prediction on average ({parts}); rank {rank} of "
                f"{candidates} candidates after the diversity rule")
    if strategy == "window" and spread is not None and score is not None:
        parts = ", ".join(f"{c} {p[columns.index(c)]:.4g} ± {spread[columns.index(c)]:.2g} for {low:g}–{high:g}"
                          for c, (low, high) in problem.window.items())
        return f"{100 * score:.0f} % chance of landing inside the window ({parts})"
    if strategy == "window_without_spread":
        parts = ", ".join(f"{c} {p[columns.index(c)]:.4g} for {low:g}–{high:g}"
                          for c, (low, high) in problem.window.items())
        return f"predicted inside the window ({parts}); no ensemble spread, so no chance is given"
    return f"space-filling recipe {rank}: no ensemble spread to rank by"
