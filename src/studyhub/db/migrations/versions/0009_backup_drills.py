"""ops.backup_drills: every restore drill of this database's backups, failed ones too

``studyhub backup drill`` (as the app role) inserts one row per drill; ``diag doctor`` and the
dashboard (as the ops role) read the newest ones, so the ops role gets SELECT only. Names,
times and counts: no app rows.

Revision ID: 0009
Revises: w02
Create Date: 2026-11-27
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from studyhub.db.migration_helpers import grant_to_ops

revision: str = "0009"
down_revision: str | Sequence[str] | None = "w02"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LINT_ACK_DOWNGRADE = {
    "drop-table": "the toolkit's own record of restore drills, no app data; the next "
    "`backup drill` records again after re-upgrading",
}


def upgrade() -> None:
    op.create_table(
        "backup_drills",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("drilled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("profile", sa.Text(), nullable=False),
        sa.Column("database", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("set_name", sa.Text(), nullable=True),
        sa.Column("set_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("duration_s", sa.Double(), nullable=False),
        sa.Column("tables", sa.BigInteger(), nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=False),
        sa.Column("problems", postgresql.ARRAY(sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backup_drills")),
        schema="ops",
    )
    op.execute(grant_to_ops("GRANT SELECT ON ops.backup_drills TO {role}"))


def downgrade() -> None:
    op.drop_table("backup_drills", schema="ops")
