"""The prediction ledger's store (service.ledger): schema by migration, group commit, atomic and idempotent
outcomes with history, export in the dataset CSV schema, retention, stats, and a process killed with SIGKILL
mid-stream losing nothing it acknowledged. Every store test runs on SQLite in tmp_path (fast tier) and on a
throwaway PostgreSQL with fsync on (integration tier), through the parametrised `ledger_url` fixture."""

from __future__ import annotations

import itertools
import math
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cellmfg.dataio import DATA_DIR, load_csv
from cellmfg.domain import feature_columns
from service.ledger import (
    Ledger,
    ModelOutputs,
    OutcomeItem,
    OutcomesRejectedError,
    PredictionBatch,
    PredictionOutput,
    PredictionRecord,
    TargetLimits,
    new_prediction_id,
)
from service.ledger.ids import _Uuid7Clock, uuid7_from_parts, uuid7_unix_ms
from service.ledger.live import FeatureReference
from service.ledger.migrate import (
    HEAD_REVISION,
    create_ledger_engine,
    current_revision,
    normalise_url,
    sqlite_url,
)
from service.ledger.outcomes_http import outcomes_csv
from service.ledger.tables import Base, OutcomeRow, OutputRow, PredictionRow
from testkit.postgres import Cluster, pg_binary, postgres_cluster

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NMC_INPUTS = {"am_wt_pct": 94.0, "solid_content_pct": 60.0, "coating_speed_m_min": 0.5, "comma_gap_um": 200.0,
              "roll_speed_m_min": 0.4, "roll_gap_um": 100.0}
DENSITY, LOADING = "density_g_cm3", "mass_loading_mg_cm2"


LEDGER_POSTGRES_PORTS = range(5450, 5460)
_databases = itertools.count(1)


@pytest.fixture(scope="module")
def ledger_postgres() -> Iterator[Cluster]:
    """A PostgreSQL cluster for this module's store tests, with fsync on: acknowledged commits are meant to be on
    disk. Started only when a PostgreSQL case runs (the integration tier)."""
    from testkit.processes import free_port

    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (scripts/integration_deps.sh installs them)")
    port = next((p for p in LEDGER_POSTGRES_PORTS if _port_free(p)), None) or free_port()
    with postgres_cluster(initdb, pg_ctl, port, fsync=True) as cluster:
        yield cluster


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every store test runs on the embedded SQLite file and, in the integration tier, on a fresh PostgreSQL
    database named as an operator would write it (`postgresql://`; the ledger adds the driver)."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "ledger")
    cluster: Cluster = request.getfixturevalue("ledger_postgres")
    name = f"ledger_{next(_databases)}"
    cluster.create_database(name)
    return cluster.url(name)


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    with Ledger.open(ledger_url) as opened:
        yield opened


def prediction(targets: tuple[str, ...] = (DENSITY, LOADING), dataset: str = "nmc", sample_id: str | None = None,
               group_id: str | None = None, created_at: datetime | None = None, version: str = "3",
               inputs: dict[str, float] | None = None, values: tuple[float, ...] = (3.0, 20.0),
               interval: tuple[float, float] | None = None, in_domain: bool = True) -> PredictionRecord:
    units = {DENSITY: "g/cm³", LOADING: "mg/cm²", "tortuosity": "1"}
    task = {DENSITY: "density", LOADING: "mass_loading", "tortuosity": "tortuosity"}
    return PredictionRecord(
        prediction_id=new_prediction_id(), created_at=created_at or datetime.now(UTC), dataset=dataset,
        endpoint="json", sample_id=sample_id, group_id=group_id, operator="op-1",
        inputs=dict(inputs or NMC_INPUTS), in_domain=in_domain,
        outputs=tuple(PredictionOutput(target=t, unit=units[t], model_name=f"{task[t]}_{dataset}_onnx",
                                       model_version=version, model_alias="champion", value=v,
                                       interval_low=None if interval is None else interval[0],
                                       interval_high=None if interval is None else interval[1])
                      for t, v in zip(targets, values, strict=False)))


