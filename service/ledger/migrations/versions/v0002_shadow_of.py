"""Shadow predictions: predictions.shadow_of links a challenger's shadow row to the champion's answered row.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # A nullable column without constraints: SQLite adds it in place (no table copy), PostgreSQL without a rewrite.
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("shadow_of", sa.Uuid(), nullable=True))
    op.create_index("ix_predictions_shadow_of", "predictions", ["shadow_of"])


def downgrade() -> None:
    op.drop_index("ix_predictions_shadow_of", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("shadow_of")
