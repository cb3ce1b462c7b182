"""A local spool for a remote ledger's outages: when PostgreSQL cannot commit an answer's rows, the ledger's writer
commits them to an SQLite file on local disk instead (WAL, synchronous=FULL: a commit there is as durable as one
in PostgreSQL), so the answer still goes out and its rows are still committed somewhere before it does. A forwarder
(`forward`) replays the spooled rows into the ledger's database in the order they were spooled once it answers again,
then deletes them from the spool.

Forwarding is idempotent on prediction_id: the rows are inserted with ON CONFLICT DO NOTHING, so a crash between the
database's commit and the spool's delete, two workers forwarding the same file, or a commit whose acknowledgement
was lost in the outage (the rows reached PostgreSQL and were spooled too) never stores a row twice.

The file is named after the database it spools for (host, port, database; never the password), so a spool left by
one database is never replayed into another; every worker of a service shares it, and a restarted service forwards
what the last one left.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, Uuid, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from service.ledger.tables import OutputRow, PredictionRow, UtcDateTime

SPOOL_BUSY_TIMEOUT_S = 30.0
# Rows replayed per transaction into the database: large enough that the forwarder outruns any answering rate,
# small enough that one transaction stays short.
FORWARD_ROWS = 5_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spooled (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rows INTEGER NOT NULL,
    predictions TEXT NOT NULL,
    outputs TEXT NOT NULL
)
"""


def spool_path(directory: str | Path, url: str) -> Path:
    """The spool file in `directory` for the database at `url` (its identity without credentials)."""
    parsed = make_url(url)
    identity = f"{parsed.get_backend_name()}://{parsed.host or ''}:{parsed.port or ''}/{parsed.database or ''}"
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return Path(directory).expanduser().resolve() / f"ledger-spool-{digest}.sqlite3"


def is_outage(error: BaseException) -> bool:
    """An error that says the database could not be reached or lost the connection (worth spooling for), as opposed
    to one that says these rows are wrong (a repeated id: spooling would only postpone the refusal)."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, OperationalError | InterfaceError)


@dataclass(frozen=True)
class SpooledBatch:
    seq: int
    rows: int
    predictions: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


class _Codec:
    """Insert parameters of one table <-> JSON text: UUID and time columns go as text and come back typed (found
    from the table's column types, so a new column of either type needs nothing here)."""

    def __init__(self, table: Table) -> None:
        self._uuids = {c.key for c in table.columns if isinstance(c.type, Uuid)}
        self._times = {c.key for c in table.columns if isinstance(c.type, UtcDateTime)}

    @staticmethod
    def encode(rows: list[dict[str, Any]]) -> str:
        return json.dumps(rows, default=_plain, separators=(",", ":"))

    def decode(self, text: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = json.loads(text)
        for row in rows:
            for key in self._uuids.intersection(row):
                if row[key] is not None:
                    row[key] = uuid.UUID(row[key])
            for key in self._times.intersection(row):
                if row[key] is not None:
                    row[key] = datetime.fromisoformat(row[key])
        return rows


def _plain(value: Any) -> str:
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"ledger times must carry a time zone, got naive {value.isoformat()}")
        return value.isoformat()
    raise TypeError(f"cannot spool a {type(value).__name__}")


_PREDICTIONS = _Codec(PredictionRow.__table__)  # type: ignore[arg-type]
_OUTPUTS = _Codec(OutputRow.__table__)  # type: ignore[arg-type]


class Spool:
    """The spool file: append (committed before it returns), read the oldest, delete forwarded. Thread-safe (the
    ledger's writer appends while its forwarder reads and deletes); processes share it through SQLite's locking."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        connection = sqlite3.connect(path, timeout=SPOOL_BUSY_TIMEOUT_S, isolation_level=None,
                                     check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")  # a spooled answer survives a power cut, as in PostgreSQL
        connection.execute(_SCHEMA)
        self._connection = connection

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def append(self, predictions: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        """Commit rows (the insert parameters the ledger would have sent its database) to the spool."""
        record = (len(predictions), _PREDICTIONS.encode(predictions), _OUTPUTS.encode(outputs))
        with self._lock, self._transaction():
            self._connection.execute("INSERT INTO spooled (rows, predictions, outputs) VALUES (?, ?, ?)", record)

    def oldest(self, max_rows: int = FORWARD_ROWS) -> list[SpooledBatch]:
        """The oldest spooled batches, in spool order, up to about `max_rows` rows (at least one batch)."""
        batches: list[SpooledBatch] = []
        total = 0
        with self._lock:
            cursor = self._connection.execute("SELECT seq, rows, predictions, outputs FROM spooled ORDER BY seq")
            try:
                for seq, rows, predictions, outputs in cursor:
                    if batches and total + rows > max_rows:
                        break
                    batches.append(SpooledBatch(seq, rows, _PREDICTIONS.decode(predictions),
                                                _OUTPUTS.decode(outputs)))
                    total += rows
            finally:
                cursor.close()
        return batches

    def remove(self, seqs: list[int]) -> None:
        """Delete forwarded batches."""
        with self._lock, self._transaction():
            self._connection.executemany("DELETE FROM spooled WHERE seq = ?", [(seq,) for seq in seqs])

    def rows(self) -> int:
        """Prediction rows waiting in the spool (every worker's)."""
        with self._lock:
            return int(self._connection.execute("SELECT coalesce(sum(rows), 0) FROM spooled").fetchone()[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._connection.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._connection.execute("ROLLBACK")
            raise
        self._connection.execute("COMMIT")

    @contextlib.contextmanager
    def forwarding(self) -> Iterator[bool]:
        """True when this process may forward now: one forwarder at a time per spool file (the others skip a
        round rather than replay the same rows at once; replaying them would be harmless, only wasted)."""
        lock_path = self.path.with_suffix(".forward-lock")
        with lock_path.open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def forward(spool: Spool, engine: Engine, max_rows: int = FORWARD_ROWS,
            after_commit: Callable[[list[SpooledBatch]], None] | None = None) -> int:
    """Replay the oldest spooled batches (about `max_rows` rows) into `engine`'s ledger in one transaction, then
    delete them from the spool; returns the rows forwarded (0: the spool was empty). Rows already in the database
    are skipped, so forwarding the same batch twice stores it once. `after_commit` runs between the database's
    commit and the spool's delete (tests put a crash there)."""
    batches = spool.oldest(max_rows)
    if not batches:
        return 0
    predictions = [p for batch in batches for p in batch.predictions]
    outputs = [o for batch in batches for o in batch.outputs]
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    with engine.begin() as connection:
        if predictions:
            connection.execute(dialect.insert(PredictionRow).on_conflict_do_nothing(
                index_elements=[PredictionRow.prediction_id]), predictions)
        if outputs:
            connection.execute(dialect.insert(OutputRow).on_conflict_do_nothing(
                index_elements=[OutputRow.prediction_id, OutputRow.target]), outputs)
    if after_commit is not None:
        after_commit(batches)
    spool.remove([batch.seq for batch in batches])
    return sum(batch.rows for batch in batches)

