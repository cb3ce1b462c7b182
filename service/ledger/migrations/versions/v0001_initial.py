"""The ledger's first schema: predictions, prediction_outputs, outcomes.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# Frozen copies of the types in service.ledger.tables: a revision must not change when the models do later.
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("prediction_id", sa.Uuid(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("sample_id", sa.String(256), nullable=True),
        sa.Column("group_id", sa.String(256), nullable=True),
        sa.Column("operator", sa.String(256), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("in_domain", sa.Boolean(), nullable=False),
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_index("ix_predictions_dataset_sample_id", "predictions", ["dataset", "sample_id"])
    op.create_table(
        "prediction_outputs",
        sa.Column("prediction_id", sa.Uuid(), sa.ForeignKey("predictions.prediction_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("target", sa.String(64), primary_key=True),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("model_name", sa.String(128), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("model_alias", sa.String(64), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("interval_low", sa.Float(), nullable=True),
        sa.Column("interval_high", sa.Float(), nullable=True),
    )
    op.create_index("ix_prediction_outputs_model", "prediction_outputs", ["model_name", "model_version"])
    op.create_table(
        "outcomes",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("prediction_id", sa.Uuid(), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("measured_at", sa.DateTime(timezone=False), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("recorded_at", sa.DateTime(timezone=False), nullable=False),
        sa.ForeignKeyConstraint(["prediction_id", "target"],
                                ["prediction_outputs.prediction_id", "prediction_outputs.target"],
                                ondelete="CASCADE"),
        sa.UniqueConstraint("prediction_id", "target", "revision", name="uq_outcomes_revision"),
    )
    op.create_index("ix_outcomes_recorded_at", "outcomes", ["recorded_at"])


def downgrade() -> None:
    op.drop_table("outcomes")
    op.drop_table("prediction_outputs")
    op.drop_table("predictions")