def count(ledger: Ledger, table: type[Base]) -> int:
    with ledger.engine.connect() as connection:
        return len(connection.execute(select(table)).all())


@pytest.fixture
def slow_first_commit(ledger: Ledger) -> Iterator[list[int]]:
    """Holds the writer's first transaction open 0.4 s (so concurrent callers queue up) and counts commits."""
    commits: list[int] = []
    held = threading.Event()

    def on_begin(connection: Any) -> None:
        if not held.is_set():
            held.set()
            time.sleep(0.4)

    def on_commit(connection: Any) -> None:
        commits.append(1)

    event.listen(ledger.engine, "begin", on_begin)
    event.listen(ledger.engine, "commit", on_commit)
    yield commits
    event.remove(ledger.engine, "begin", on_begin)
    event.remove(ledger.engine, "commit", on_commit)


# ---------------------------------------------------------------------------------------------------------------
# Ids (no database)


def test_prediction_ids_are_uuid7_with_rfc9562_version_and_variant_bits_and_the_current_time() -> None:
    before = time.time_ns() // 1_000_000
    value = new_prediction_id()
    after = time.time_ns() // 1_000_000
    assert value.version == 7 and value.variant == uuid.RFC_4122
    assert (value.int >> 76) & 0xF == 7 and (value.int >> 62) & 0b11 == 0b10
    assert before <= uuid7_unix_ms(value) <= after + 1


def test_prediction_ids_strictly_increase_across_threads_and_sort_as_text_in_time_order() -> None:
    with ThreadPoolExecutor(4) as pool:
        batches = list(pool.map(lambda _: [new_prediction_id() for _ in range(5000)], range(4)))
    every = [value for batch in batches for value in batch]
    assert len(set(every)) == len(every)
    for batch in batches:  # each thread's ids in the order it got them
        assert batch == sorted(batch) and [str(v) for v in batch] == sorted(str(v) for v in batch)
    early, late = uuid7_from_parts(1_000, 4095, 2**62 - 1), uuid7_from_parts(1_001, 0, 0)
    assert early < late and str(early) < str(late)


def test_the_uuid7_clock_carries_the_millisecond_forward_when_the_counter_runs_out_or_time_steps_back() -> None:
    clock = _Uuid7Clock()
    stamps = [clock.next(1_000) for _ in range(5000)] + [clock.next(900) for _ in range(10)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)
    assert stamps[-1][0] > 1_000  # more than 4096 ids in one millisecond borrowed later milliseconds


# ---------------------------------------------------------------------------------------------------------------
# Engine and schema


def test_an_in_memory_sqlite_ledger_is_refused_and_postgresql_urls_get_the_installed_driver() -> None:
    with pytest.raises(ValueError, match="needs a file"):
        create_ledger_engine("sqlite://")
    assert normalise_url("postgresql://u:p@h:5432/ledger") == "postgresql+psycopg://u:p@h:5432/ledger"
    assert normalise_url("postgresql+psycopg://h/ledger") == "postgresql+psycopg://h/ledger"


def test_sqlite_ledger_runs_in_wal_with_full_sync_busy_timeout_and_foreign_keys(tmp_path: Path) -> None:
    with Ledger.open(sqlite_url(tmp_path / "ledger")) as ledger, ledger.engine.connect() as connection:
        def pragma(name: str) -> Any:
            return connection.exec_driver_sql(f"PRAGMA {name}").scalar()

        assert pragma("journal_mode") == "wal"
        assert pragma("synchronous") == 2  # FULL
    with Ledger.open(ledger.engine.url.render_as_string(), sqlite_synchronous="NORMAL") as normal, \
            normal.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1
        assert pragma("busy_timeout") == 30_000
        assert pragma("foreign_keys") == 1


