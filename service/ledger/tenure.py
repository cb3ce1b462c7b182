"""When a served model version was promoted, as the ledger saw it: the start of its current run as the version that
answers under its alias.

The registry moves an alias at one instant, but the service only starts answering with the new version at its next
poll (each replica at its own), and a bundle has no promotion time at all. What the live MAPE "since promotion"
should cover is what the version answered as the served one, so the time is read from the answers themselves:
the version's first answered row after the last row any other version of the model answered under the same alias.
That also handles a rollback (v2, then v3, then v2 again: only v2's rows after v3's last count) and the few
seconds two replicas disagree during a swap (the run starts after the old version's last answer). Challenger
shadow rows (`shadow_of` set) were never answered and do not count. Retention deleting a version's first rows moves
its start forward to its oldest kept row when it is next read in full (a new `TenureTracker`, i.e. a restart).

`serving_since` reads every answer of the model (about 0.2 s for 100,000 rows on SQLite), so the service's
housekeeping asks a `TenureTracker`, which reads it when a version is first served and again every few minutes:
the start only changes when the served version does (a new key, read at once) or when another replica still
answered with the old version for a few seconds after this one swapped (picked up at the next reading).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Engine, func, select

from service.ledger.tables import OutputRow, PredictionRow

# How long a tracked start is reused before it is read again.
REREAD_SECONDS = 600.0


def serving_since(engine: Engine, model: str, version: str, alias: str) -> datetime | None:
    """The time (aware, UTC) `version` of `model` began its current run as the answering version of `alias`;
    None when it has answered nothing under that alias since another version last did."""
    answered = (select(func.max(PredictionRow.created_at)).select_from(PredictionRow)
                .join(OutputRow, OutputRow.prediction_id == PredictionRow.prediction_id)
                .where(OutputRow.model_name == model, OutputRow.model_alias == alias,
                       PredictionRow.shadow_of.is_(None)))
    with engine.connect() as connection:
        last_other = connection.execute(answered.where(OutputRow.model_version != version)).scalar_one()
        first = answered.with_only_columns(func.min(PredictionRow.created_at)).where(
            OutputRow.model_version == version)
        if last_other is not None:
            first = first.where(PredictionRow.created_at > last_other)
        started = connection.execute(first).scalar_one()
    return started if isinstance(started, datetime) else None


class TenureTracker:
    """`serving_since` of the served versions, each read again after `reread_seconds`. A version that has not
    answered yet (None) is read at every call, so its start appears with its first answer (the reading is cheap
    then unless the model's former versions answered a lot). Only each model's version asked for last is kept.
    Not thread-safe: the caller refreshes under its own lock."""

    def __init__(self, reread_seconds: float = REREAD_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._reread_seconds = reread_seconds
        self._clock = clock
        self._known: dict[tuple[str, str, str], tuple[datetime, float]] = {}

    def since(self, engine: Engine, model: str, version: str, alias: str) -> datetime | None:
        key = (model, version, alias)
        now = self._clock()
        known = self._known.get(key)
        if known is not None and now - known[1] < self._reread_seconds:
            return known[0]
        started = serving_since(engine, model, version, alias)
        self._known = {k: v for k, v in self._known.items() if k[0] != model}  # the model's former versions
        if started is not None:
            self._known[key] = (started, now)
        return started
