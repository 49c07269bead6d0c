"""ops.activity_snapshots, ops.activity_samples, ops.statement_fingerprints: incident history

``studyhub agent``'s sample job (as the ops role) stores every N seconds one snapshot row
(sessions by state, lock waits, the oldest transaction), one sample row per session that was
doing something or blocked someone (wait events, who blocks it, the lock and relation it waits
for), and the normalised text pg_stat_statements keeps for their query ids; its prune job
deletes by age and size. ``top --at``, ``diag locks --at`` and ``diag history`` read them.
Session metadata and fingerprints only: no app rows, no query text with literals.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from studyhub.db.migration_helpers import grant_to_ops

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LINT_ACK_DOWNGRADE = {
    "drop-table": "the agent's own activity history (session metadata and statement "
    "fingerprints), no app data; the agent samples again after re-upgrading",
}


def upgrade() -> None:
    op.create_table(
        "activity_snapshots",
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_connections", sa.Integer(), nullable=False),
        sa.Column("sessions", sa.Integer(), nullable=False),
        sa.Column("active", sa.Integer(), nullable=False),
        sa.Column("idle", sa.Integer(), nullable=False),
        sa.Column("idle_in_transaction", sa.Integer(), nullable=False),
        sa.Column("other", sa.Integer(), nullable=False),
        sa.Column("waiting", sa.Integer(), nullable=False),
        sa.Column("blocked_chains", sa.Integer(), nullable=False),
        sa.Column("sampled", sa.Integer(), nullable=False),
        sa.Column("longest_transaction_s", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("taken_at", name=op.f("pk_activity_snapshots")),
        schema="ops",
    )
    op.create_table(
        "activity_samples",
        sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("database", sa.Text(), nullable=True),
        sa.Column("role", sa.Text(), nullable=True),
        sa.Column("application", sa.Text(), nullable=True),
        sa.Column("client_addr", postgresql.INET(), nullable=True),
        sa.Column("backend_type", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=True),
        sa.Column("wait_event_type", sa.Text(), nullable=True),
        sa.Column("wait_event", sa.Text(), nullable=True),
        sa.Column("xact_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("query_start", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state_change", sa.DateTime(timezone=True), nullable=True),
        sa.Column("queryid", sa.BigInteger(), nullable=True),
        sa.Column("blocked_by", postgresql.ARRAY(sa.Integer()), nullable=True),
        sa.Column("lock_type", sa.Text(), nullable=True),
        sa.Column("lock_mode", sa.Text(), nullable=True),
        sa.Column("lock_object", sa.Text(), nullable=True),
        sa.Column("held_mode", sa.Text(), nullable=True),
        sa.Column("held_object", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["taken_at"], ["ops.activity_snapshots.taken_at"],
                                name=op.f("fk_activity_samples_taken_at_activity_snapshots"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("taken_at", "pid", name=op.f("pk_activity_samples")),
        schema="ops",
    )
    op.create_table(
        "statement_fingerprints",
        sa.Column("queryid", sa.BigInteger(), nullable=False),
        sa.Column("query", sa.Text(), nullable=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("queryid", name=op.f("pk_statement_fingerprints")),
        schema="ops",
    )
    op.execute(grant_to_ops(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ops.activity_snapshots, ops.activity_samples, "
        "ops.statement_fingerprints TO {role}"))


def downgrade() -> None:
    op.drop_table("statement_fingerprints", schema="ops")
    op.drop_table("activity_samples", schema="ops")
    op.drop_table("activity_snapshots", schema="ops")