def test_the_migrated_schema_equals_the_table_models_at_the_head_revision(ledger: Ledger) -> None:
    assert current_revision(ledger.engine) == HEAD_REVISION == "0003"
    with ledger.engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_ledgers_opened_at_once_on_a_new_database_migrate_it_once(ledger_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        opened = list(pool.map(lambda _: Ledger.open(ledger_url), range(4)))
    try:
        opened[0].record([prediction()])
        assert all(led.stats().predictions == 1 for led in opened)
    finally:
        for led in opened:
            led.close()


# ---------------------------------------------------------------------------------------------------------------
# Recording predictions


def test_recorded_rows_read_back_with_utc_times_inputs_and_one_output_per_target(ledger: Ledger) -> None:
    created = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=UTC)
    row = prediction(sample_id="S-1", group_id="sheet-7", created_at=created, interval=(2.8, 3.2))
    ledger.record([row])
    with Session(ledger.engine) as session:
        stored = session.scalars(select(PredictionRow)).one()
        outputs = session.scalars(select(OutputRow).order_by(OutputRow.target)).all()
    assert stored.prediction_id == row.prediction_id and stored.created_at == created
    assert stored.created_at.tzinfo is UTC and stored.inputs == NMC_INPUTS
    assert (stored.sample_id, stored.group_id, stored.operator, stored.in_domain) == ("S-1", "sheet-7", "op-1", True)
    assert [(o.target, o.model_name, o.model_version, o.value, o.interval_low) for o in outputs] == [
        (DENSITY, "density_nmc_onnx", "3", 3.0, 2.8), (LOADING, "mass_loading_nmc_onnx", "3", 20.0, 2.8)]


def test_concurrent_callers_share_a_group_commit(ledger: Ledger, slow_first_commit: list[int]) -> None:
    rows = [prediction() for _ in range(40)]
    with ThreadPoolExecutor(40) as pool:
        list(pool.map(lambda row: ledger.record([row]), rows))
    assert ledger.stats().predictions == 40
    assert len(slow_first_commit) <= 5, f"{len(slow_first_commit)} commits for 40 callers: no batching"


def test_a_caller_with_a_repeated_id_fails_alone_in_its_batch(ledger: Ledger, slow_first_commit: list[int]) -> None:
    first = prediction()
    blocker = ledger.submit([prediction()])  # held 0.4 s, so the next two share one batch
    repeated = ledger.submit([first, first.model_copy()])
    good = ledger.submit([prediction()])
    blocker.result(10)
    with pytest.raises(IntegrityError):
        repeated.result(10)
    good.result(10)
    assert ledger.stats().predictions == 2


async def _record_async(ledger: Ledger, row: PredictionRecord) -> None:
    await ledger.record_async([row])


def test_record_async_awaits_the_commit(ledger: Ledger) -> None:
    import asyncio

    asyncio.run(_record_async(ledger, prediction()))
    assert ledger.stats().predictions == 1


def test_a_closed_ledger_flushes_what_was_queued_and_refuses_more(ledger_url: str) -> None:
    opened = Ledger.open(ledger_url)
    futures = [opened.submit([prediction()]) for _ in range(20)]
    opened.close()
    assert all(f.done() and f.exception() is None for f in futures)
    with pytest.raises(RuntimeError, match="closed"):
        opened.record([prediction()])
    with Ledger.open(ledger_url) as reopened:
        assert reopened.stats().predictions == 20


def test_a_record_needs_aware_times_and_one_output_per_target() -> None:
    with pytest.raises(ValueError, match="timezone"):
        prediction(created_at=datetime(2026, 1, 1))  # naive on purpose
    with pytest.raises(ValueError, match="appears twice"):
        prediction(targets=(DENSITY, DENSITY))


# ---------------------------------------------------------------------------------------------------------------
# Outcomes


