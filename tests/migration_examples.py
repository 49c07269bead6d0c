"""Small example migrations written into temporary version directories on top of the real
chain (``down_revision`` = the current head), for the lint, apply and roundtrip tests."""

from __future__ import annotations

import textwrap
import uuid
from pathlib import Path

from studyhub.ops import migrate

TEMPLATE = '''\
"""example {rev}"""
import sqlalchemy as sa
from alembic import op

from studyhub.db.migration_helpers import (
    add_check_not_valid, add_foreign_key_not_valid, add_not_null, backfill_in_batches,
    create_index_concurrently, drop_index_concurrently, validate_constraint,
)

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None
{extra}

def upgrade():
{upgrade}


def downgrade():
{downgrade}
'''


def write_example(directory: Path, upgrade: str, *, downgrade: str = "pass", extra: str = "",
                  down: str | None = None, rev: str | None = None) -> str:
    """Write one migration file into ``directory``; returns its revision id."""
    rev = rev or f"ex{uuid.uuid4().hex[:8]}"
    down = down or migrate.heads()[0]
    directory.mkdir(parents=True, exist_ok=True)
    body = textwrap.indent(textwrap.dedent(upgrade).strip() or "pass", "    ")
    down_body = textwrap.indent(textwrap.dedent(downgrade).strip() or "pass", "    ")
    (directory / f"{rev}_example.py").write_text(TEMPLATE.format(
        rev=rev, down=down, extra=textwrap.dedent(extra), upgrade=body, downgrade=down_body))
    return rev
