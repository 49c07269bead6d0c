"""Revision sessions: start, end, list; reviews given with a session id are counted in it."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncConnection

from studyhub.api.deps import RequestDb, student_db
from studyhub.api.errors import ApiError, error_responses, not_found
from studyhub.api.pagination import newest_first, page
from studyhub.api.schemas import Limit, Page, SessionIn, SessionOut
from studyhub.db.models import RevisionSession

router = APIRouter(prefix="/revision-sessions", tags=["revision sessions"])
sessions = RevisionSession.__table__
SESSION_COLUMNS = (sessions.c.id, sessions.c.subject_id, sessions.c.started_at,
                   sessions.c.ended_at, sessions.c.cards_reviewed)


@router.post("", status_code=201, response_model=SessionOut)
async def start_session(body: SessionIn | None = None,
                        db: RequestDb = Depends(student_db)) -> SessionOut:
    assert db.me is not None
    sid = db.me.student_id
    subject_id = body.subject_id if body else None

    async def work(conn: AsyncConnection):
        return (await conn.execute(sa.insert(sessions).values(student_id=sid, subject_id=subject_id)
                                   .returning(*SESSION_COLUMNS))).one()

    return SessionOut.model_validate(await db.write(work))


@router.post("/{session_id}/end", response_model=SessionOut,
             responses=error_responses(404, 409))
async def end_session(session_id: uuid.UUID, db: RequestDb = Depends(student_db)) -> SessionOut:
    """End an open session (409 if it has ended already)."""
    assert db.me is not None
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        row = (await conn.execute(
            sa.select(sessions.c.ended_at).where(sessions.c.id == session_id,
                                                 sessions.c.student_id == sid)
            .with_for_update())).first()
        if row is None:
            raise not_found("revision session")
        if row.ended_at is not None:
            raise ApiError(409, "this revision session has already ended")
        return (await conn.execute(
            sa.update(sessions).where(sessions.c.id == session_id)
            .values(ended_at=sa.func.greatest(sa.func.now(), sessions.c.started_at))
            .returning(*SESSION_COLUMNS))).one()

    return SessionOut.model_validate(await db.write(work))


@router.get("", response_model=Page[SessionOut])
async def list_sessions(limit: Limit = 20, cursor: str | None = Query(None, max_length=200),
                        db: RequestDb = Depends(student_db)) -> Page[SessionOut]:
    assert db.me is not None
    stmt = newest_first(sa.select(*SESSION_COLUMNS).where(sessions.c.student_id == db.me.student_id),
                        sessions.c.started_at, sessions.c.id, cursor, limit)

    async def work(conn: AsyncConnection):
        return (await conn.execute(stmt)).all()

    rows, next_cursor = page(await db.read(work), limit, "started_at")
    return Page[SessionOut](items=[SessionOut.model_validate(r) for r in rows],
                            next_cursor=next_cursor)


@router.get("/{session_id}", response_model=SessionOut, responses=error_responses(404))
async def get_session(session_id: uuid.UUID, db: RequestDb = Depends(student_db)) -> SessionOut:
    assert db.me is not None
    stmt = sa.select(*SESSION_COLUMNS).where(sessions.c.id == session_id,
                                             sessions.c.student_id == db.me.student_id)

    async def work(conn: AsyncConnection):
        return (await conn.execute(stmt)).first()

    row = await db.read(work)
    if row is None:
        raise not_found("revision session")
    return SessionOut.model_validate(row)
