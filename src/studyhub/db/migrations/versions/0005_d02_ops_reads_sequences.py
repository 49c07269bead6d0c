"""the ops role may read sequences (for diag doctor's "sequences close to their limit")

SELECT on a sequence shows its last value, not any row; without it pg_sequences hides
last_value from the ops role and the check cannot see a sequence running out. Default
privileges cover sequences the app role creates later.

Revision ID: d02
Revises: d01
Create Date: 2026-11-25
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from studyhub.db.migration_helpers import grant_to_ops

revision: str = "d02"
down_revision: str | Sequence[str] | None = "d01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(grant_to_ops("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public, ops TO {role}"))
    op.execute(grant_to_ops(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public, ops GRANT SELECT ON SEQUENCES TO {role}"))


def downgrade() -> None:
    op.execute(grant_to_ops(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public, ops REVOKE SELECT ON SEQUENCES FROM {role}"))
    op.execute(grant_to_ops("REVOKE SELECT ON ALL SEQUENCES IN SCHEMA public, ops FROM {role}"))
