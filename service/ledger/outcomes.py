"""Checking posted outcomes against what the ledger knows, as a pure function: every problem of every item is
collected (so a 400 can list them all), and only a post with none is resolved into rows to write."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from service.ledger.records import OutcomeItem, OutcomeProblem, TargetLimits, units_match

# How many candidate ids an "ambiguous sample id" problem lists.
_SHOWN_CANDIDATES = 5


@dataclass(frozen=True)
class KnownPrediction:
    """What validation needs of a stored prediction: its dataset, sample id and predicted target columns."""

    prediction_id: uuid.UUID
    dataset: str
    sample_id: str | None
    targets: frozenset[str]


@dataclass(frozen=True)
class ResolvedOutcome:
    """One measured (prediction, target) value, checked, in the contract's unit."""

    index: int
    prediction_id: uuid.UUID
    target: str
    value: float
    unit: str
    measured_at: datetime | None
    note: str | None


def check_outcomes(
    items: Sequence[OutcomeItem],
    by_id: Mapping[uuid.UUID, KnownPrediction],
    by_sample: Mapping[tuple[str, str], Sequence[uuid.UUID]],
    limits: Mapping[str, TargetLimits],
) -> tuple[list[ResolvedOutcome], list[OutcomeProblem]]:
    """Resolve each item to its prediction and check each value; `by_sample` maps (dataset, sample_id) to every
    prediction id stored for it. Returns (resolved outcomes, problems); use the outcomes only if problems is empty."""
    resolved: list[ResolvedOutcome] = []
    problems: list[OutcomeProblem] = []
    first_seen: dict[tuple[uuid.UUID, str], int] = {}
    for index, item in enumerate(items):
        known, item_problems = _resolve(index, item, by_id, by_sample)
        problems += item_problems
        if not item.values:
            problems.append(OutcomeProblem(index=index, field="values", message="no measured target value",
                                           allowed=", ".join(sorted(limits))))
        for target, value in item.values.items():
            value_problems = _check_value(index, target, value, item.units.get(target), known, limits)
            problems += value_problems
            if value_problems or known is None:
                continue
            key = (known.prediction_id, target)
            if key in first_seen:
                problems.append(OutcomeProblem(
                    index=index, field=target,
                    message=f"prediction {known.prediction_id} {target} is already measured by item "
                            f"{first_seen[key]} of this post", allowed="one value per prediction and target"))
                continue
            first_seen[key] = index
            resolved.append(ResolvedOutcome(index=index, prediction_id=known.prediction_id, target=target,
                                            value=value, unit=limits[target].unit, measured_at=item.measured_at,
                                            note=item.note))
        for target in sorted(set(item.units) - set(item.values)):
            problems.append(OutcomeProblem(index=index, field=f"units.{target}",
                                           message="a unit for a target without a value",
                                           allowed=", ".join(sorted(item.values))))
    return resolved, problems


def _resolve(
    index: int,
    item: OutcomeItem,
    by_id: Mapping[uuid.UUID, KnownPrediction],
    by_sample: Mapping[tuple[str, str], Sequence[uuid.UUID]],
) -> tuple[KnownPrediction | None, list[OutcomeProblem]]:
    if item.prediction_id is not None:
        known = by_id.get(item.prediction_id)
        if known is None:
            return None, [OutcomeProblem(index=index, field="prediction_id",
                                         message=f"unknown prediction_id {item.prediction_id}",
                                         allowed="an id the service returned (and retention has kept)")]
        mismatch = [(name, given, stored) for name, given, stored in
                    (("dataset", item.dataset, known.dataset), ("sample_id", item.sample_id, known.sample_id))
                    if given is not None and given != stored]
        return known, [OutcomeProblem(index=index, field=name,
                                      message=f"{given!r} differs from {stored!r} stored with prediction "
                                              f"{known.prediction_id}", allowed=repr(stored))
                       for name, given, stored in mismatch]
    if item.sample_id is None or item.dataset is None:
        return None, [OutcomeProblem(index=index, field="prediction_id", message="no prediction named",
                                     allowed="prediction_id, or sample_id together with dataset")]
    candidates = by_sample.get((item.dataset, item.sample_id), ())
    if not candidates:
        return None, [OutcomeProblem(index=index, field="sample_id",
                                     message=f"no prediction for sample_id {item.sample_id!r} in dataset "
                                             f"{item.dataset!r}",
                                     allowed="a sample_id sent with a prediction request for this dataset")]
    if len(candidates) > 1:
        shown = ", ".join(str(c) for c in sorted(candidates)[-_SHOWN_CANDIDATES:])
        return None, [OutcomeProblem(index=index, field="sample_id",
                                     message=f"sample_id {item.sample_id!r} in dataset {item.dataset!r} matches "
                                             f"{len(candidates)} predictions; name one by prediction_id",
                                     allowed=f"prediction_id, latest: {shown}")]
    return by_id[candidates[0]], []


def _check_value(
    index: int,
    target: str,
    value: float,
    unit: str | None,
    known: KnownPrediction | None,
    limits: Mapping[str, TargetLimits],
) -> list[OutcomeProblem]:
    limit = limits.get(target)
    if limit is None:
        return [OutcomeProblem(index=index, field=target, message=f"unknown target {target!r}",
                               allowed=", ".join(sorted(limits)))]
    problems: list[OutcomeProblem] = []
    if known is not None and target not in known.targets:
        problems.append(OutcomeProblem(
            index=index, field=target,
            message=f"prediction {known.prediction_id} has no {target} prediction to compare with",
            allowed=", ".join(sorted(known.targets))))
    if not math.isfinite(value):
        problems.append(OutcomeProblem(index=index, field=target, message=f"{value} is not a finite number",
                                       allowed=limit.text()))
    elif not limit.low <= value <= limit.high:
        problems.append(OutcomeProblem(index=index, field=target,
                                       message=f"{value:g} {limit.unit} is physically impossible",
                                       allowed=limit.text()))
    if unit is not None and not units_match(unit, limit.unit):
        problems.append(OutcomeProblem(index=index, field=f"units.{target}",
                                       message=f"unit {unit!r} is not the contract's unit", allowed=limit.unit))
    return problems
