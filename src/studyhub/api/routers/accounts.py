"""Registration, login (bearer tokens) and the caller's own profile."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from studyhub.api.deps import RequestDb, anonymous_db, student_db
from studyhub.api.errors import ApiError, error_responses, not_found
from studyhub.api.schemas import LoginIn, MeOut, RegisterIn, RegistrationAccepted, TokenOut
from studyhub.db.models import Student, User

router = APIRouter(tags=["accounts"])
users = User.__table__
students = Student.__table__


def _token(request: Request, user_id, student_id) -> TokenOut:
    tokens = request.app.state.tokens
    return TokenOut(access_token=tokens.issue(user_id, student_id), expires_in=tokens.ttl_s,
                    user_id=user_id, student_id=student_id)


# One statement, one round trip, for a new address and a taken one alike; it cannot raise a
# unique violation (whose DETAIL would copy the address into the server log). Emails are stored
# lower-case (ck_users_email_form; RegisterIn lower-cases them), so the plain unique key on
# users.email is the case-insensitive rule. For a taken address the users insert does nothing
# and so does the students insert (no row from new_user). The logical message is a
# transactional WAL record of a few bytes that nothing reads: it makes the taken address's
# transaction write and flush WAL at commit like a new account's (otherwise it would commit
# read-only, a WAL flush faster: a timing difference).
REGISTER_SQL = sa.text("""
WITH flush AS (
    SELECT pg_logical_emit_message(true, 'studyhub.register', '') AS lsn
), new_user AS (
    INSERT INTO users (email, password_hash)
    SELECT :email, :password_hash FROM flush
    ON CONFLICT (email) DO NOTHING
    RETURNING id
)
INSERT INTO students (user_id, full_name, year_group, school, timezone)
SELECT id, :full_name, CAST(:year_group AS smallint), :school, :timezone FROM new_user
""")


@router.post("/auth/register", status_code=202, response_model=RegistrationAccepted,
             responses={202: {"description": "Registration received. The same answer whether "
                                             "or not the address was registered already; sign "
                                             "in with POST /auth/token."}})
async def register(body: RegisterIn, request: Request,
                   db: RequestDb = Depends(anonymous_db)) -> RegistrationAccepted:
    """Create a user and their student profile unless the email is registered already. Both
    cases get the same answer (status, body, headers, work: the password is hashed, one
    statement runs), so the endpoint does not tell who has an account; the client then signs
    in with POST /auth/token (docs/api.md)."""
    password_hash = await request.app.state.passwords.hash(body.password)

    async def work(conn: AsyncConnection) -> None:
        await conn.execute(REGISTER_SQL, {
            "email": body.email, "password_hash": password_hash, "full_name": body.full_name,
            "year_group": body.year_group, "school": body.school, "timezone": body.timezone})

    # No read mark here (it would exist only for a new account); the login that follows
    # reads on the primary and hands one out.
    await db.write(work)
    return RegistrationAccepted()


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

    # Keyed on the student: the read mark it hands out keeps their first reads on the primary
    # until the replica has replayed this commit, and so their registration.
    await db.write(touch, key_of=lambda _: row.sid)
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
