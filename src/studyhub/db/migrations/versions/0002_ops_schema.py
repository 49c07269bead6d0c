"""ops schema for the toolkit's own tables (snapshots, audit, erasure ledger)

The ``ops`` schema belongs to the app role (it runs migrations); the ops role
(``studyhub_ops``, pg_monitor + pg_signal_backend) may use it. Tables added later grant
what the ops role needs, table by table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from studyhub.db.migration_helpers import grant_to_ops

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LINT_ACK_DOWNGRADE = {
    "ban-drop-schema": "the ops schema holds only the toolkit's tables, which the later "
    "migrations' downgrades have dropped by then: DROP SCHEMA (not CASCADE) fails otherwise",
}



def upgrade() -> None:
    op.execute("CREATE SCHEMA ops")
    op.execute(grant_to_ops("GRANT USAGE ON SCHEMA ops TO {role}"))


def downgrade() -> None:
    op.execute("DROP SCHEMA ops")
