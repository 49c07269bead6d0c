"""Registration, login (bearer tokens) and the caller's own profile."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from studyhub.api.deps import RequestDb, anonymous_db, student_db
from studyhub.api.errors import ApiError, error_responses, not_found
from studyhub.api.schemas import LoginIn, MeOut, RegisterIn, TokenOut
from studyhub.db.models import Student, User

router = APIRouter(tags=["accounts"])
users = User.__table__
students = Student.__table__


def _token(request: Request, user_id, student_id) -> TokenOut:
    tokens = request.app.state.tokens
    return TokenOut(access_token=tokens.issue(user_id, student_id), expires_in=tokens.ttl_s,
                    user_id=user_id, student_id=student_id)


@router.post("/auth/register", status_code=201, response_model=TokenOut)
async def register(body: RegisterIn, request: Request,
                   db: RequestDb = Depends(anonymous_db)) -> TokenOut:
    """Create a user and their student profile; answers with a bearer token."""
    password_hash = await request.app.state.passwords.hash(body.password)

    async def work(conn: AsyncConnection):
        user_id = (await conn.execute(
            sa.insert(users).values(email=body.email, password_hash=password_hash)
            .returning(users.c.id))).scalar_one()
        student_id = (await conn.execute(
            sa.insert(students).values(user_id=user_id, full_name=body.full_name,
                                       year_group=body.year_group, school=body.school,
                                       timezone=body.timezone)
            .returning(students.c.id))).scalar_one()
        return user_id, student_id

    # The new student's first reads must see the account: read-your-writes keyed on it.
    user_id, student_id = await db.write(work, key_of=lambda ids: ids[1])
    return _token(request, user_id, student_id)


@router.post("/auth/token", response_model=TokenOut, responses=error_responses(401))
async def login(body: LoginIn, request: Request, db: RequestDb = Depends(anonymous_db)) -> TokenOut:
    """Exchange email and password for a bearer token."""

    async def work(conn: AsyncConnection):
        # On the primary: a login right after registering must find the account.
        return (await conn.execute(
            sa.select(users.c.id, users.c.password_hash, users.c.is_active, students.c.id.label("sid"))
            .join(students, students.c.user_id == users.c.id)
            .where(users.c.email == body.email))).first()

    row = await db.read(work, primary=True)
    ok = await request.app.state.passwords.verify(row.password_hash if row else None, body.password)
    if not ok or row is None or not row.is_active:
        raise ApiError(401, "wrong email or password", headers={"WWW-Authenticate": "Bearer"})

    async def touch(conn: AsyncConnection):
        await conn.execute(sa.update(users).where(users.c.id == row.id)
                           .values(last_login_at=sa.func.now()))

    await db.write(touch)
    return _token(request, row.id, row.sid)


@router.get("/me", response_model=MeOut, responses=error_responses(404))
async def me(db: RequestDb = Depends(student_db)) -> MeOut:
    """The caller's account and student profile."""
    assert db.me is not None
    sid = db.me.student_id

    async def work(conn: AsyncConnection):
        return (await conn.execute(
            sa.select(users.c.id.label("user_id"), students.c.id.label("student_id"), users.c.email,
                      students.c.full_name, students.c.year_group, students.c.school,
                      students.c.timezone, students.c.date_of_birth, students.c.created_at)
            .join(students, students.c.user_id == users.c.id)
            .where(students.c.id == sid))).first()

    row = await db.read(work)
    if row is None:
        raise not_found("student")
    return MeOut.model_validate(row)
