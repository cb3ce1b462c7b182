"""The prediction ledger: record answered rows (group commit), post outcomes (atomic, idempotent, with history),
export measured rows in the dataset CSV schema, read joined rows for live accuracy, purge, count.

Durability: `record` returns only after the transaction holding its rows has committed (on SQLite with
synchronous=FULL: the WAL is fsynced). Concurrent callers' rows are batched by one writer thread into one
transaction, so many small requests share a commit instead of each paying an fsync.

On PostgreSQL, given a spool directory: when the database cannot be reached, the writer commits the rows to a local
SQLite spool instead (service.ledger.spool; as durable) and keeps doing so until a forwarder thread has replayed the
spool into the database, which it tries every `forward_seconds`. Answers go on; outcomes, which need to read the
predictions, wait for the database.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, Select, delete, func, insert, make_url, select, text, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cellmfg.domain import DATASETS, GROUP_ID, SAMPLE_ID, Kind, feature_columns, kind_of_columns, targets_for
from service.ledger.live import (
    DEFAULT_LAST_N,
    FeatureReference,
    LiveReport,
    ScoredOutcomes,
    input_drift,
    live_accuracy,
)
from service.ledger.migrate import SqliteSync, create_ledger_engine, upgrade_to_head, write_engine
from service.ledger.outcomes import KnownPrediction, ResolvedOutcome, check_outcomes
from service.ledger.records import (
    LedgerClosedError,
    LedgerStats,
    LedgerUnreachableError,
    OutcomeItem,
    OutcomeReceipt,
    OutcomesRejectedError,
    OutcomeTable,
    PredictionBatch,
    PredictionRecord,
    StoredOutcome,
    TargetLimits,
    domain_limits,
)
from service.ledger.spool import Spool, forward, is_outage, spool_path
from service.ledger.tables import OutcomeRow, OutputRow, PredictionRow

log = logging.getLogger("cellmfg.ledger")

# Bound parameters per IN (...) list: well under SQLite's 32,766 and PostgreSQL's 65,535.
_CHUNK = 500
# A post that loses a race for the same (prediction, target, revision) is retried with fresh state.
_POST_ATTEMPTS = 5
# Inline commits (SQLite) leave the WAL's checkpoint (copying it into the database file, fsyncing both) to a thread
# of their own, run this often while there are new commits: SQLite would otherwise run it inside every ~125th
# single-row commit, on the event loop (~0.3 ms per request on average). A checkpoint moves committed pages; it
# changes nothing of what a commit survives.
CHECKPOINT_SECONDS = 0.5
# How often the forwarder looks for spooled rows (and, while the database is away, tries it again).
FORWARD_SECONDS = 1.0


@dataclass(frozen=True)
class _Job:
    """A caller's rows as insert parameters (built in the caller's thread, so the writer only executes)."""

    predictions: list[Any]
    outputs: list[Any]
    future: Future[None]


@dataclass(frozen=True)
class _LoopJob:
    """An answer's rows waiting on an event loop for the loop's grouped commit (`Ledger.record_grouped`)."""

    predictions: list[Any]
    outputs: list[Any]
    future: asyncio.Future[None]


@dataclass(frozen=True)
class _Latest:
    revision: int
    value: float
    unit: str
    measured_at: datetime | None
    note: str | None


def _settle(target: asyncio.Future[None], source: asyncio.Future[None]) -> None:
    """Give `target` the outcome of `source` (an answer's commit by the writer thread)."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(None)


def _cancel_if_cancelled(submitted: Future[None], waiting: asyncio.Future[None]) -> None:
    """A dropped request's rows not yet committed are not recorded (the writer skips a cancelled job)."""
    if waiting.cancelled():
        submitted.cancel()


def _unreachable(error: Exception, what: str) -> LedgerUnreachableError:
    """The outage `error` said for a client (answered 503)."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return LedgerUnreachableError(f"the ledger's database cannot be reached ({reason}): {what} need to read the "
                                  "stored predictions, so they wait for it; predictions are still answered "
                                  "(recorded in the local spool). Retry later")


class Ledger:
    """One ledger on one database. Open with `Ledger.open(url)`; close (or use as a context manager) to flush the
    writer. Thread-safe; each process (service worker) opens its own."""

    def __init__(self, engine: Engine, max_batch_rows: int = 20_000, spool: Spool | None = None,
                 on_spooled: Callable[[int], None] | None = None, forward_seconds: float = FORWARD_SECONDS) -> None:
        self._engine = engine
        self._writer_engine = write_engine(engine)
        self._predictions = _Inserter(PredictionRow.__table__, engine)
        self._outputs = _Inserter(OutputRow.__table__, engine)
        self._max_batch_rows = max_batch_rows
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closed = False
        self._submit_lock = threading.Lock()
        # Held while this process writes predictions (the writer thread, or an inline commit): an inline commit
        # never waits for it, it queues instead.
        self._write_lock = threading.Lock()
        self._inline: sqlite3.Connection | None = None
        self._grouped: list[_LoopJob] = []  # answers waiting for the event loop's grouped commit
        self._grouped_loop: asyncio.AbstractEventLoop | None = None
        self._wal_written = threading.Event()
        self._stop_checkpoints = threading.Event()
        self._checkpointer: threading.Thread | None = None
        self._sqlite_synchronous = "FULL"
        self._thread = threading.Thread(target=self._run_writer, name="ledger-writer", daemon=True)
        self._thread.start()
        # The outage spool (PostgreSQL only): while `_diverting` is set the writer commits to the spool, and only
        # the forwarder, after replaying the spool, sends the writer back to the database.
        self._spool = spool
        self._on_spooled = on_spooled
        self._diverting = threading.Event()
        self._stop_forwarding = threading.Event()
        self._forwarder: threading.Thread | None = None
        if spool is not None:
            if self._predictions.raw:
                raise ValueError("the outage spool is for a remote ledger (PostgreSQL), not for an SQLite file")
            self._report_spooled()
            self._forward_seconds = forward_seconds
            self._forwarder = threading.Thread(target=self._run_forwarder, name="ledger-forwarder", daemon=True)
            self._forwarder.start()

    @classmethod
    def open(cls, url: str, max_batch_rows: int = 20_000, sqlite_synchronous: SqliteSync = "FULL",
             spool_dir: Path | None = None, on_spooled: Callable[[int], None] | None = None) -> Ledger:
        """Connect to `url` (sqlite:///file or postgresql[+psycopg]://...) and bring its schema to the newest
        revision. `sqlite_synchronous`: see service.ledger.migrate.SqliteSync (ignored on PostgreSQL).
        `spool_dir` (PostgreSQL only): where the outage spool lives; `on_spooled` is told the rows waiting in it
        whenever that changes (a gauge)."""
        engine = create_ledger_engine(url, sqlite_synchronous)
        upgrade_to_head(engine)
        spool = Spool(spool_path(spool_dir, url)) if spool_dir is not None else None
        ledger = cls(engine, max_batch_rows=max_batch_rows, spool=spool, on_spooled=on_spooled)
        ledger._sqlite_synchronous = sqlite_synchronous
        return ledger

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        """Commit what is queued, stop the writer, release connections."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(None)
        self._thread.join()
        if self._checkpointer is not None:
            self._stop_checkpoints.set()
            self._checkpointer.join()
        if self._forwarder is not None and self._spool is not None:
            self._stop_forwarding.set()
            self._forwarder.join()
            left = self._spool.rows()
            if left:
                log.warning("ledger: %d answered rows stay in the spool %s; they are forwarded when the ledger is "
                            "next opened", left, self._spool.path)
            self._spool.close()
        with self._write_lock:
            if self._inline is not None:
                self._inline.close()
                self._inline = None
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------------------------------------------------
    # Predictions

    def submit(self, rows: PredictionBatch | Iterable[PredictionRecord]) -> Future[None]:
        """Queue `rows` for the next group commit; the future completes when they are committed (or fails with
        the database's error, for these rows only)."""
        predictions, outputs = self._prepare(rows)
        return self._submit_prepared(predictions, outputs)

    def _submit_prepared(self, predictions: list[Any], outputs: list[Any]) -> Future[None]:
        job = _Job(predictions, outputs, Future())
        if not predictions:
            job.future.set_result(None)
            return job.future
        with self._submit_lock:
            if self._closed:
                raise LedgerClosedError("the ledger is closed; nothing recorded")
            self._queue.put(job)
        return job.future

    def _prepare(self, rows: PredictionBatch | Iterable[PredictionRecord]) -> tuple[list[Any], list[Any]]:
        if isinstance(rows, PredictionBatch) and rows.shadow is not None:
            # A challenger's shadow rows go in the same transaction, after the rows they shadow.
            predictions, outputs = self._prepare(rows.model_copy(update={"shadow": None}))
            shadow_predictions, shadow_outputs = self._prepare(rows.shadow)
            return predictions + shadow_predictions, outputs + shadow_outputs
        if isinstance(rows, PredictionBatch) and self._predictions.raw:
            return _batch_tuples(rows, self._predictions, self._outputs)
        parameters, output_parameters = _batch_parameters(rows) if isinstance(rows, PredictionBatch) else \
            _record_parameters(list(rows))
        return self._predictions.prepare(parameters), self._outputs.prepare(output_parameters)

    def record_inline(self, rows: PredictionBatch | Iterable[PredictionRecord]) -> bool:
        """Commit `rows` on the caller's thread, if that takes no waiting: SQLite only, this process's writer idle
        and the database's write lock free at once. True once committed; False when nothing was written (the
        caller then uses `record`/`submit`). For a few rows answered on an event loop, where the hop to the writer
        thread and back costs more than the commit itself; the same durability (the commit has returned)."""
        if not self._predictions.raw or self._closed:
            return False
        predictions, outputs = self._prepare(rows)
        return self._commit_inline(predictions, outputs)

    def _commit_inline(self, predictions: list[Any], outputs: list[Any]) -> bool:
        """`record_inline` of prepared rows."""
        if not self._predictions.raw or self._closed or not self._write_lock.acquire(blocking=False):
            return False
        try:
            if self._closed:
                return False
            if not predictions:
                return True
            connection = self._inline_connection()
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # another process is writing: queue rather than wait here
                return False
            try:
                connection.executemany(self._predictions.sql, predictions)
                if outputs:
                    connection.executemany(self._outputs.sql, outputs)
                connection.execute("COMMIT")
                self._wal_written.set()
            except sqlite3.OperationalError:  # busy or locked after all: nothing written, the writer retries
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                return False
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return True
        finally:
            self._write_lock.release()

    async def record_grouped(self, rows: PredictionBatch | Iterable[PredictionRecord]) -> None:
        """`record_async` for a few rows answered on an event loop (SQLite): the rows of every answer this loop
        reaches before its next turn are committed together, inline, in one transaction; returns once they are.

        Under load a turn of the loop handles several requests (their sockets became readable together), which
        then share one commit instead of paying ~0.15 ms each (scripts/bench_service.py); a lone request is
        committed on the next turn, as soon as with `record_inline`. Rows the inline commit cannot take at once
        (the write lock busy, or an error) go to the writer thread one answer at a time, as `record_async` sends
        them, so one answer's failure is told to that answer only. An answer whose request was dropped before
        the commit is not recorded (nor answered)."""
        loop = asyncio.get_running_loop()
        if not self._predictions.raw or (self._grouped and self._grouped_loop is not loop):
            await self.record_async(rows)
            return
        predictions, outputs = self._prepare(rows)
        if not predictions:
            return
        job = _LoopJob(predictions, outputs, loop.create_future())
        self._grouped.append(job)
        if len(self._grouped) == 1:
            self._grouped_loop = loop
            loop.call_soon(self._flush_grouped)
        await job.future

    def _flush_grouped(self) -> None:
        jobs, self._grouped = [job for job in self._grouped if not job.future.done()], []
        if not jobs:
            return
        try:
            committed = self._commit_inline([p for job in jobs for p in job.predictions],
                                            [o for job in jobs for o in job.outputs])
        except Exception:  # the writer commits each answer's rows apart and tells each its own error
            committed = False
        if committed:
            for job in jobs:
                job.future.set_result(None)
            return
        for job in jobs:
            try:
                submitted = self._submit_prepared(job.predictions, job.outputs)
            except LedgerClosedError as error:
                job.future.set_exception(error)
                continue
            waiting = asyncio.wrap_future(submitted, loop=job.future.get_loop())
            waiting.add_done_callback(partial(_settle, job.future))
            job.future.add_done_callback(partial(_cancel_if_cancelled, submitted))

    def _inline_connection(self) -> sqlite3.Connection:
        """A plain sqlite3 connection of its own (no pool, no SQLAlchemy events) that never waits for a lock."""
        if self._inline is None:
            database = make_url(str(self._engine.url)).database or ""
            connection = sqlite3.connect(database, timeout=0, isolation_level=None, check_same_thread=False)
            connection.execute(f"PRAGMA synchronous={self._sqlite_synchronous}")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.execute("PRAGMA wal_autocheckpoint=0")  # the checkpointer thread does it (CHECKPOINT_SECONDS)
            self._inline = connection
            self._checkpointer = threading.Thread(target=self._run_checkpoints, args=(database,),
                                                  name="ledger-checkpoint", daemon=True)
            self._checkpointer.start()
        return self._inline

    def _run_checkpoints(self, database: str) -> None:
        connection = sqlite3.connect(database, timeout=0, isolation_level=None, check_same_thread=False)
        try:
            while not self._stop_checkpoints.wait(CHECKPOINT_SECONDS):
                if self._wal_written.is_set():
                    self._wal_written.clear()
                    try:  # PASSIVE: never waits for, nor blocks, readers and writers; what it misses waits a round
                        connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    except sqlite3.Error:
                        log.exception("ledger: WAL checkpoint failed (retried)")
                        self._wal_written.set()
        finally:
            connection.close()

    def record(self, rows: PredictionBatch | Iterable[PredictionRecord], timeout: float | None = None) -> None:
        """Store `rows`; returns once they are committed."""
        self.submit(rows).result(timeout)

    async def record_async(self, rows: PredictionBatch | Iterable[PredictionRecord]) -> None:
        """`record` for async handlers: awaits the commit without blocking the event loop."""
        await asyncio.wrap_future(self.submit(rows))

    def _run_writer(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch, size = [first], len(first.predictions)
            while size < self._max_batch_rows:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                batch.append(job)
                size += len(job.predictions)
            # A caller that cancelled before its commit began (its request was dropped) is not recorded.
            self._commit([job for job in batch if job.future.set_running_or_notify_cancel()])

    def _commit(self, batch: list[_Job]) -> None:
        if not batch:
            return
        if self._diverting.is_set():  # the database is away: straight to the spool
            self._to_spool(batch)
            return
        try:
            self._insert([p for job in batch for p in job.predictions], [o for job in batch for o in job.outputs])
        except Exception as error:  # the futures carry it to the callers
            if self._spool is not None and is_outage(error):
                self._divert(error)
                self._to_spool(batch)
                return
            if len(batch) == 1:
                batch[0].future.set_exception(error)
                return
            for job in batch:  # one caller's bad rows (a repeated id) must not fail the others
                try:
                    self._insert(job.predictions, job.outputs)
                except Exception as job_error:
                    if self._spool is not None and is_outage(job_error):
                        self._divert(job_error)
                        self._to_spool([job])
                    else:
                        job.future.set_exception(job_error)
                else:
                    job.future.set_result(None)
            return
        for job in batch:
            job.future.set_result(None)

    # ----------------------------------------------------------------------------------------------------------
    # The outage spool (PostgreSQL)

    def _divert(self, error: BaseException) -> None:
        if not self._diverting.is_set():
            assert self._spool is not None
            log.warning("ledger: the database cannot commit (%s); answered rows go to the local spool %s until it "
                        "is back", str(error).splitlines()[0] if str(error) else type(error).__name__,
                        self._spool.path)
        self._diverting.set()

    def _to_spool(self, batch: list[_Job]) -> None:
        """Commit `batch` to the spool in one transaction; the callers learn it is committed (or why not)."""
        assert self._spool is not None
        try:
            self._spool.append([p for job in batch for p in job.predictions],
                               [o for job in batch for o in job.outputs])
        except Exception as error:
            for job in batch:
                job.future.set_exception(error)
            return
        for job in batch:
            job.future.set_result(None)
        self._report_spooled()

    def _report_spooled(self) -> None:
        if self._on_spooled is not None and self._spool is not None:
            try:
                self._on_spooled(self._spool.rows())
            except Exception:  # a gauge must never fail a commit
                log.exception("ledger: could not count the spooled rows")

    @property
    def spooled_rows(self) -> int:
        """Answered rows waiting in the outage spool (0 without one)."""
        return 0 if self._spool is None else self._spool.rows()

    def forward_spool(self) -> int:
        """Replay the whole spool into the database (while it answers); returns the rows forwarded. Once the
        spool is empty the writer commits to the database again. Raises the database's error if it is still away."""
        assert self._spool is not None
        forwarded = 0
        with self._spool.forwarding() as mine:
            while mine:
                n = forward(self._spool, self._writer_engine)
                if not n:
                    break
                forwarded += n
                self._report_spooled()
        if self._diverting.is_set():
            if not forwarded:  # nothing was spooled (or another worker forwarded it): is the database back?
                with self._engine.connect() as connection:
                    connection.execute(text("SELECT 1"))
            # Cleared only now: a batch the writer spooled meanwhile is forwarded in the next round.
            self._diverting.clear()
            log.warning("ledger: the database is back; %d spooled rows forwarded, answers are committed there "
                        "again", forwarded)
        elif forwarded:
            log.info("ledger: %d spooled rows forwarded to the database", forwarded)
        return forwarded

    def _run_forwarder(self) -> None:
        assert self._spool is not None
        while not self._stop_forwarding.wait(self._forward_seconds):
            try:
                if self._diverting.is_set() or self._spool.rows():
                    self.forward_spool()
            except Exception as error:
                if not is_outage(error):  # an outage is expected here: the next round tries again
                    log.exception("ledger: forwarding the spool failed")

    def _insert(self, predictions: list[Any], outputs: list[Any]) -> None:
        with self._write_lock, self._writer_engine.begin() as connection:
            self._predictions.execute(connection, predictions)
            self._outputs.execute(connection, outputs)

    # ----------------------------------------------------------------------------------------------------------
    # Outcomes

    def post_outcomes(self, items: Sequence[OutcomeItem], limits: Mapping[str, TargetLimits] | None = None,
                      now: datetime | None = None) -> OutcomeReceipt:
        """Store measured values, all or nothing. Every item is checked first (unknown or ambiguous prediction,
        unknown target or one the prediction lacks, NaN/inf, outside `limits` (default: cellmfg.domain's units
        and physical bounds), wrong unit, the same prediction and target twice); any problem raises
        OutcomesRejectedError listing all of them, and nothing is written. An item equal to the latest stored outcome
        of its (prediction, target) adds nothing; a different value adds a correction (the latest counts)."""
        limits = domain_limits() if limits is None else limits
        recorded_at = now or datetime.now(UTC)
        for attempt in range(_POST_ATTEMPTS):
            try:
                with self._writer_engine.begin() as connection:
                    return self._post(connection, items, limits, recorded_at)
            except IntegrityError:
                if attempt == _POST_ATTEMPTS - 1:
                    raise
            except Exception as error:
                if is_outage(error):
                    raise _unreachable(error, "outcomes") from error
                raise
        raise AssertionError("unreachable")

    def _post(self, connection: Connection, items: Sequence[OutcomeItem], limits: Mapping[str, TargetLimits],
              recorded_at: datetime) -> OutcomeReceipt:
        by_id, by_sample = self._known(connection, items)
        resolved, problems = check_outcomes(items, by_id, by_sample, limits)
        if problems:
            raise OutcomesRejectedError(problems)
        latest = self._latest(connection, {r.prediction_id for r in resolved})
        new_rows, unchanged = [], 0
        for outcome in resolved:
            previous = latest.get((outcome.prediction_id, outcome.target))
            if previous is not None and _same(previous, outcome):
                unchanged += 1
                continue
            new_rows.append({
                "prediction_id": outcome.prediction_id, "target": outcome.target,
                "revision": 1 if previous is None else previous.revision + 1, "value": outcome.value,
                "unit": outcome.unit, "measured_at": outcome.measured_at, "note": outcome.note,
                "recorded_at": recorded_at,
            })
        if new_rows:
            connection.execute(insert(OutcomeRow), new_rows)
        return OutcomeReceipt(written=len(new_rows), unchanged=unchanged)

    def _known(self, connection: Connection, items: Sequence[OutcomeItem],
               ) -> tuple[dict[uuid.UUID, KnownPrediction], dict[tuple[str, str], list[uuid.UUID]]]:
        ids = sorted({item.prediction_id for item in items if item.prediction_id is not None})
        samples = sorted({(item.dataset, item.sample_id) for item in items
                          if item.prediction_id is None and item.dataset is not None and item.sample_id is not None})
        base = (select(PredictionRow.prediction_id, PredictionRow.dataset, PredictionRow.sample_id,
                       OutputRow.target)
                .join(OutputRow, OutputRow.prediction_id == PredictionRow.prediction_id))
        found: list[Any] = []
        for chunk in _chunks(ids):
            found += connection.execute(base.where(PredictionRow.prediction_id.in_(chunk))).all()
        for sample_chunk in _chunks(samples):
            found += connection.execute(
                base.where(tuple_(PredictionRow.dataset, PredictionRow.sample_id).in_(sample_chunk))).all()
        targets: dict[uuid.UUID, set[str]] = {}
        facts: dict[uuid.UUID, tuple[str, str | None]] = {}
        for prediction_id, dataset, sample_id, target in found:
            targets.setdefault(prediction_id, set()).add(target)
            facts[prediction_id] = (dataset, sample_id)
        by_id = {pid: KnownPrediction(pid, dataset, sample_id, frozenset(targets[pid]))
                 for pid, (dataset, sample_id) in facts.items()}
        by_sample: dict[tuple[str, str], list[uuid.UUID]] = {}
        for pid, (dataset, sample_id) in facts.items():
            if sample_id is not None:
                by_sample.setdefault((dataset, sample_id), []).append(pid)
        return by_id, by_sample

    def _latest(self, connection: Connection, prediction_ids: set[uuid.UUID]) -> dict[tuple[uuid.UUID, str], _Latest]:
        latest: dict[tuple[uuid.UUID, str], _Latest] = {}
        for chunk in _chunks(sorted(prediction_ids)):
            rows = connection.execute(
                select(OutcomeRow.prediction_id, OutcomeRow.target, OutcomeRow.revision, OutcomeRow.value,
                       OutcomeRow.unit, OutcomeRow.measured_at, OutcomeRow.note)
                .where(OutcomeRow.prediction_id.in_(chunk)).order_by(OutcomeRow.revision))
            for pid, target, revision, value, unit, measured_at, note in rows:
                latest[(pid, target)] = _Latest(revision, value, unit, measured_at, note)
        return latest

    def outcome_history(self, prediction_id: uuid.UUID) -> list[StoredOutcome]:
        """Every stored outcome row of one prediction, by target, oldest revision first."""
        with Session(self._engine) as session:
            rows = session.scalars(select(OutcomeRow).where(OutcomeRow.prediction_id == prediction_id)
                                   .order_by(OutcomeRow.target, OutcomeRow.revision)).all()
            return [StoredOutcome(prediction_id=r.prediction_id, target=r.target, revision=r.revision, value=r.value,
                                  unit=r.unit, measured_at=r.measured_at, note=r.note, recorded_at=r.recorded_at)
                    for r in rows]

    # ----------------------------------------------------------------------------------------------------------
    # Reading

    def outcomes(self, model: str, since: datetime | None = None) -> OutcomeTable:
        """Rows predicted by `model` (any version) whose target that model predicts has been measured, in the
        dataset CSV schema: sample_id (the prediction_id), group_id (the client's group id, else its sample id,
        else the prediction_id), the inputs, every target column of the kind (latest measured value, blank when
        not measured). `since`: only rows whose latest outcome for the model's target was recorded at or after
        it. Ready for `cellmfg train transfer --data`."""
        with self._engine.connect() as connection:
            answered = connection.execute(
                select(PredictionRow.prediction_id, PredictionRow.dataset, PredictionRow.sample_id,
                       PredictionRow.group_id, PredictionRow.inputs, OutputRow.target)
                .join(OutputRow, OutputRow.prediction_id == PredictionRow.prediction_id)
                .where(OutputRow.model_name == model).order_by(PredictionRow.prediction_id)).all()
            latest = _latest_rows(connection, model)
        measured: dict[tuple[uuid.UUID, str], tuple[float, datetime]] = {
            (pid, target): (value, recorded) for pid, target, value, recorded in latest}
        kept = [row for row in answered if (row.prediction_id, row.target) in measured
                and (since is None or measured[(row.prediction_id, row.target)][1] >= since)]
        kind = _kind(kept[0].dataset, kept[0].inputs) if kept else "electrode"
        features = feature_columns(kind)
        target_columns = [t.column for t in targets_for(kind)]
        rows = []
        for row in kept:
            pid = str(row.prediction_id)
            targets = [measured[(row.prediction_id, column)][0] if (row.prediction_id, column) in measured else None
                       for column in target_columns]
            rows.append((pid, row.group_id or row.sample_id or pid,
                         *(float(row.inputs[column]) for column in features), *targets))
        return OutcomeTable(columns=(SAMPLE_ID, GROUP_ID, *features, *target_columns), rows=tuple(rows))

    def scored(self, model: str, version: str | None = None) -> ScoredOutcomes:
        """Each measured prediction of `model` (one version, or all), joined with its latest outcome, in order of
        the outcome's recording."""
        with self._engine.connect() as connection:
            latest = _latest_subquery()
            query = (select(OutputRow.value, OutputRow.interval_low, OutputRow.interval_high,
                            PredictionRow.in_domain, PredictionRow.group_id, PredictionRow.created_at,
                            OutcomeRow.value, OutcomeRow.recorded_at)
                     .join(PredictionRow, PredictionRow.prediction_id == OutputRow.prediction_id)
                     .join(latest, (latest.c.prediction_id == OutputRow.prediction_id)
                           & (latest.c.target == OutputRow.target))
                     .join(OutcomeRow, (OutcomeRow.prediction_id == latest.c.prediction_id)
                           & (OutcomeRow.target == latest.c.target) & (OutcomeRow.revision == latest.c.revision))
                     .where(OutputRow.model_name == model)
                     .order_by(OutcomeRow.recorded_at, OutcomeRow.id))
            if version is not None:
                query = query.where(OutputRow.model_version == version)
            rows = connection.execute(query).all()
        return ScoredOutcomes(
            predicted=np.array([r[0] for r in rows], dtype=float),
            measured=np.array([r[6] for r in rows], dtype=float),
            interval_low=np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=float),
            interval_high=np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=float),
            in_domain=np.array([bool(r[3]) for r in rows], dtype=bool),
            groups=np.array([r[4] for r in rows], dtype=object),
            predicted_at=np.array([r[5] for r in rows], dtype=object),
        )

    def recent_inputs(self, model: str, version: str | None = None, limit: int = 500) -> dict[str, np.ndarray]:
        """Feature column -> values of the last `limit` rows `model` answered (for input drift)."""
        with self._engine.connect() as connection:
            inputs = list(connection.execute(recent_inputs_query(model, version, limit)).scalars())
        columns = sorted({column for row in inputs for column in row})
        return {column: np.array([row.get(column, np.nan) for row in reversed(inputs)], dtype=float)
                for column in columns}

    def live(self, model: str, version: str, references: Mapping[str, FeatureReference],
             promoted_at: datetime | None = None, last_n: int = DEFAULT_LAST_N, drift_rows: int = 500) -> LiveReport:
        """Live accuracy of one served model version (service.ledger.live.live_accuracy) and the drift of its last
        `drift_rows` inputs against the training `references` (from the model's contract)."""
        return LiveReport(
            model_name=model, model_version=version,
            accuracy=live_accuracy(self.scored(model, version), last_n=last_n, promoted_at=promoted_at),
            drift=input_drift(self.recent_inputs(model, version, limit=drift_rows), references))

    # ----------------------------------------------------------------------------------------------------------
    # Housekeeping

    def retention(self, days: float, now: datetime | None = None) -> int:
        """Delete predictions older than `days` (with their outputs and outcomes); returns how many."""
        if not days > 0:
            raise ValueError(f"retention days: {days} (allowed: > 0)")
        cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
        old = select(PredictionRow.prediction_id).where(PredictionRow.created_at < cutoff)
        with self._writer_engine.begin() as connection:
            connection.execute(delete(OutcomeRow).where(OutcomeRow.prediction_id.in_(old)))
            connection.execute(delete(OutputRow).where(OutputRow.prediction_id.in_(old)))
            return connection.execute(delete(PredictionRow).where(PredictionRow.created_at < cutoff)).rowcount

    def stats(self) -> LedgerStats:
        with self._engine.connect() as connection:
            counts = [connection.execute(select(func.count()).select_from(table)).scalar_one()
                      for table in (PredictionRow, OutputRow, OutcomeRow)]
            size = self._size_bytes(connection)
        return LedgerStats(predictions=counts[0], outputs=counts[1], outcomes=counts[2], size_bytes=size)

    def _size_bytes(self, connection: Connection) -> int:
        if connection.dialect.name == "postgresql":
            return int(connection.execute(text(
                "SELECT pg_total_relation_size('predictions') + pg_total_relation_size('prediction_outputs') "
                "+ pg_total_relation_size('outcomes')")).scalar_one())
        database = make_url(str(self._engine.url)).database or ""
        return sum(path.stat().st_size for path in (Path(database), Path(database + "-wal")) if path.exists())


class _Inserter:
    """Inserts rows of one table. On SQLite the rows are turned into the driver's tuples up front (in the caller's
    thread, with SQLAlchemy's own bind processors, so the stored text is what the ORM reads back) and the writer
    runs one plain executemany: for a 10,000-row request about half of Core's per-row cost. PostgreSQL keeps Core's
    executemany (psycopg's own type adaptation)."""

    def __init__(self, table: Any, engine: Engine) -> None:
        self.table = table
        self.raw = engine.dialect.name == "sqlite"
        dialect = engine.dialect
        compiled = insert(table).compile(dialect=dialect, column_keys=[c.key for c in table.columns])
        self.sql = str(compiled)
        self.keys: list[str] = list(compiled.positiontup or [])
        columns = {c.key: c for c in table.columns}
        self.processors = [columns[key].type.dialect_impl(dialect).bind_processor(dialect) for key in self.keys]

    def prepare(self, rows: list[dict[str, Any]]) -> list[Any]:
        if not self.raw:
            return rows
        pairs = list(zip(self.keys, self.processors, strict=True))
        return [tuple(None if (value := row[key]) is None else value if process is None else process(value)
                      for key, process in pairs) for row in rows]

    def processor(self, key: str) -> Any:
        return self.processors[self.keys.index(key)]

    def columnar(self, columns: Mapping[str, Any], n: int, per_row: set[str], processed: set[str]) -> list[Any]:
        """Driver tuples from columns: a list per row for the keys in `per_row`, else one value for all rows;
        `processed` columns already hold what the driver takes."""
        if n == 1:  # the common single-row answer: one tuple, without the per-column iterators
            return [tuple(_one(columns[key], key in per_row, None if key in processed else process)
                          for key, process in zip(self.keys, self.processors, strict=True))]
        built: list[Any] = []
        for key, process in zip(self.keys, self.processors, strict=True):
            value = columns[key]
            if key not in per_row:
                shared = value if value is None or process is None or key in processed else process(value)
                built.append(itertools.repeat(shared, n))
            elif process is None or key in processed:
                built.append(value)
            else:
                built.append([None if v is None else process(v) for v in value])
        return list(zip(*built, strict=False))

    def execute(self, connection: Connection, prepared: list[Any]) -> None:
        if not prepared:
            return
        if self.raw:
            connection.exec_driver_sql(self.sql, prepared)
        else:
            connection.execute(insert(self.table), prepared)


def recent_inputs_query(model: str, version: str | None, limit: int) -> Select[Any]:
    """The inputs of the last `limit` rows `model` (`version`) answered, newest first. With a version it reads
    `limit` entries of the model index (model, version, prediction_id) backwards: no sort, whatever the ledger's
    size (prediction ids are UUIDv7, in time order)."""
    query = (select(PredictionRow.inputs)
             .join(OutputRow, OutputRow.prediction_id == PredictionRow.prediction_id)
             .where(OutputRow.model_name == model)
             .order_by(OutputRow.prediction_id.desc()).limit(limit))
    return query if version is None else query.where(OutputRow.model_version == version)


def _batch_tuples(batch: PredictionBatch, predictions: _Inserter, outputs: _Inserter) -> tuple[list[Any], list[Any]]:
    """The driver tuples of a batch for SQLite, built column by column: a value the whole batch shares (time,
    dataset, model, ...) goes through its bind processor once, not once per row, and the inputs' JSON is formatted
    from a template. Stores exactly what `_batch_parameters` + `prepare` store; a 10,000-row request takes a
    fraction of their time."""
    n = len(batch)
    ids = [None if i is None else process(i) for i in batch.prediction_ids] \
        if (process := predictions.processor("prediction_id")) is not None else list(batch.prediction_ids)
    prediction_columns = {
        "prediction_id": ids, "created_at": batch.created_at, "dataset": batch.dataset, "endpoint": batch.endpoint,
        "sample_id": batch.sample_ids, "group_id": batch.group_ids, "operator": batch.operator,
        "inputs": _inputs_json(batch), "in_domain": batch.in_domain, "shadow_of": batch.shadow_of,
    }
    # Columns given per row; the others are one value for the batch (sample and group ids may be absent: None).
    per_row = {"prediction_id", "inputs", "in_domain"} | {k for k in ("sample_id", "group_id", "shadow_of")
                                                            if prediction_columns[k] is not None}
    rows = predictions.columnar(prediction_columns, n, per_row, processed={"prediction_id", "inputs"})
    output_rows: list[Any] = []
    for output in batch.outputs:
        columns = {"prediction_id": ids, "target": output.target, "unit": output.unit,
                   "model_name": output.model_name, "model_version": output.model_version,
                   "model_alias": output.model_alias, "value": output.values,
                   "interval_low": output.interval_low, "interval_high": output.interval_high}
        output_rows += outputs.columnar(columns, n, {"prediction_id", "value"} | {
            k for k in ("interval_low", "interval_high") if columns[k] is not None}, processed={"prediction_id"})
    return rows, output_rows


def _one(value: Any, per_row: bool, process: Any) -> Any:
    """The driver value of a one-row column: the row's own (`per_row`) or the shared one, through `process`."""
    if per_row:
        value = value[0]
    return value if value is None or process is None else process(value)


def _inputs_json(batch: PredictionBatch) -> list[str]:
    """Each row's inputs as the JSON text json.dumps writes for {column: value} (finite floats: their repr)."""
    finite = all(math.isfinite(v) for v in batch.inputs[0]) if len(batch.inputs) == 1 else \
        bool(np.isfinite(np.asarray(batch.inputs, dtype=float)).all())  # numpy: cheaper from a few rows on
    if not finite:
        return [json.dumps(dict(zip(batch.feature_columns, row, strict=True))) for row in batch.inputs]
    template = "{" + ", ".join(f"{json.dumps(column)}: %r" for column in batch.feature_columns) + "}"
    return [template % tuple(float(v) for v in row) for row in batch.inputs]


def _record_parameters(rows: Sequence[PredictionRecord]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    predictions = [{
        "prediction_id": row.prediction_id, "created_at": row.created_at, "dataset": row.dataset,
        "endpoint": row.endpoint, "sample_id": row.sample_id, "group_id": row.group_id,
        "operator": row.operator, "inputs": row.inputs, "in_domain": row.in_domain, "shadow_of": row.shadow_of,
    } for row in rows]
    outputs = [{
        "prediction_id": row.prediction_id, "target": output.target, "unit": output.unit,
        "model_name": output.model_name, "model_version": output.model_version,
        "model_alias": output.model_alias, "value": output.value, "interval_low": output.interval_low,
        "interval_high": output.interval_high,
    } for row in rows for output in row.outputs]
    return predictions, outputs


def _batch_parameters(batch: PredictionBatch) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    n = len(batch)
    samples = batch.sample_ids or [None] * n
    groups = batch.group_ids or [None] * n
    predictions = [{
        "prediction_id": pid, "created_at": batch.created_at, "dataset": batch.dataset,
        "endpoint": batch.endpoint, "sample_id": sample, "group_id": group, "operator": batch.operator,
        "inputs": dict(zip(batch.feature_columns, row, strict=True)), "in_domain": in_domain, "shadow_of": shadow,
    } for pid, sample, group, row, in_domain, shadow in zip(batch.prediction_ids, samples, groups, batch.inputs,
                                                             batch.in_domain, _shadow_ids(batch),
                                                             strict=True)]
    outputs = []
    for output in batch.outputs:
        lows: Sequence[float | None] = output.interval_low or [None] * n
        highs: Sequence[float | None] = output.interval_high or [None] * n
        outputs += [{
            "prediction_id": pid, "target": output.target, "unit": output.unit, "model_name": output.model_name,
            "model_version": output.model_version, "model_alias": output.model_alias, "value": value,
            "interval_low": low, "interval_high": high,
        } for pid, value, low, high in zip(batch.prediction_ids, output.values, lows, highs, strict=True)]
    return predictions, outputs


def _shadow_ids(batch: PredictionBatch) -> Sequence[uuid.UUID | None]:
    return batch.shadow_of or [None] * len(batch)


def _same(previous: _Latest, outcome: ResolvedOutcome) -> bool:
    return (previous.value == outcome.value and previous.unit == outcome.unit
            and previous.measured_at == outcome.measured_at and previous.note == outcome.note)


def _latest_subquery() -> Any:
    return (select(OutcomeRow.prediction_id, OutcomeRow.target, func.max(OutcomeRow.revision).label("revision"))
            .group_by(OutcomeRow.prediction_id, OutcomeRow.target).subquery())


def _latest_rows(connection: Connection, model: str) -> list[Any]:
    """(prediction_id, target, value, recorded_at) of the latest outcome of every target of `model`'s rows."""
    latest = _latest_subquery()
    of_model = select(OutputRow.prediction_id).where(OutputRow.model_name == model)
    return list(connection.execute(
        select(OutcomeRow.prediction_id, OutcomeRow.target, OutcomeRow.value, OutcomeRow.recorded_at)
        .join(latest, (OutcomeRow.prediction_id == latest.c.prediction_id) & (OutcomeRow.target == latest.c.target)
              & (OutcomeRow.revision == latest.c.revision))
        .where(OutcomeRow.prediction_id.in_(of_model))).all())


def _kind(dataset: str, inputs: Mapping[str, float]) -> Kind:
    spec = DATASETS.get(dataset)
    return spec.kind if spec is not None else kind_of_columns(list(inputs))


def _chunks(values: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start:start + _CHUNK]
