"""When a served version was promoted, read from the ledger (service.ledger.tenure.serving_since): the start of its
current run as the answering version of its alias, on a real SQLite ledger; the tracker that rereads it only every
few minutes; and the live figures since then."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.ledger import Ledger, OutcomeItem, PredictionOutput, PredictionRecord
from service.ledger.ids import new_prediction_id
from service.ledger.tenure import TenureTracker, serving_since

T0 = datetime(2026, 5, 1, tzinfo=UTC)
MODEL = "density_nmc_onnx"


def _row(hour: float, version: str, alias: str = "champion", shadow_of: uuid.UUID | None = None,
         value: float = 3.0) -> PredictionRecord:
    return PredictionRecord(
        prediction_id=new_prediction_id(), created_at=T0 + timedelta(hours=hour), dataset="nmc", endpoint="json",
        sample_id=None, group_id=None, operator=None,
        inputs={"roll_gap_um": 100.0}, in_domain=True, shadow_of=shadow_of,
        outputs=(PredictionOutput(target="density_g_cm3", unit="g/cm3", model_name=MODEL, model_version=version,
                                  model_alias=alias, value=value),))


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}") as opened:
        yield opened


def _since(ledger: Ledger, version: str, alias: str = "champion") -> datetime | None:
    return serving_since(ledger.engine, MODEL, version, alias)


def test_a_version_serves_since_its_first_answer_after_the_last_answer_of_another(ledger: Ledger) -> None:
    assert _since(ledger, "2") is None  # nothing answered yet
    ledger.record([_row(0, "1"), _row(1, "1")])
    assert _since(ledger, "1") == T0
    ledger.record([_row(2, "2"), _row(3, "2")])
    assert _since(ledger, "2") == T0 + timedelta(hours=2)
    assert _since(ledger, "1") is None  # replaced: no current run
    # Two replicas disagree for a moment during the swap: the run starts after the old version's last answer.
    ledger.record([_row(2.5, "1"), _row(2.75, "2")])
    assert _since(ledger, "2") == T0 + timedelta(hours=2.75)
    # Rolled back to v1 at hour 4: only its new run counts, and v2 has no current run.
    ledger.record([_row(4, "1"), _row(5, "1")])
    assert _since(ledger, "1") == T0 + timedelta(hours=4)
    assert _since(ledger, "2") is None


def test_shadow_rows_and_other_aliases_do_not_break_the_run(ledger: Ledger) -> None:
    answered = _row(0, "1")
    # v3 shadow-scored v1's answer as a challenger, and another service answered with v3 under its own alias.
    ledger.record([answered, _row(0, "3", alias="challenger", shadow_of=answered.prediction_id),
                   _row(1, "3", alias="staging"), _row(2, "1")])
    assert _since(ledger, "1") == T0
    assert _since(ledger, "3") is None and _since(ledger, "3", alias="staging") == T0 + timedelta(hours=1)


def test_the_live_figures_since_promotion_count_only_the_current_run(ledger: Ledger) -> None:
    # v1 answered at hours 0-1 (10 % off), v2 at 2-3, v1 again from hour 4 (30 % off): since its promotion back,
    # v1's MAPE is 30 %, while its last-N MAPE mixes both runs.
    rows = [_row(0, "1", value=3.3), _row(1, "1", value=3.3), _row(2, "2"), _row(3, "2"),
            _row(4, "1", value=3.9), _row(5, "1", value=3.9)]
    ledger.record(rows)
    ledger.post_outcomes([OutcomeItem(prediction_id=r.prediction_id, values={"density_g_cm3": 3.0}) for r in rows
                          if r.outputs[0].model_version == "1"])
    promoted = _since(ledger, "1")
    report = ledger.live(MODEL, "1", {}, promoted_at=promoted)
    assert report.accuracy.last_n.n == 4 and report.accuracy.last_n.mape_pct == pytest.approx(20.0)
    since = report.accuracy.since_promotion
    assert since is not None and since.since == "2026-05-01T04:00:00+00:00"
    assert (since.n, since.mape_pct) == (2, pytest.approx(30.0)) and since.interval_pct == pytest.approx((30, 30))


def test_the_tracker_rereads_a_start_only_after_its_period_and_at_once_for_a_new_version(ledger: Ledger) -> None:
    clock = [0.0]
    tracker = TenureTracker(reread_seconds=600, clock=lambda: clock[0])
    assert tracker.since(ledger.engine, MODEL, "2", "champion") is None  # not answered yet: read at every call
    ledger.record([_row(0, "1"), _row(2, "2")])
    assert tracker.since(ledger.engine, MODEL, "2", "champion") == T0 + timedelta(hours=2)
    # Another replica still answered with v1 after v2's first answer: seen at the next reading, not before.
    ledger.record([_row(2.5, "1"), _row(3, "2")])
    clock[0] = 599.0
    assert tracker.since(ledger.engine, MODEL, "2", "champion") == T0 + timedelta(hours=2)
    clock[0] = 600.0
    assert tracker.since(ledger.engine, MODEL, "2", "champion") == T0 + timedelta(hours=3)
    # Rolled back to v1: a version not asked before is read at once.
    ledger.record([_row(4, "1")])
    assert tracker.since(ledger.engine, MODEL, "1", "champion") == T0 + timedelta(hours=4)
