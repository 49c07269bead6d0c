"""Flashcards: CRUD, the due queue, and reviews scheduled with FSRS."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from studyhub.api import scheduling
from studyhub.api.deps import RequestDb, student_db
from studyhub.api.errors import ApiError, error_responses, not_found
from studyhub.api.pagination import newest_first, page
from studyhub.api.schemas import (
    FlashcardIn,
    FlashcardOut,
    FlashcardPatch,
    Limit,
    Page,
    ReviewIn,
    ReviewOut,
    ReviewResult,
)
from studyhub.db.models import Flashcard, FlashcardReview, Note, RevisionSession

router = APIRouter(prefix="/flashcards", tags=["flashcards"])
cards = Flashcard.__table__
reviews = FlashcardReview.__table__
notes = Note.__table__
sessions = RevisionSession.__table__

CARD_COLUMNS = (cards.c.id, cards.c.subject_id, cards.c.note_id, cards.c.front, cards.c.back,
                cards.c.state, cards.c.step, cards.c.stability, cards.c.difficulty, cards.c.due,
                cards.c.last_review, cards.c.reps, cards.c.lapses, cards.c.created_at,
                cards.c.updated_at)
REVIEW_COLUMNS = (reviews.c.id, reviews.c.flashcard_id, reviews.c.revision_session_id,
                  reviews.c.rating, reviews.c.reviewed_at, reviews.c.state, reviews.c.stability,
                  reviews.c.difficulty, reviews.c.elapsed_days, reviews.c.scheduled_days,
                  reviews.c.due, reviews.c.review_duration_ms)
FUTURE_SKEW = timedelta(minutes=5)


async def check_own_note(conn: AsyncConnection, student_id: uuid.UUID,
                          note_id: uuid.UUID | None) -> None:
    """The foreign key only proves the note exists; it must also be the caller's."""
    if note_id is None:
        return
    found = (await conn.execute(sa.select(notes.c.id).where(
        notes.c.id == note_id, notes.c.student_id == student_id))).first()
    if found is None:
        raise ApiError(422, "note_id: unknown note")


@router.get("", response_model=Page[FlashcardOut])
async def list_flashcards(limit: Limit = 20, cursor: str | None = Query(None, max_length=200),
                          subject_id: uuid.UUID | None = None,
                          db: RequestDb = Depends(student_db)) -> Page[FlashcardOut]:
    """The caller's cards, newest first."""
    assert db.me is not None
    stmt = sa.select(*CARD_COLUMNS).where(cards.c.student_id == db.me.student_id)
    if subject_id is not None:
        stmt = stmt.where(cards.c.subject_id == subject_id)
    stmt = newest_first(stmt, cards.c.created_at, cards.c.id, cursor, limit)

    async def work(conn: AsyncConnection):
        return (await conn.execute(stmt)).all()

    rows, next_cursor = page(await db.read(work), limit, "created_at")
    return Page[FlashcardOut](items=[FlashcardOut.model_validate(r) for r in rows],
                              next_cursor=next_cursor)


@router.get("/due", response_model=list[FlashcardOut])
async def due_cards(limit: Limit = 20, subject_id: uuid.UUID | None = None,
                    db: RequestDb = Depends(student_db)) -> list[FlashcardOut]:
    """The review queue: the caller's cards due now, most overdue first."""
    assert db.me is not None
    stmt = sa.select(*CARD_COLUMNS).where(cards.c.student_id == db.me.student_id,
                                          cards.c.due <= sa.func.now())
    if subject_id is not None:
        stmt = stmt.where(cards.c.subject_id == subject_id)
    stmt = stmt.order_by(cards.c.due).limit(limit)

    async def work(conn: AsyncConnection):
        return (await conn.execute(stmt)).all()

    return [FlashcardOut.model_validate(r) for r in await db.read(work)]


@router.post("", status_code=201, response_model=FlashcardOut)
async def create_flashcard(body: FlashcardIn, db: RequestDb = Depends(student_db)) -> FlashcardOut:
    """A new card: FSRS state Learning, due now."""
    assert db.me is not None
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        await check_own_note(conn, sid, body.note_id)
        return (await conn.execute(
            sa.insert(cards).values(student_id=sid, subject_id=body.subject_id,
                                    note_id=body.note_id, front=body.front, back=body.back)
            .returning(*CARD_COLUMNS))).one()

    return FlashcardOut.model_validate(await db.write(work))


@router.get("/{card_id}", response_model=FlashcardOut, responses=error_responses(404))
async def get_flashcard(card_id: uuid.UUID, db: RequestDb = Depends(student_db)) -> FlashcardOut:
    assert db.me is not None
    stmt = sa.select(*CARD_COLUMNS).where(cards.c.id == card_id,
                                          cards.c.student_id == db.me.student_id)

    async def work(conn: AsyncConnection):
        return (await conn.execute(stmt)).first()

    row = await db.read(work)
    if row is None:
        raise not_found("flashcard")
    return FlashcardOut.model_validate(row)


