"""erasure ledger: ops.erasure_ledger, the ids a restored backup must erase again

Revision ID: p01
Revises: d02
Create Date: 2026-11-25
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "p01"
down_revision: str | Sequence[str] | None = "d02"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The ops role gets no grant: the ledger is read and written by the app role only.
    op.create_table(
        "erasure_ledger",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("student_id", sa.Uuid(), nullable=True),
        sa.Column("pseudonym", sa.Text(), nullable=False),
        sa.Column("erased_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("rows_deleted", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("rows_deleted >= 0",
                           name=op.f("ck_erasure_ledger_rows_deleted_positive")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_erasure_ledger")),
        schema="ops",
    )


def downgrade() -> None:
    op.drop_table("erasure_ledger", schema="ops")
