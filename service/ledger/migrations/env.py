"""Alembic environment of the ledger: runs only on the connection service.ledger.migrate hands over (inside its
locked transaction), never from an ini file's URL."""

from __future__ import annotations

from alembic import context

from service.ledger.tables import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the ledger's migrations run through service.ledger.migrate.upgrade_to_head(engine), "
                       "which passes an open connection; there is no alembic.ini")
# render_as_batch: SQLite alters a table by copying it, which later revisions will need.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
