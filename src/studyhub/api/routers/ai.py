"""The AI tutor's log: what was asked, answered, by which model, at what cost. No model is
called here; the tutor service records its exchanges."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncConnection

from studyhub.api.deps import RequestDb, student_db
from studyhub.api.pagination import newest_first, page
from studyhub.api.routers.flashcards import check_own_note
from studyhub.api.schemas import AIInteractionIn, AIInteractionOut, Limit, Page
from studyhub.db.models import AIInteraction

router = APIRouter(prefix="/ai-interactions", tags=["AI tutor log"])
ai = AIInteraction.__table__
AI_COLUMNS = (ai.c.id, ai.c.subject_id, ai.c.note_id, ai.c.model, ai.c.prompt, ai.c.response,
              ai.c.prompt_tokens, ai.c.completion_tokens, ai.c.latency_ms, ai.c.created_at)


@router.post("", status_code=201, response_model=AIInteractionOut)
async def log_interaction(body: AIInteractionIn,
                          db: RequestDb = Depends(student_db)) -> AIInteractionOut:
    assert db.me is not None
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        await check_own_note(conn, sid, body.note_id)
        return (await conn.execute(sa.insert(ai).values(student_id=sid, **body.model_dump())
                                   .returning(*AI_COLUMNS))).one()

    return AIInteractionOut.model_validate(await db.write(work))


@router.get("", response_model=Page[AIInteractionOut])
async def list_interactions(limit: Limit = 20, cursor: str | None = Query(None, max_length=200),
                            db: RequestDb = Depends(student_db)) -> Page[AIInteractionOut]:
    assert db.me is not None
    stmt = newest_first(sa.select(*AI_COLUMNS).where(ai.c.student_id == db.me.student_id),
                        ai.c.created_at, ai.c.id, cursor, limit)

    async def work(conn: AsyncConnection):
        return (await conn.execute(stmt)).all()

    rows, next_cursor = page(await db.read(work), limit, "created_at")
    return Page[AIInteractionOut](items=[AIInteractionOut.model_validate(r) for r in rows],
                                  next_cursor=next_cursor)
