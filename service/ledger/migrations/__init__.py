"""Alembic scripts of the ledger (env.py and versions/), run in code by service.ledger.migrate; no alembic.ini."""
