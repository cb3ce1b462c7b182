"""Engines for the ledger's two stores and its schema upgrade, run in code on open (no alembic.ini).

SQLite (the default, one file in a directory): WAL, so readers never block the writer; synchronous=FULL by
default, so a commit is on disk (the WAL fsynced) before it returns, surviving a power cut and not only a killed
process; the group commit in store.py pays that fsync once per batch of callers (NORMAL is offered, see
SqliteSync). A busy timeout lets several service workers share the file. Transactions are begun by hand because
Python 3.11's sqlite3 would otherwise begin them lazily and commit DDL implicitly: reads BEGIN (deferred), writes
BEGIN IMMEDIATE, so a writer takes the lock up front and waits on the busy timeout instead of failing when two
read-then-write transactions meet.

PostgreSQL: `postgresql://` URLs are given the psycopg (3) driver, the one installed; the upgrade holds a
transaction-scoped advisory lock, so workers starting together migrate once.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import OperationalError, ProgrammingError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The newest revision in migrations/versions (tests/test_ledger.py checks it against Alembic's head): a ledger
# already there is opened without importing Alembic (~0.2 s of a service's start, scripts/bench_service.py).
HEAD_REVISION = "0003"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# FULL: a commit survives a power cut. NORMAL (in WAL): it survives the process being killed (the WAL write is in
# the OS cache), and a power cut may lose the last commits but never corrupts the file; about half the commit time.
SqliteSync = Literal["FULL", "NORMAL"]
# Execution option set on the write engine; the SQLite begin hook reads it to take the write lock at BEGIN.
WRITE_OPTION = "cellmfg_ledger_write"
# pg_advisory_xact_lock key for the schema upgrade: any fixed 64-bit number private to this application.
_MIGRATION_LOCK_KEY = 0x63656C6C6D6667  # "cellmfg"


def sqlite_url(directory: str | Path, filename: str = "ledger.sqlite") -> str:
    """The SQLite URL of the ledger file in `directory` (created if missing)."""
    folder = Path(directory).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / filename}"


POSTGRES_CONNECT_TIMEOUT_S = 5
# The PostgreSQL driver the serving lock installs; SQLAlchemy imports it by this name when a URL asks for it.
POSTGRES_DRIVER = "psycopg"


def normalise_url(url: str) -> str:
    """`postgresql://` -> `postgresql+psycopg://` (SQLAlchemy's default driver for it is psycopg2, not installed)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername=f"postgresql+{POSTGRES_DRIVER}")
    return parsed.render_as_string(hide_password=False)


def create_ledger_engine(url: str, sqlite_synchronous: SqliteSync = "FULL") -> Engine:
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ValueError(f"ledger URL {url!r}: the ledger needs a file (sqlite:///path/ledger.sqlite), "
                             "an in-memory database forgets every prediction")
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        if sqlite_synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"sqlite_synchronous: {sqlite_synchronous!r} (allowed: FULL, NORMAL)")
        event.listen(engine, "connect", partial(_sqlite_on_connect, sqlite_synchronous))
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # A connect that never answers (a partitioned network) would hold the writer and its callers; after this many
    # seconds it fails, and the writer spools (store.py) instead of waiting on.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": POSTGRES_CONNECT_TIMEOUT_S})


def _sqlite_on_connect(synchronous: SqliteSync, dbapi_connection: Any, connection_record: Any) -> None:
    dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see module doc)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    writing = bool(connection.get_execution_options().get(WRITE_OPTION, False))
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writing else "BEGIN")


def write_engine(engine: Engine) -> Engine:
    """`engine` whose transactions take the write lock at BEGIN on SQLite (same pool)."""
    return engine.execution_options(**{WRITE_OPTION: True})


def stored_revision(engine: Engine) -> str | None:
    """The revision in the ledger's `alembic_version` table, read with plain SQL; None for a new database (no
    table) or one without a revision."""
    try:
        with engine.connect() as connection:
            return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except (OperationalError, ProgrammingError):  # no such table: nothing applied yet
        return None


def upgrade_to_head(engine: Engine) -> None:
    """Apply every Alembic revision not yet applied, under a lock so concurrent openers migrate once; a ledger
    already at HEAD_REVISION is left as it is without starting Alembic."""
    if stored_revision(engine) == HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with write_engine(engine).begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