def test_a_post_with_bad_items_lists_every_problem_and_writes_nothing(ledger: Ledger) -> None:
    density_only = prediction(targets=(DENSITY,), sample_id="S-1")
    twice_a, twice_b = prediction(sample_id="S-2"), prediction(sample_id="S-2")
    ledger.record([density_only, twice_a, twice_b])
    pid = density_only.prediction_id
    items = [
        OutcomeItem(prediction_id=pid, values={DENSITY: 3.05}),  # 0: fine on its own
        OutcomeItem(prediction_id=uuid.uuid4(), values={DENSITY: 3.0}),  # 1: unknown id
        OutcomeItem(prediction_id=pid, values={"porosity": 0.3}),  # 2: unknown target
        OutcomeItem(prediction_id=pid, values={LOADING: 20.0}),  # 3: not predicted for this row
        OutcomeItem(prediction_id=twice_a.prediction_id, values={DENSITY: math.nan, LOADING: math.inf}),  # 4
        OutcomeItem(prediction_id=twice_a.prediction_id, values={LOADING: 600.0}),  # 5: beyond 500 mg/cm²
        OutcomeItem(prediction_id=twice_b.prediction_id, values={DENSITY: 3.0}, units={DENSITY: "kg/m3"}),  # 6
        OutcomeItem(values={DENSITY: 3.0}),  # 7: names no prediction
        OutcomeItem(sample_id="S-2", dataset="nmc", values={DENSITY: 3.0}),  # 8: two predictions for S-2
        OutcomeItem(sample_id="S-9", dataset="nmc", values={DENSITY: 3.0}),  # 9: no prediction for S-9
        OutcomeItem(prediction_id=pid, values={DENSITY: 3.1}),  # 10: same prediction and target as item 0
        OutcomeItem(prediction_id=pid, values={}),  # 11: nothing measured
    ]
    with pytest.raises(OutcomesRejectedError) as rejected:
        ledger.post_outcomes(items)
    found = {(p.index, p.field) for p in rejected.value.problems}
    assert found == {(1, "prediction_id"), (2, "porosity"), (3, LOADING), (4, DENSITY), (4, LOADING),
                     (5, LOADING), (6, f"units.{DENSITY}"), (7, "prediction_id"), (8, "sample_id"),
                     (9, "sample_id"), (10, DENSITY), (11, "values")}
    by_key = {(p.index, p.field): p for p in rejected.value.problems}
    assert by_key[(5, LOADING)].allowed == "[0, 500] mg/cm²" and "physically impossible" in by_key[(5, LOADING)].message
    assert by_key[(6, f"units.{DENSITY}")].allowed == "g/cm³"
    assert by_key[(3, LOADING)].allowed == DENSITY
    assert str(twice_b.prediction_id) in str(by_key[(8, "sample_id")].allowed)
    assert count(ledger, OutcomeRow) == 0


def test_limits_come_from_the_caller(ledger: Ledger) -> None:
    row = prediction(targets=(DENSITY,))
    ledger.record([row])
    narrow = {DENSITY: TargetLimits(unit="g/cm³", low=2.0, high=4.0)}
    with pytest.raises(OutcomesRejectedError, match=r"\[2, 4\] g/cm³"):
        ledger.post_outcomes([OutcomeItem(prediction_id=row.prediction_id, values={DENSITY: 4.5})], narrow)
    assert ledger.post_outcomes([OutcomeItem(prediction_id=row.prediction_id, values={DENSITY: 3.5},
                                             units={DENSITY: "g/cm3"})], narrow).written == 1


def test_reposting_is_idempotent_and_a_correction_is_a_new_revision_that_counts(ledger: Ledger) -> None:
    row = prediction()
    ledger.record([row])
    measured = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    first = OutcomeItem(prediction_id=row.prediction_id, values={DENSITY: 2.9, LOADING: 19.0},
                        measured_at=measured, note="QC lab")
    assert ledger.post_outcomes([first]).written == 2
    assert ledger.post_outcomes([first]).model_dump() == {"written": 0, "unchanged": 2}
    corrected = first.model_copy(update={"values": {DENSITY: 2.95, LOADING: 19.0}})
    assert ledger.post_outcomes([corrected]).model_dump() == {"written": 1, "unchanged": 1}
    history = ledger.outcome_history(row.prediction_id)
    assert [(o.target, o.revision, o.value) for o in history] == [
        (DENSITY, 1, 2.9), (DENSITY, 2, 2.95), (LOADING, 1, 19.0)]
    assert history[0].measured_at == measured and history[0].note == "QC lab"
    scored = ledger.scored("density_nmc_onnx")
    assert scored.measured.tolist() == [2.95] and scored.predicted.tolist() == [3.0]