@router.patch("/{card_id}", response_model=FlashcardOut, responses=error_responses(404))
async def update_flashcard(card_id: uuid.UUID, body: FlashcardPatch,
                           db: RequestDb = Depends(student_db)) -> FlashcardOut:
    """Edit a card's text, subject or note (its schedule changes only by reviews)."""
    assert db.me is not None
    changes = body.model_dump(exclude_unset=True)
    if any(v is None for k, v in changes.items() if k != "note_id"):
        raise ApiError(422, "invalid input: subject_id, front and back cannot be null")
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        await check_own_note(conn, sid, changes.get("note_id"))
        return (await conn.execute(
            sa.update(cards).where(cards.c.id == card_id, cards.c.student_id == sid)
            .values(**changes, updated_at=sa.func.now()).returning(*CARD_COLUMNS))).first()

    row = await db.write(work)
    if row is None:
        raise not_found("flashcard")
    return FlashcardOut.model_validate(row)


@router.delete("/{card_id}", status_code=204, responses=error_responses(404))
async def delete_flashcard(card_id: uuid.UUID, db: RequestDb = Depends(student_db)) -> None:
    """Delete a card and its review history."""
    assert db.me is not None
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        return (await conn.execute(sa.delete(cards).where(
            cards.c.id == card_id, cards.c.student_id == sid))).rowcount

    if not await db.write(work):
        raise not_found("flashcard")


@router.post("/{card_id}/reviews", status_code=201, response_model=ReviewResult,
             responses=error_responses(404))
async def review_flashcard(card_id: uuid.UUID, body: ReviewIn, request: Request,
                           db: RequestDb = Depends(student_db)) -> ReviewResult:
    """Review a card (rating 1 again, 2 hard, 3 good, 4 easy): FSRS computes its new schedule,
    the card is updated and the review recorded, in one transaction."""
    assert db.me is not None
    sid = db.me.student_id
    now = datetime.now(timezone.utc)
    reviewed_at = body.reviewed_at or now
    if reviewed_at > now + FUTURE_SKEW:
        raise ApiError(422, "invalid input: reviewed_at: in the future")
    scheduler = request.app.state.scheduler

    async def work(conn: AsyncConnection):
        card = (await conn.execute(
            sa.select(cards.c.state, cards.c.step, cards.c.stability, cards.c.difficulty,
                      cards.c.due, cards.c.last_review, cards.c.reps, cards.c.lapses)
            .where(cards.c.id == card_id, cards.c.student_id == sid)
            .with_for_update())).mappings().first()
        if card is None:
            raise not_found("flashcard")
        if card["last_review"] is not None and reviewed_at < card["last_review"]:
            raise ApiError(422, "invalid input: reviewed_at: before the card's last review")
        if body.revision_session_id is not None:
            open_session = (await conn.execute(
                sa.update(sessions)
                .where(sessions.c.id == body.revision_session_id, sessions.c.student_id == sid,
                       sessions.c.ended_at.is_(None))
                .values(cards_reviewed=sessions.c.cards_reviewed + 1)
                .returning(sessions.c.id))).first()
            if open_session is None:
                raise ApiError(422, "revision_session_id: no open revision session with this id")
        s = scheduling.review(scheduler, card, body.rating, reviewed_at, body.review_duration_ms)
        card_row = (await conn.execute(
            sa.update(cards).where(cards.c.id == card_id, cards.c.student_id == sid)
            .values(state=s.state, step=s.step, stability=s.stability, difficulty=s.difficulty,
                    due=s.due, last_review=s.last_review, reps=s.reps, lapses=s.lapses,
                    updated_at=sa.func.now())
            .returning(*CARD_COLUMNS))).one()
        review_row = (await conn.execute(
            sa.insert(reviews).values(
                student_id=sid, flashcard_id=card_id,
                revision_session_id=body.revision_session_id, rating=body.rating,
                reviewed_at=reviewed_at, state=s.state, stability=s.stability,
                difficulty=s.difficulty, elapsed_days=s.elapsed_days,
                scheduled_days=s.scheduled_days, due=s.due,
                review_duration_ms=body.review_duration_ms)
            .returning(*REVIEW_COLUMNS))).one()
        return card_row, review_row

    card_row, review_row = await db.write(work)
    return ReviewResult(review=ReviewOut.model_validate(review_row),
                        card=FlashcardOut.model_validate(card_row))


@router.get("/{card_id}/reviews", response_model=list[ReviewOut],
            responses=error_responses(404))
async def card_reviews(card_id: uuid.UUID, limit: Limit = 50,
                       db: RequestDb = Depends(student_db)) -> list[ReviewOut]:
    """A card's review history, newest first."""
    assert db.me is not None
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        exists = (await conn.execute(sa.select(cards.c.id).where(
            cards.c.id == card_id, cards.c.student_id == sid))).first()
        if exists is None:
            raise not_found("flashcard")
        return (await conn.execute(
            sa.select(*REVIEW_COLUMNS)
            .where(reviews.c.student_id == sid, reviews.c.flashcard_id == card_id)
            .order_by(reviews.c.reviewed_at.desc()).limit(limit))).all()

    return [ReviewOut.model_validate(r) for r in await db.read(work)]
