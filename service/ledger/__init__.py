"""The prediction ledger: every answered row remembered with its model version, every QC measurement joined to
it, and the live accuracy and input drift computed from the two. A library; the service wires it in.

Storage is SQLAlchemy 2 on SQLite (a WAL file, the default) or PostgreSQL, its schema kept by Alembic revisions in
migrations/ that `Ledger.open` applies.
"""

from service.ledger.ids import new_prediction_id
from service.ledger.records import (
    LedgerStats,
    ModelOutputs,
    OutcomeItem,
    OutcomeProblem,
    OutcomeReceipt,
    OutcomesRejectedError,
    PredictionBatch,
    PredictionOutput,
    PredictionRecord,
    StoredOutcome,
    TargetLimits,
    domain_limits,
)
from service.ledger.store import Ledger, LedgerClosedError, LedgerUnreachableError, OutcomeTable

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
