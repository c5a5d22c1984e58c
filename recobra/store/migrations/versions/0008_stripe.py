"""stripe: the webhook inbox and import cursors

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import recobra.store.tables

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=100), nullable=False),
        sa.Column("object_id", sa.String(length=255), nullable=True),
        sa.Column("created", recobra.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_at", recobra.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("tries", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("processed_at", recobra.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_index(op.f("ix_stripe_events_object_id"), "stripe_events", ["object_id"])
    op.create_index(op.f("ix_stripe_events_status"), "stripe_events", ["status"])
    op.create_table(
        "stripe_import_cursors",
        sa.Column("resource", sa.String(length=32), nullable=False),
        sa.Column("starting_after", sa.String(length=255), nullable=True),
        sa.Column("imported", sa.Integer(), nullable=False),
        sa.Column("finished_at", recobra.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", recobra.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("resource", name=op.f("pk_stripe_import_cursors")),
    )


def downgrade() -> None:
    op.drop_table("stripe_import_cursors")
    op.drop_index(op.f("ix_stripe_events_status"), table_name="stripe_events")
    op.drop_index(op.f("ix_stripe_events_object_id"), table_name="stripe_events")
    op.drop_table("stripe_events")
