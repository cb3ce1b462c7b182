"""The prediction ledger: every answered row remembered with its model version, every QC measurement joined to
it, and the live accuracy and input drift computed from the two. A library; the service wires it in.

Storage is SQLAlchemy 2 on SQLite (a WAL file, the default) or PostgreSQL, its schema kept by Alembic revisions in
migrations/ that `Ledger.open` applies (and skips, without importing Alembic, when the ledger is at the newest).

The names below are imported from their modules on first use: the records, ids and errors need neither SQLAlchemy
nor Alembic (~0.4 s of imports), so the service's worker takes them at import time and imports the store (`Ledger`)
only where it opens the ledger, off the path to /readyz (service.ledger.recording).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from service.ledger.ids import new_prediction_id
    from service.ledger.records import (
        LedgerClosedError,
        LedgerStats,
        LedgerUnreachableError,
        ModelOutputs,
        OutcomeItem,
        OutcomeProblem,
        OutcomeReceipt,
        OutcomesRejectedError,
        OutcomeTable,
        PredictionBatch,
        PredictionOutput,
        PredictionRecord,
        StoredOutcome,
        TargetLimits,
        domain_limits,
    )
    from service.ledger.store import Ledger

_MODULE_OF = {
    "Ledger": "service.ledger.store",
    "new_prediction_id": "service.ledger.ids",
    **{name: "service.ledger.records" for name in (
        "LedgerClosedError", "LedgerStats", "LedgerUnreachableError", "ModelOutputs", "OutcomeItem", "OutcomeProblem",
        "OutcomeReceipt", "OutcomeTable", "OutcomesRejectedError", "PredictionBatch", "PredictionOutput",
        "PredictionRecord", "StoredOutcome", "TargetLimits", "domain_limits")},
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'service.ledger' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Ledger",
    "LedgerClosedError",
    "LedgerStats",
    "LedgerUnreachableError",
    "ModelOutputs",
    "OutcomeItem",
    "OutcomeProblem",
    "OutcomeReceipt",
    "OutcomeTable",
    "OutcomesRejectedError",
    "PredictionBatch",
    "PredictionOutput",
    "PredictionRecord",
    "StoredOutcome",
    "TargetLimits",
    "domain_limits",
    "new_prediction_id",
]