def test_an_outcome_resolves_by_sample_id_within_its_dataset(ledger: Ledger) -> None:
    nmc, si_gra = prediction(sample_id="S-1"), prediction(sample_id="S-1", dataset="si_gra")
    ledger.record([nmc, si_gra])
    ledger.post_outcomes([OutcomeItem(sample_id="S-1", dataset="si_gra", values={DENSITY: 1.4})])
    assert ledger.outcome_history(nmc.prediction_id) == []
    assert [o.value for o in ledger.outcome_history(si_gra.prediction_id)] == [1.4]


def test_identical_posts_racing_store_one_row(ledger: Ledger) -> None:
    row = prediction()
    ledger.record([row])
    item = OutcomeItem(prediction_id=row.prediction_id, values={DENSITY: 2.9})
    with ThreadPoolExecutor(8) as pool:
        receipts = list(pool.map(lambda _: ledger.post_outcomes([item]), range(8)))
    assert sorted(r.written for r in receipts) == [0] * 7 + [1]
    assert count(ledger, OutcomeRow) == 1


# ---------------------------------------------------------------------------------------------------------------
# Reading back: export, scores, drift inputs


def test_measured_rows_export_in_the_dataset_csv_schema_and_load_as_training_data(ledger: Ledger,
                                                                                 tmp_path: Path) -> None:
    shipped = load_csv(DATA_DIR / "nmc.csv", required_targets=[DENSITY, LOADING], kind="electrode").frame.head(12)
    features = feature_columns("electrode")
    inputs, density, loading = (shipped[features].to_numpy(), shipped[DENSITY].to_numpy(),
                                shipped[LOADING].to_numpy())
    rows = [prediction(sample_id=str(sample), group_id=str(group),
                       inputs=dict(zip(features, map(float, x), strict=True)))
            for sample, group, x in zip(shipped["sample_id"], shipped["group_id"], inputs, strict=True)]
    ledger.record(rows)
    # density measured for rows 0-9, mass loading too for rows 0-4; rows 10-11 never measured
    ledger.post_outcomes([
        OutcomeItem(prediction_id=row.prediction_id,
                    values={DENSITY: float(density[i])} | ({LOADING: float(loading[i])} if i < 5 else {}))
        for i, row in enumerate(rows[:10])])
    exported = ledger.outcomes("density_nmc_onnx")
    assert list(exported.columns) == ["sample_id", "group_id", *features, DENSITY, LOADING]
    assert exported.column("sample_id") == [str(r.prediction_id) for r in rows[:10]]
    assert exported.column("group_id") == shipped["group_id"].head(10).tolist()
    np.testing.assert_allclose([exported.column(f) for f in features], shipped[features].head(10).to_numpy().T)
    np.testing.assert_allclose(exported.column(DENSITY), shipped[DENSITY].head(10).to_numpy())
    assert [v is None for v in exported.column(LOADING)] == [False] * 5 + [True] * 5
    assert len(ledger.outcomes("mass_loading_nmc_onnx")) == 5
    path = tmp_path / "rows.csv"
    path.write_text(outcomes_csv(exported), encoding="utf-8")
    loaded = load_csv(path, required_targets=[DENSITY], kind="electrode")
    assert len(loaded.frame) == 10 and loaded.ignored_columns == []
    assert len(ledger.outcomes("density_nmc_onnx", since=datetime.now(UTC) + timedelta(minutes=1))) == 0


def test_scored_rows_are_per_version_and_recent_inputs_follow_the_model(ledger: Ledger) -> None:
    old = [prediction(version="2", values=(2.0, 20.0)) for _ in range(3)]
    new = [prediction(version="3", values=(3.3, 20.0), group_id="sheet-1", interval=(3.0, 3.5)) for _ in range(2)]
    ledger.record(old + new)
    ledger.post_outcomes([OutcomeItem(prediction_id=r.prediction_id, values={DENSITY: 3.0}) for r in old + new])
    version_3 = ledger.scored("density_nmc_onnx", version="3")
    assert version_3.predicted.tolist() == [3.3, 3.3] and version_3.groups.tolist() == ["sheet-1"] * 2
    assert version_3.interval_low.tolist() == [3.0, 3.0]
    assert len(ledger.scored("density_nmc_onnx")) == 5
    assert np.isnan(ledger.scored("density_nmc_onnx", version="2").interval_low).all()
    inputs = ledger.recent_inputs("density_nmc_onnx", limit=4)
    assert sorted(inputs) == sorted(NMC_INPUTS) and inputs["roll_gap_um"].tolist() == [100.0] * 4


