"""index ops.statement_snapshots (database, queryid, captured_at): one statement's history

The dashboard's query page charts one statement over days; the primary key (captured_at
first) would make it read every statement of the window. Built concurrently (the capture loop
may be inserting meanwhile).

Revision ID: w02
Revises: w01
Create Date: 2026-11-26
"""
from __future__ import annotations

from collections.abc import Sequence

from studyhub.db.migration_helpers import create_index_concurrently, drop_index_concurrently

revision: str = "w02"
down_revision: str | Sequence[str] | None = "w01"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_statement_snapshots_database_queryid_captured_at"


def upgrade() -> None:
    create_index_concurrently(INDEX, "statement_snapshots", ["database", "queryid", "captured_at"],
                              schema="ops")


def downgrade() -> None:
    drop_index_concurrently(INDEX, table="statement_snapshots", schema="ops")
