"""The review sync feed: every review of the caller's that reached the server after a cursor,
in the order the server recorded them — what a phone that reviews offline needs to merge the
reviews made on the student's other devices.

Why ``recorded_at`` and not ``reviewed_at``: reviews made offline arrive hours or days after
they were made, so a cursor on the device's ``reviewed_at`` would skip them. ``recorded_at`` is
the writing transaction's start (``now()``, migration m01), so it is not commit order either: a
transaction that started before a row that is already visible may still commit an older
``recorded_at``. The feed therefore never hands out rows at or past a horizon: the start of the
oldest transaction still open on the primary (as the app role sees them in pg_stat_activity),
read in a statement *before* the one that reads the rows, so anything recorded before the
horizon had committed (or failed) when the rows were read. Reads go to the primary: a replica
cannot see the primary's open transactions. Served by ix_flashcard_reviews_student_id_recorded_at.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncConnection

from studyhub.api.deps import RequestDb, student_db
from studyhub.api.pagination import decode_cursor, encode_cursor
from studyhub.api.routers.flashcards import REVIEW_COLUMNS, reviews
from studyhub.api.schemas import Limit, ReviewSyncOut, ReviewSyncPage
from studyhub.ops.queries import load

router = APIRouter(prefix="/reviews", tags=["flashcards"])

# The oldest transaction start among the app's other open transactions, or now.
HORIZON = sa.text(load("get_oldest_transaction_start"))


@router.get("/sync", response_model=ReviewSyncPage)
async def sync_reviews(limit: Limit = 100, cursor: str | None = Query(None, max_length=200),
                       db: RequestDb = Depends(student_db)) -> ReviewSyncPage:
    """The caller's reviews recorded after ``cursor`` (all of them without one), oldest first.
    Keep the returned ``next_cursor`` and pass it next time; ``more`` says whether to ask again
    now. Reviews still being written are held back until they have committed."""
    assert db.me is not None
    sid = db.me.student_id
    after = decode_cursor(cursor) if cursor else None

    async def work(conn: AsyncConnection) -> tuple[list, datetime]:
        horizon: datetime = (await conn.execute(HORIZON)).scalar_one()
        stmt = sa.select(*REVIEW_COLUMNS, reviews.c.recorded_at).where(
            reviews.c.student_id == sid, reviews.c.recorded_at < horizon)
        if after is not None:
            stmt = stmt.where(sa.tuple_(reviews.c.recorded_at, reviews.c.id) > sa.tuple_(
                sa.literal(after[0], sa.DateTime(timezone=True)), sa.literal(after[1], sa.Uuid())))
        stmt = stmt.order_by(reviews.c.recorded_at, reviews.c.id).limit(limit + 1)
        return (await conn.execute(stmt)).all(), horizon

    rows, _ = await db.read(work, primary=True)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1].recorded_at, rows[-1].id) if rows else cursor
    return ReviewSyncPage(items=[ReviewSyncOut.model_validate(r) for r in rows],
                          next_cursor=next_cursor, more=more)
