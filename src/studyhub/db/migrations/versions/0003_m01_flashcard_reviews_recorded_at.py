"""flashcard_reviews.recorded_at: when a review reached the server (expand, backfill, contract)

``reviewed_at`` is the device's clock at the moment of the review; reviews made offline on a
phone reach the server hours or days later. ``recorded_at`` is when the row was written:
incremental exports and syncs ("reviews written since my last cursor") need it — a cursor on
``reviewed_at`` misses late-synced reviews — and it tells late-synced reviews apart. New rows get
``now()`` from the column default; existing rows are backfilled with ``reviewed_at``, the best
value there is for them (a ``DEFAULT now()`` in ADD COLUMN would give every old row the
migration's timestamp instead).

This is the worked example of docs/migrations.md: on a large, busy flashcard_reviews no step
holds a lock that blocks reads or writes for longer than a catalog update or one batch.

Revision ID: m01
Revises: 0002
Create Date: 2026-11-26
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from studyhub.db.migration_helpers import (
    add_not_null,
    backfill_in_batches,
    create_index_concurrently,
    drop_index_concurrently,
)

revision: str = "m01"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_flashcard_reviews_student_id_recorded_at"


def upgrade() -> None:
    # Expand: a nullable column without default is a catalog change (brief ACCESS EXCLUSIVE,
    # no rewrite); the default only applies to rows inserted from now on.
    op.add_column("flashcard_reviews",
                  sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True),
                  if_not_exists=True)
    op.alter_column("flashcard_reviews", "recorded_at", server_default=sa.text("now()"))
    # Backfill: committed batches outside the migration's transaction; writers wait for one
    # batch's row locks at most.
    backfill_in_batches("flashcard_reviews", set_sql="recorded_at = reviewed_at",
                        where_sql="recorded_at IS NULL", batch_size=5000)
    # Contract: CHECK NOT VALID -> VALIDATE (SHARE UPDATE EXCLUSIVE) -> SET NOT NULL (no scan).
    add_not_null("flashcard_reviews", "recorded_at")
    # A student's reviews written since a cursor (incremental export and sync).
    create_index_concurrently(INDEX, "flashcard_reviews", ["student_id", "recorded_at"])


def downgrade() -> None:
    drop_index_concurrently(INDEX, table="flashcard_reviews")
    op.drop_column("flashcard_reviews", "recorded_at")
