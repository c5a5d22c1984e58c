"""leaving and coming back: subscriptions' own changes and their event stream

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import recobra.store.tables

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Batch mode: SQLite cannot drop columns in place, and downgrade must work there too.
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(
            sa.Column("canceled_at", recobra.store.tables.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(
            sa.Column("paused_until", recobra.store.tables.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("discount_percent", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("discount_cycles", sa.Integer(), nullable=True))
    op.create_table(
        "subscription_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subscription_id", sa.String(length=128), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("at", recobra.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_events")),
    )
    op.create_index(
        op.f("ix_subscription_events_subscription_id"), "subscription_events", ["subscription_id"]
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_subscription_events_subscription_id"), table_name="subscription_events")
    op.drop_table("subscription_events")
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("discount_cycles")
        batch.drop_column("discount_percent")
        batch.drop_column("paused_until")
        batch.drop_column("canceled_at")
