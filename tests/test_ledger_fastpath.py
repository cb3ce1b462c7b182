"""The ledger's columnar SQLite path (service.ledger.store._batch_tuples) stores exactly what the generic path
(`_batch_parameters` + the bind processors) stores, and bulk ids are UUIDv7s in increasing order."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from service.ledger import Ledger, ModelOutputs, PredictionBatch, new_prediction_id
from service.ledger.ids import new_prediction_ids, uuid7_unix_ms
from service.ledger.store import _batch_parameters, _batch_tuples


def test_the_columnar_sqlite_rows_equal_the_generic_ones(tmp_path: Path) -> None:
    batch = PredictionBatch(
        created_at=datetime.now(UTC), dataset="nmc", endpoint="json", operator="ann",
        prediction_ids=[new_prediction_id() for _ in range(3)], sample_ids=["a", None, "c"], group_ids=None,
        feature_columns=["x", "y"], inputs=[[1.0, 2.5], [0.1, 3e-7], [1e20, -0.0]], in_domain=[True, False, True],
        outputs=[ModelOutputs(target="density_g_cm3", unit="g/cm³", model_name="m", model_version="1",
                              model_alias=None, values=[1.0, 2.0, 3.0], interval_low=[0.5, 1.0, 2.0],
                              interval_high=None)])
    with Ledger.open(f"sqlite:///{tmp_path / 'ledger.sqlite3'}") as ledger:
        inserters = ledger._predictions, ledger._outputs
        predictions, outputs = _batch_tuples(batch, *inserters)
        generic_predictions, generic_outputs = _batch_parameters(batch)
        assert predictions == inserters[0].prepare(generic_predictions)
        assert outputs == inserters[1].prepare(generic_outputs)
        ledger.record(batch)
        assert ledger.stats().predictions == 3


def test_bulk_ids_are_increasing_uuid7s_of_now() -> None:
    before = new_prediction_id()
    ids = new_prediction_ids(5000)
    after = new_prediction_id()
    assert all(i.version == 7 for i in ids) and len(set(ids)) == 5000
    assert [before, *ids, after] == sorted([before, *ids, after])
    assert uuid7_unix_ms(ids[-1]) - uuid7_unix_ms(ids[0]) < 5000


def _one_row() -> PredictionBatch:
    return PredictionBatch(
        created_at=datetime.now(UTC), dataset="nmc", endpoint="json", prediction_ids=[new_prediction_id()],
        feature_columns=["x"], inputs=[[1.0]], in_domain=[True],
        outputs=[ModelOutputs(target="density_g_cm3", unit="g/cm³", model_name="m", model_version="1",
                              values=[2.0])])


def test_an_inline_commit_never_waits_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    import sqlite3
    import time

    import pytest

    path = tmp_path / "ledger.sqlite3"
    with Ledger.open(f"sqlite:///{path}", sqlite_synchronous="NORMAL") as ledger:
        first = _one_row()
        assert ledger.record_inline(first) is True
        assert ledger.stats().predictions == 1
        with pytest.raises(sqlite3.IntegrityError):  # the same id again: refused, not stored twice
            ledger.record_inline(first)
        # Another process holds the database's write lock: the inline commit gives up at once, nothing written.
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        started = time.perf_counter()
        assert ledger.record_inline(_one_row()) is False
        assert time.perf_counter() - started < 0.05
        other.execute("ROLLBACK")
        other.close()
        # This process's writer is committing: no wait either.
        with ledger._write_lock:
            assert ledger.record_inline(_one_row()) is False
        assert ledger.stats().predictions == 1
