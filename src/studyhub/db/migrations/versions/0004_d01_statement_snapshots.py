"""ops.statement_snapshots: pg_stat_statements history that survives a stats reset

``diag slow-queries`` (run as the ops role) inserts one row per statement per run and prunes
rows older than its retention, so the ops role gets SELECT, INSERT and DELETE.

Revision ID: d01
Revises: m01
Create Date: 2026-11-25
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from studyhub.db.migration_helpers import grant_to_ops

revision: str = "d01"
down_revision: str | Sequence[str] | None = "m01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LINT_ACK_DOWNGRADE = {
    "drop-table": "the toolkit's own pg_stat_statements history, no app data; diag slow-queries collects it again after re-upgrading",
}


def upgrade() -> None:
    op.create_table(
        "statement_snapshots",
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("database", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("queryid", sa.BigInteger(), nullable=False),
        sa.Column("stats_reset", sa.DateTime(timezone=True), nullable=True),
        sa.Column("query", sa.Text(), nullable=False),
        sa.Column("calls", sa.BigInteger(), nullable=False),
        sa.Column("total_exec_ms", sa.Double(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("shared_blks_hit", sa.BigInteger(), nullable=False),
        sa.Column("shared_blks_read", sa.BigInteger(), nullable=False),
        sa.Column("blk_read_ms", sa.Double(), nullable=False),
        sa.Column("blk_write_ms", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint(
            "captured_at", "database", "role", "queryid", name=op.f("pk_statement_snapshots")
        ),
        schema="ops",
    )
    op.execute(grant_to_ops("GRANT SELECT, INSERT, DELETE ON ops.statement_snapshots TO {role}"))


def downgrade() -> None:
    op.drop_table("statement_snapshots", schema="ops")
