"""ops.agent_heartbeats and ops.agent_runs: what `studyhub agent` is doing and what it did

The agent (as the ops role) upserts one heartbeat row per agent and profile while it runs, and
inserts one row per finished job run (ok, failed, timeout, cancelled, or missed when a run was
skipped because the previous one still ran). ``diag doctor`` reads the heartbeat age;
``agent status`` reads the runs. Names, times and one-line outcomes: no app rows.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from studyhub.db.migration_helpers import grant_to_ops

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LINT_ACK_DOWNGRADE = {
    "drop-table": "the agent's own records of its heartbeats and job runs, no app data; a "
    "running agent writes them again after re-upgrading",
}

OUTCOMES = ("ok", "failed", "timeout", "cancelled", "missed")


def upgrade() -> None:
    op.create_table(
        "agent_heartbeats",
        sa.Column("agent", sa.Text(), nullable=False),
        sa.Column("profile", sa.Text(), nullable=False),
        sa.Column("host", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("agent", "profile", name=op.f("pk_agent_heartbeats")),
        schema="ops",
    )
    op.create_table(
        "agent_runs",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("agent", sa.Text(), nullable=False),
        sa.Column("profile", sa.Text(), nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("duration_s", sa.Double(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.CheckConstraint("outcome IN ('ok', 'failed', 'timeout', 'cancelled', 'missed')",
                           name=op.f("ck_agent_runs_outcome")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_runs")),
        schema="ops",
    )
    op.create_index(op.f("ix_agent_runs_profile_job_started_at"), "agent_runs",
                    ["profile", "job", "started_at"], schema="ops")
    op.execute(grant_to_ops(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ops.agent_heartbeats, ops.agent_runs TO {role}"))


def downgrade() -> None:
    # the index goes with its table
    op.drop_table("agent_runs", schema="ops")
    op.drop_table("agent_heartbeats", schema="ops")
