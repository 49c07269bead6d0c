"""ops.database_size_snapshots and ops.table_size_snapshots: sizes over time (growth charts)

The dashboard's capture loop (run as the ops role) inserts one row per database and one per
table each time it captures, and prunes rows older than its retention, so the ops role gets
SELECT, INSERT and DELETE. Sizes and row estimates only: no app rows.

Revision ID: w01
Revises: p01
Create Date: 2026-11-26
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from studyhub.db.migration_helpers import grant_to_ops

revision: str = "w01"
down_revision: str | Sequence[str] | None = "p01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LINT_ACK_DOWNGRADE = {
    "drop-table": "the toolkit's own size history, no app data; the dashboard captures sizes again after re-upgrading",
}


def upgrade() -> None:
    op.create_table(
        "database_size_snapshots",
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("database", sa.Text(), nullable=False),
        sa.Column("database_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("captured_at", "database", name=op.f("pk_database_size_snapshots")),
        schema="ops",
    )
    op.create_table(
        "table_size_snapshots",
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("database", sa.Text(), nullable=False),
        sa.Column("schema_name", sa.Text(), nullable=False),
        sa.Column("table_name", sa.Text(), nullable=False),
        sa.Column("row_estimate", sa.BigInteger(), nullable=False),
        sa.Column("total_bytes", sa.BigInteger(), nullable=False),
        sa.Column("heap_bytes", sa.BigInteger(), nullable=False),
        sa.Column("index_bytes", sa.BigInteger(), nullable=False),
        sa.Column("toast_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("captured_at", "database", "schema_name", "table_name",
                                name=op.f("pk_table_size_snapshots")),
        schema="ops",
    )
    op.execute(grant_to_ops(
        "GRANT SELECT, INSERT, DELETE ON ops.database_size_snapshots, ops.table_size_snapshots "
        "TO {role}"))


def downgrade() -> None:
    op.drop_table("table_size_snapshots", schema="ops")
    op.drop_table("database_size_snapshots", schema="ops")
