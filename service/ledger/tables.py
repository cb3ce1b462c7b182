"""The ledger's tables (SQLAlchemy 2 typed declarative). The Alembic revisions in migrations/versions create them;
a test checks that the migrated schema equals this metadata.

- predictions: one row per answered request row (its id, time, the client's fields, inputs, in-domain flag). A
  challenger's shadow prediction of a row is a row of its own whose `shadow_of` names the champion's row (the one
  the client got, and the one the QC lab's outcome is posted for); it carries no client fields, so an outcome
  posted by sample id never finds it.
- prediction_outputs: one row per (request row x target model): model name/version/alias, value and interval.
  A row predicted for density and mass loading has one prediction_id and two outputs, so a QC measurement of
  both targets names one id.
- outcomes: measured values; a correction is a new row with the next `revision` of its (prediction, target), and
  the highest revision counts. The unique (prediction_id, target, revision) turns two concurrent posts of the same
  correction into one write and one retry instead of two rows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime stored as naive UTC: SQLite keeps no zone, so both stores hold the same thing, and
    reading attaches UTC again. A naive value is refused rather than guessed."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"ledger times must carry a time zone, got naive {value.isoformat()}")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit identity.
_BIG_ID = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class PredictionRow(Base):
    __tablename__ = "predictions"

    prediction_id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)
    dataset: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(32))
    sample_id: Mapped[str | None] = mapped_column(String(256))
    group_id: Mapped[str | None] = mapped_column(String(256))
    operator: Mapped[str | None] = mapped_column(String(256))
    inputs: Mapped[dict[str, float]] = mapped_column(JSON())
    in_domain: Mapped[bool]
    # The champion's row this row shadows (None: an answered row). No foreign key: both rows are written in one
    # transaction with the same created_at, so retention deletes them together.
    shadow_of: Mapped[uuid.UUID | None] = mapped_column(Uuid(), index=True)

    __table_args__ = (Index("ix_predictions_dataset_sample_id", "dataset", "sample_id"),)


class OutputRow(Base):
    __tablename__ = "prediction_outputs"

    prediction_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(), ForeignKey("predictions.prediction_id", ondelete="CASCADE"), primary_key=True)
    target: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit: Mapped[str] = mapped_column(String(32))
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_alias: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float())
    interval_low: Mapped[float | None] = mapped_column(Float())
    interval_high: Mapped[float | None] = mapped_column(Float())

    # Ends in prediction_id (UUIDv7, time order): a version's last N rows are read off the index, newest first.
    __table_args__ = (Index("ix_prediction_outputs_model_recent", "model_name", "model_version", "prediction_id"),)


class OutcomeRow(Base):
    __tablename__ = "outcomes"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    prediction_id: Mapped[uuid.UUID] = mapped_column(Uuid())
    target: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer())
    value: Mapped[float] = mapped_column(Float())
    unit: Mapped[str] = mapped_column(String(32))
    measured_at: Mapped[datetime | None] = mapped_column(UtcDateTime())
    note: Mapped[str | None] = mapped_column(Text())
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime(), index=True)

    __table_args__ = (
        ForeignKeyConstraint(["prediction_id", "target"],
                             ["prediction_outputs.prediction_id", "prediction_outputs.target"], ondelete="CASCADE"),
        UniqueConstraint("prediction_id", "target", "revision", name="uq_outcomes_revision"),
    )