def test_a_versions_recent_inputs_are_its_newest_rows_read_off_the_model_index(ledger: Ledger) -> None:
    from service.ledger.store import recent_inputs_query

    # One row per record call, in time order (UUIDv7 ids); another version's rows interleaved must not count.
    for gap in range(1, 31):
        ledger.record([prediction(version="4", inputs={**NMC_INPUTS, "roll_gap_um": float(gap)})])
        ledger.record([prediction(version="5", inputs={**NMC_INPUTS, "roll_gap_um": 1000.0 + gap})])
    assert ledger.recent_inputs("density_nmc_onnx", "4", limit=5)["roll_gap_um"].tolist() == [26, 27, 28, 29, 30]
    if ledger.engine.dialect.name != "sqlite":  # PostgreSQL's planner picks by statistics: a tiny table is scanned
        return
    # The plan SQLite runs: backwards along the (model, version, prediction_id) index, no sort of the version's rows.
    statement = recent_inputs_query("density_nmc_onnx", "4", 500).compile(
        ledger.engine, compile_kwargs={"literal_binds": True})
    with ledger.engine.connect() as connection:
        plan = " | ".join(row[-1] for row in connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}"))
    assert "ix_prediction_outputs_model_recent" in plan and "TEMP B-TREE" not in plan, plan


def test_live_report_of_a_version_joins_predictions_outcomes_and_recent_inputs(ledger: Ledger) -> None:
    # 60 rows by version 3: the first 10 off by 20 %, the last 50 by 5 %; a fifth of the rows at roll gap 300 µm,
    # outside the training range 20-206 µm. Version 2's rows must not count.
    rows = [prediction(version="3", values=(3.6 if i < 10 else 3.15, 20.0), in_domain=i % 5 != 0,
                       inputs=NMC_INPUTS | {"roll_gap_um": 300.0 if i % 5 == 0 else 100.0}) for i in range(60)]
    other = [prediction(version="2", values=(9.0, 20.0)) for _ in range(5)]
    ledger.record(rows + other)
    ledger.post_outcomes([OutcomeItem(prediction_id=r.prediction_id, values={DENSITY: 3.0}) for r in rows + other])
    reference = FeatureReference(training_min=20.0, training_max=206.0,
                                 quantile_edges=(20.0, 60.0, 100.0, 150.0, 206.0))
    report = ledger.live("density_nmc_onnx", "3", {"roll_gap_um": reference}, last_n=50)
    assert report.accuracy.n_outcomes == 60
    assert report.accuracy.last_n.mape_pct == pytest.approx(5.0)
    assert report.accuracy.share_in_domain == pytest.approx(0.8)
    assert report.drift["roll_gap_um"].n == 60 and report.drift["roll_gap_um"].share_outside == pytest.approx(0.2)
    everything = ledger.live("density_nmc_onnx", "3", {}, last_n=100)
    assert everything.accuracy.last_n.mape_pct == pytest.approx((10 * 20 + 50 * 5) / 60)


# ---------------------------------------------------------------------------------------------------------------
# Housekeeping


def test_retention_deletes_old_predictions_with_their_outputs_and_outcomes(ledger: Ledger) -> None:
    now = datetime.now(UTC)
    old, recent = prediction(created_at=now - timedelta(days=40)), prediction(created_at=now - timedelta(days=5))
    ledger.record([old, recent])
    ledger.post_outcomes([OutcomeItem(prediction_id=r.prediction_id, values={DENSITY: 3.0}) for r in (old, recent)])
    assert ledger.retention(30, now=now) == 1
    stats = ledger.stats()
    assert (stats.predictions, stats.outputs, stats.outcomes) == (1, 2, 1)
    assert ledger.outcome_history(old.prediction_id) == []
    with pytest.raises(ValueError, match="allowed: > 0"):
        ledger.retention(0)


