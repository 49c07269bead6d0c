"""Subjects (shared reference data) and the caller's enrolments."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Response
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from studyhub.api.deps import RequestDb, student_db
from studyhub.api.errors import error_responses, not_found
from studyhub.api.schemas import EnrolIn, EnrolmentOut, SubjectOut
from studyhub.db.models import StudentSubject, Subject

router = APIRouter(tags=["subjects"])
subjects = Subject.__table__
enrolments = StudentSubject.__table__


@router.get("/subjects", response_model=list[SubjectOut])
async def list_subjects(db: RequestDb = Depends(student_db)) -> list[SubjectOut]:
    """Every subject, by code."""

    async def work(conn: AsyncConnection):
        return (await conn.execute(
            sa.select(subjects.c.id, subjects.c.code, subjects.c.name).order_by(subjects.c.code)
        )).all()

    return [SubjectOut.model_validate(r) for r in await db.read(work)]


def _enrolment_query(student_id: uuid.UUID) -> sa.Select:
    return (sa.select(enrolments.c.subject_id, subjects.c.code, subjects.c.name,
                      enrolments.c.enrolled_at, enrolments.c.target_grade)
            .join(subjects, subjects.c.id == enrolments.c.subject_id)
            .where(enrolments.c.student_id == student_id))


@router.get("/me/subjects", response_model=list[EnrolmentOut])
async def my_subjects(db: RequestDb = Depends(student_db)) -> list[EnrolmentOut]:
    """The subjects the caller is enrolled in."""
    assert db.me is not None
    stmt = _enrolment_query(db.me.student_id).order_by(subjects.c.code)

    async def work(conn: AsyncConnection):
        return (await conn.execute(stmt)).all()

    return [EnrolmentOut.model_validate(r) for r in await db.read(work)]


@router.put("/me/subjects/{subject_id}", response_model=EnrolmentOut,
            responses={201: {"model": EnrolmentOut, "description": "Newly enrolled."},
                       **error_responses(404)})
async def enrol(subject_id: uuid.UUID, response: Response, body: EnrolIn | None = None,
                db: RequestDb = Depends(student_db)) -> EnrolmentOut:
    """Enrol in a subject (or change the target grade); 201 when newly enrolled."""
    assert db.me is not None
    sid = db.me.student_id
    grade = body.target_grade if body else None

    async def work(conn: AsyncConnection):
        if (await conn.execute(sa.select(subjects.c.id).where(subjects.c.id == subject_id))).first() is None:
            raise not_found("subject")
        inserted = (await conn.execute(
            pg_insert(enrolments).values(student_id=sid, subject_id=subject_id, target_grade=grade)
            .on_conflict_do_update(index_elements=[enrolments.c.student_id, enrolments.c.subject_id],
                                   set_={"target_grade": grade})
            .returning(sa.literal_column("xmax = 0").label("inserted")))).scalar_one()
        row = (await conn.execute(_enrolment_query(sid).where(
            enrolments.c.subject_id == subject_id))).one()
        return inserted, row

    inserted, row = await db.write(work)
    response.status_code = 201 if inserted else 200
    return EnrolmentOut.model_validate(row)


@router.delete("/me/subjects/{subject_id}", status_code=204, responses=error_responses(404))
async def unenrol(subject_id: uuid.UUID, db: RequestDb = Depends(student_db)) -> None:
    """Leave a subject (notes and cards stay)."""
    assert db.me is not None
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        return (await conn.execute(sa.delete(enrolments).where(
            enrolments.c.student_id == sid, enrolments.c.subject_id == subject_id))).rowcount

    if not await db.write(work):
        raise not_found("enrolment")
