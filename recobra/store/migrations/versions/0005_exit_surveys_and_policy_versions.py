"""exit surveys and policy versions

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import recobra.store.tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exit_surveys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=True),
        sa.Column("subscription_id", sa.String(length=128), nullable=True),
        sa.Column("plan_id", sa.String(length=128), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("locale", sa.String(length=8), nullable=False),
        sa.Column("offer", sa.String(length=32), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("created_at", recobra.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exit_surveys")),
    )
    op.create_index(op.f("ix_exit_surveys_customer_id"), "exit_surveys", ["customer_id"])
    op.create_index(op.f("ix_exit_surveys_created_at"), "exit_surveys", ["created_at"])
    op.create_table(
        "policy_versions",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("created_at", recobra.store.tables.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("activated_at", recobra.store.tables.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_policy_versions")),
    )
    op.create_index(op.f("ix_policy_versions_activated_at"), "policy_versions", ["activated_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_policy_versions_activated_at"), table_name="policy_versions")
    op.drop_table("policy_versions")
    op.drop_index(op.f("ix_exit_surveys_created_at"), table_name="exit_surveys")
    op.drop_index(op.f("ix_exit_surveys_customer_id"), table_name="exit_surveys")
    op.drop_table("exit_surveys")