def test_stats_count_rows_and_the_store_grows(ledger: Ledger) -> None:
    empty = ledger.stats()
    ledger.record([prediction() for _ in range(200)])
    grown = ledger.stats()
    assert (empty.predictions, grown.predictions, grown.outputs, grown.outcomes) == (0, 200, 400, 0)
    assert grown.size_bytes > empty.size_bytes > 0


# ---------------------------------------------------------------------------------------------------------------
# Durability: SIGKILL during a stream of predictions and outcomes


# The child records from 4 threads and posts an outcome for every 3rd acknowledged prediction; it prints a line
# only after the call returned (the acknowledgement a client would get), so every printed id must survive.
DURABILITY_CHILD = r"""
import sys, threading
from datetime import UTC, datetime
from service.ledger import Ledger, OutcomeItem, PredictionOutput, PredictionRecord, new_prediction_id

ledger = Ledger.open(sys.argv[1], sqlite_synchronous=sys.argv[2])
say = threading.Lock()
inputs = {"am_wt_pct": 94.0, "solid_content_pct": 60.0, "coating_speed_m_min": 0.5, "comma_gap_um": 200.0,
          "roll_speed_m_min": 0.4, "roll_gap_um": 100.0}

def work(worker):
    n = 0
    while True:
        n += 1
        rows = [PredictionRecord(prediction_id=new_prediction_id(), created_at=datetime.now(UTC), dataset="nmc",
                                 endpoint="json", inputs=inputs, in_domain=True,
                                 outputs=(PredictionOutput(target="density_g_cm3", unit="g/cm³",
                                                           model_name="density_nmc_onnx", model_version="1",
                                                           value=3.0),)) for _ in range(1 + n % 3)]
        ledger.record(rows)
        with say:
            for row in rows:
                sys.stdout.write(f"P {row.prediction_id}\n")
            sys.stdout.flush()
        if n % 3 == 0:
            value = round(2.0 + (n % 97) / 100, 2)
            ledger.post_outcomes([OutcomeItem(prediction_id=rows[0].prediction_id, values={"density_g_cm3": value})])
            with say:
                sys.stdout.write(f"O {rows[0].prediction_id} {value}\n")
                sys.stdout.flush()

for worker in range(4):
    threading.Thread(target=work, args=(worker,), daemon=True).start()
threading.Event().wait()
"""


def kill_during_stream(url: str, synchronous: str = "FULL", predictions: int = 600,
                       outcomes: int = 60) -> tuple[list[str], dict[str, float]]:
    """Run the child on `url`, SIGKILL it once it acknowledged `predictions` rows and `outcomes` outcomes (its
    writer busy with more), and return every acknowledged prediction id and outcome."""
    child = subprocess.Popen([sys.executable, "-c", DURABILITY_CHILD, url, synchronous], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=PROJECT_ROOT, text=True)
    lines: queue.Queue[str] = queue.Queue()
    assert child.stdout is not None
    # A reader thread, so a child that stops printing fails the test at the deadline instead of hanging it.
    def pump() -> None:
        for line in child.stdout or ():
            lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    acked: list[str] = []
    posted: dict[str, float] = {}
    deadline = time.monotonic() + 120
    try:
        while len(acked) < predictions or len(posted) < outcomes:
            try:
                _read(lines.get(timeout=max(0.0, deadline - time.monotonic())), acked, posted)
            except queue.Empty:
                child.kill()
                pytest.fail(f"child acknowledged {len(acked)} rows and {len(posted)} outcomes in 120 s; "
                            f"stderr: {child.communicate(timeout=30)[1][-3000:]}")
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        reader.join(30)
        # Lines already in the pipe were acknowledged before the kill; an unfinished last line was not.
        while not lines.empty():
            line = lines.get()
            if line.endswith("\n"):
                _read(line, acked, posted)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    return acked, posted


