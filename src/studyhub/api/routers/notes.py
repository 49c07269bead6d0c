"""Notes: create, list (newest first, keyset pages), read, edit, delete — the caller's own."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncConnection

from studyhub.api.deps import RequestDb, student_db
from studyhub.api.errors import ApiError, error_responses, not_found
from studyhub.api.pagination import newest_first, page
from studyhub.api.schemas import Limit, NoteIn, NoteOut, NotePatch, NoteSummary, Page
from studyhub.db.models import Note

router = APIRouter(prefix="/notes", tags=["notes"])
notes = Note.__table__
NOTE_COLUMNS = (notes.c.id, notes.c.subject_id, notes.c.title, notes.c.body, notes.c.created_at,
                notes.c.updated_at)


@router.get("", response_model=Page[NoteSummary])
async def list_notes(limit: Limit = 20, cursor: str | None = Query(None, max_length=200),
                     subject_id: uuid.UUID | None = None,
                     db: RequestDb = Depends(student_db)) -> Page[NoteSummary]:
    """The caller's notes, newest first; pass ``next_cursor`` back as ``cursor``."""
    assert db.me is not None
    stmt = sa.select(notes.c.id, notes.c.subject_id, notes.c.title,
                     sa.func.left(notes.c.body, 200).label("preview"), notes.c.created_at,
                     notes.c.updated_at).where(notes.c.student_id == db.me.student_id)
    if subject_id is not None:
        stmt = stmt.where(notes.c.subject_id == subject_id)
    stmt = newest_first(stmt, notes.c.created_at, notes.c.id, cursor, limit)

    async def work(conn: AsyncConnection):
        return (await conn.execute(stmt)).all()

    rows, next_cursor = page(await db.read(work), limit, "created_at")
    return Page[NoteSummary](items=[NoteSummary.model_validate(r) for r in rows],
                             next_cursor=next_cursor)


@router.post("", status_code=201, response_model=NoteOut)
async def create_note(body: NoteIn, db: RequestDb = Depends(student_db)) -> NoteOut:
    assert db.me is not None
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        return (await conn.execute(
            sa.insert(notes).values(student_id=sid, subject_id=body.subject_id, title=body.title,
                                    body=body.body).returning(*NOTE_COLUMNS))).one()

    return NoteOut.model_validate(await db.write(work))


@router.get("/{note_id}", response_model=NoteOut, responses=error_responses(404))
async def get_note(note_id: uuid.UUID, db: RequestDb = Depends(student_db)) -> NoteOut:
    assert db.me is not None
    stmt = sa.select(*NOTE_COLUMNS).where(notes.c.id == note_id,
                                          notes.c.student_id == db.me.student_id)

    async def work(conn: AsyncConnection):
        return (await conn.execute(stmt)).first()

    row = await db.read(work)
    if row is None:
        raise not_found("note")
    return NoteOut.model_validate(row)


@router.patch("/{note_id}", response_model=NoteOut, responses=error_responses(404))
async def update_note(note_id: uuid.UUID, body: NotePatch,
                      db: RequestDb = Depends(student_db)) -> NoteOut:
    assert db.me is not None
    changes = body.model_dump(exclude_unset=True)
    if any(v is None for v in changes.values()):
        raise ApiError(422, "invalid input: subject_id, title and body cannot be null")
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        return (await conn.execute(
            sa.update(notes).where(notes.c.id == note_id, notes.c.student_id == sid)
            .values(**changes, updated_at=sa.func.now()).returning(*NOTE_COLUMNS))).first()

    row = await db.write(work)
    if row is None:
        raise not_found("note")
    return NoteOut.model_validate(row)


@router.delete("/{note_id}", status_code=204, responses=error_responses(404))
async def delete_note(note_id: uuid.UUID, db: RequestDb = Depends(student_db)) -> None:
    """Delete a note; its flashcards and AI interactions stay, unlinked."""
    assert db.me is not None
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        return (await conn.execute(
            sa.delete(notes).where(notes.c.id == note_id, notes.c.student_id == sid))).rowcount

    if not await db.write(work):
        raise not_found("note")