def _read(line: str, acked: list[str], posted: dict[str, float]) -> None:
    kind, *rest = line.split()
    if kind == "P":
        acked.append(rest[0])
    else:
        posted[rest[0]] = float(rest[1])


def test_sigkill_during_a_stream_loses_no_acknowledged_prediction_or_outcome(ledger_url: str) -> None:
    check_nothing_acknowledged_was_lost(ledger_url, *kill_during_stream(ledger_url))


def test_sqlite_with_normal_sync_also_keeps_everything_acknowledged_through_sigkill(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path / "ledger")
    check_nothing_acknowledged_was_lost(url, *kill_during_stream(url, synchronous="NORMAL"))


def test_two_processes_writing_one_ledger_at_once_keep_everything_through_sigkill(ledger_url: str) -> None:
    # As two service workers share one ledger: both open (and migrate) it at once, write concurrently, die.
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: kill_during_stream(ledger_url, predictions=300, outcomes=30), range(2)))
    acked = [pid for run in runs for pid in run[0]]
    posted = {pid: value for run in runs for pid, value in run[1].items()}
    check_nothing_acknowledged_was_lost(ledger_url, acked, posted)


def check_nothing_acknowledged_was_lost(url: str, acked: list[str], posted: dict[str, float]) -> None:
    with Ledger.open(url) as reopened, reopened.engine.connect() as connection:
        stored = {str(v) for v in connection.execute(select(PredictionRow.prediction_id)).scalars()}
        outcomes = {(str(p), v) for p, v in connection.execute(select(OutcomeRow.prediction_id, OutcomeRow.value))}
    missing = [pid for pid in acked if pid not in stored]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged predictions lost after SIGKILL"
    assert set(posted.items()) <= outcomes, "acknowledged outcomes lost after SIGKILL"
    assert len(stored) >= len(acked) >= 600  # rows committed but not yet printed when the kill came are fine


# ---------------------------------------------------------------------------------------------------------------
# Columnar batches (large requests)


def test_a_columnar_batch_stores_the_same_rows_as_records(ledger: Ledger) -> None:
    ids = [new_prediction_id() for _ in range(3)]
    features = list(NMC_INPUTS)
    batch = PredictionBatch(
        created_at=datetime(2026, 4, 1, tzinfo=UTC), dataset="nmc", endpoint="csv", operator="op-2",
        prediction_ids=ids, sample_ids=["a", None, "c"], group_ids=None, feature_columns=features,
        inputs=[[*NMC_INPUTS.values()], [*NMC_INPUTS.values()], [*NMC_INPUTS.values()]], in_domain=[True, False, True],
        outputs=[ModelOutputs(target=DENSITY, unit="g/cm³", model_name="density_nmc_onnx", model_version="3",
                              values=[3.0, 3.1, 3.2], interval_low=[2.9, 3.0, 3.1], interval_high=[3.1, 3.2, 3.3]),
                 ModelOutputs(target=LOADING, unit="mg/cm²", model_name="mass_loading_nmc_onnx", model_version="2",
                              values=[20.0, 21.0, 22.0])])
    ledger.record(batch)
    with Session(ledger.engine) as session:
        stored = session.scalars(select(PredictionRow).order_by(PredictionRow.prediction_id)).all()
        outputs = session.scalars(select(OutputRow).where(OutputRow.prediction_id == ids[1])
                                  .order_by(OutputRow.target)).all()
    assert [(r.prediction_id, r.sample_id, r.in_domain, r.operator) for r in stored] == [
        (ids[0], "a", True, "op-2"), (ids[1], None, False, "op-2"), (ids[2], "c", True, "op-2")]
    assert stored[1].inputs == NMC_INPUTS
    assert [(o.target, o.value, o.interval_low, o.interval_high) for o in outputs] == [
        (DENSITY, 3.1, 3.0, 3.2), (LOADING, 21.0, None, None)]
    with pytest.raises(ValueError, match="lengths"):
        PredictionBatch.model_validate(batch.model_dump() | {"in_domain": [True]})
