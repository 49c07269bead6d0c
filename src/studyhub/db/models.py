"""StudyHub's schema: typed SQLAlchemy 2 models, the single source of truth for migrations.

Design rules (see docs/scaling.md):
- UUID primary keys (``gen_random_uuid()`` by default), ``timestamptz`` everywhere.
- Every student-owned table carries ``student_id`` — ``flashcard_reviews`` too, kept consistent
  with its card by a composite foreign key — so export and erasure touch one indexed key per
  table and the schema can later be distributed by ``student_id``.
- Every foreign key has an index whose leading columns are the key's columns.
- ON DELETE is deliberate: a student's rows go with the student (CASCADE); subjects cannot be
  deleted while referenced (RESTRICT); a deleted note leaves its cards and AI logs (SET NULL).
"""

from __future__ import annotations

import uuid
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, INET
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Upper bounds on free text, enforced by the database (the API checks the same numbers first).
MAX_TITLE = 300
MAX_NOTE_BODY = 100_000
MAX_CARD_SIDE = 4_000
MAX_AI_TEXT = 50_000


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        uuid.UUID: Uuid(),
        str: Text(),
        date: Date(),
        float: Double(),
        int: Integer(),
    }


def uuid_pk() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, server_default=func.gen_random_uuid())


def now_default() -> Mapped[datetime]:
    return mapped_column(server_default=func.now())


def student_fk(**kw) -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("students.id", ondelete="CASCADE"), **kw)


class User(Base):
    """A login account. Personal data: email, password hash."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("email = lower(email) AND position('@' IN email) > 1", name="email_form"),
        CheckConstraint("char_length(email) <= 320", name="email_length"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    email: Mapped[str] = mapped_column(unique=True)
    password_hash: Mapped[str]
    is_active: Mapped[bool] = mapped_column(server_default=text("true"))
    created_at: Mapped[datetime] = now_default()
    updated_at: Mapped[datetime] = now_default()
    last_login_at: Mapped[datetime | None]


class Student(Base):
    """The learner behind a user account (one per user)."""

    __tablename__ = "students"
    __table_args__ = (
        CheckConstraint("char_length(full_name) BETWEEN 1 AND 200", name="full_name_length"),
        CheckConstraint("year_group BETWEEN 1 AND 13", name="year_group_range"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), unique=True
    )
    full_name: Mapped[str]
    date_of_birth: Mapped[date | None]
    school: Mapped[str | None]
    year_group: Mapped[int | None] = mapped_column(SmallInteger)
    timezone: Mapped[str] = mapped_column(server_default=text("'UTC'"))
    created_at: Mapped[datetime] = now_default()


class Subject(Base):
    """A subject of study (shared reference data, not personal)."""

    __tablename__ = "subjects"

    id: Mapped[uuid.UUID] = uuid_pk()
    code: Mapped[str] = mapped_column(unique=True)
    name: Mapped[str] = mapped_column(unique=True)
    created_at: Mapped[datetime] = now_default()


class StudentSubject(Base):
    """Enrolment of a student in a subject."""

    __tablename__ = "student_subjects"
    __table_args__ = (Index(None, "subject_id"),)

    student_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("students.id", ondelete="CASCADE"), primary_key=True
    )
    subject_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("subjects.id", ondelete="RESTRICT"), primary_key=True
    )
    enrolled_at: Mapped[datetime] = now_default()
    target_grade: Mapped[str | None]


class Note(Base):
    __tablename__ = "notes"
    __table_args__ = (
        Index(None, "student_id"),
        Index(None, "subject_id"),
        CheckConstraint(f"char_length(title) BETWEEN 1 AND {MAX_TITLE}", name="title_length"),
        CheckConstraint(f"char_length(body) <= {MAX_NOTE_BODY}", name="body_length"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    student_id: Mapped[uuid.UUID] = student_fk()
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id", ondelete="RESTRICT"))
    title: Mapped[str]
    body: Mapped[str]
    created_at: Mapped[datetime] = now_default()
    updated_at: Mapped[datetime] = now_default()


class Flashcard(Base):
    """A card with its FSRS scheduling state (fsrs.Card: state, step, stability, difficulty,
    due, last_review) plus review and lapse counters."""

    __tablename__ = "flashcards"
    __table_args__ = (
        # Target of flashcard_reviews' composite key; also serves the student_id foreign key.
        UniqueConstraint("student_id", "id"),
        Index(None, "student_id", "due"),  # the due-cards queue
        Index(None, "subject_id"),
        Index(None, "note_id"),
        CheckConstraint("state IN (1, 2, 3)", name="state_valid"),
        CheckConstraint("difficulty IS NULL OR difficulty BETWEEN 1 AND 10", name="difficulty_range"),
        CheckConstraint("stability IS NULL OR stability > 0", name="stability_positive"),
        CheckConstraint("reps >= 0 AND lapses >= 0 AND lapses <= reps", name="counters"),
        CheckConstraint(
            f"char_length(front) BETWEEN 1 AND {MAX_CARD_SIDE} "
            f"AND char_length(back) BETWEEN 1 AND {MAX_CARD_SIDE}",
            name="sides_length",
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    student_id: Mapped[uuid.UUID] = student_fk()
    subject_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("subjects.id", ondelete="RESTRICT"))
    note_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("notes.id", ondelete="SET NULL"))
    front: Mapped[str]
    back: Mapped[str]
    state: Mapped[int] = mapped_column(SmallInteger, server_default=text("1"))
    step: Mapped[int | None] = mapped_column(SmallInteger, server_default=text("0"))
    stability: Mapped[float | None]
    difficulty: Mapped[float | None]
    due: Mapped[datetime] = mapped_column(server_default=func.now())
    last_review: Mapped[datetime | None]
    reps: Mapped[int] = mapped_column(server_default=text("0"))
    lapses: Mapped[int] = mapped_column(server_default=text("0"))
    created_at: Mapped[datetime] = now_default()
    updated_at: Mapped[datetime] = now_default()


class RevisionSession(Base):
    __tablename__ = "revision_sessions"
    __table_args__ = (
        Index(None, "student_id"),
        Index(None, "subject_id"),
        CheckConstraint("ended_at IS NULL OR ended_at >= started_at", name="ends_after_start"),
        CheckConstraint("cards_reviewed >= 0", name="cards_reviewed_positive"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    student_id: Mapped[uuid.UUID] = student_fk()
    subject_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("subjects.id", ondelete="RESTRICT")
    )
    started_at: Mapped[datetime] = mapped_column(server_default=func.now())
    ended_at: Mapped[datetime | None]
    cards_reviewed: Mapped[int] = mapped_column(server_default=text("0"))


class FlashcardReview(Base):
    """One review of a card: the rating and the FSRS state it produced."""

    __tablename__ = "flashcard_reviews"
    __table_args__ = (
        ForeignKeyConstraint(
            ["student_id", "flashcard_id"],
            ["flashcards.student_id", "flashcards.id"],
            ondelete="CASCADE",
        ),
        # Serves both foreign keys (student_id, and student_id+flashcard_id) and card history.
        Index(None, "student_id", "flashcard_id", "reviewed_at"),
        Index(None, "revision_session_id"),
        Index(None, "student_id", "recorded_at"),  # a student's reviews written since a cursor
        CheckConstraint("rating BETWEEN 1 AND 4", name="rating_range"),
        CheckConstraint("state IN (1, 2, 3)", name="state_valid"),
        CheckConstraint("scheduled_days >= 0 AND elapsed_days >= 0", name="days_positive"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    student_id: Mapped[uuid.UUID] = student_fk()
    flashcard_id: Mapped[uuid.UUID]
    revision_session_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("revision_sessions.id", ondelete="SET NULL")
    )
    rating: Mapped[int] = mapped_column(SmallInteger)
    reviewed_at: Mapped[datetime]
    state: Mapped[int] = mapped_column(SmallInteger)  # state after the review
    stability: Mapped[float]
    difficulty: Mapped[float]
    elapsed_days: Mapped[float]
    scheduled_days: Mapped[float]
    due: Mapped[datetime]
    review_duration_ms: Mapped[int | None]
    # When the row reached the server; reviewed_at is the device's clock, which can be days
    # earlier for reviews made offline (migration m01, the expand/backfill/contract example).
    recorded_at: Mapped[datetime] = mapped_column(server_default=func.now())


class AIInteraction(Base):
    """A logged exchange with the AI tutor."""

    __tablename__ = "ai_interactions"
    __table_args__ = (
        Index(None, "student_id"),
        Index(None, "subject_id"),
        Index(None, "note_id"),
        CheckConstraint(
            f"char_length(prompt) <= {MAX_AI_TEXT} AND char_length(response) <= {MAX_AI_TEXT}",
            name="text_length",
        ),
        CheckConstraint(
            "prompt_tokens >= 0 AND completion_tokens >= 0 AND latency_ms >= 0",
            name="counters_positive",
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    student_id: Mapped[uuid.UUID] = student_fk()
    subject_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("subjects.id", ondelete="RESTRICT")
    )
    note_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("notes.id", ondelete="SET NULL"))
    model: Mapped[str]
    prompt: Mapped[str]
    response: Mapped[str]
    prompt_tokens: Mapped[int]
    completion_tokens: Mapped[int]
    latency_ms: Mapped[int]
    created_at: Mapped[datetime] = now_default()


class ErasureLedgerEntry(Base):
    """One erased person: the ids a restored backup must erase again (``studyhub privacy
    reapply-erasures``). Holds no email, no name: see docs/privacy.md."""

    __tablename__ = "erasure_ledger"
    __table_args__ = (
        CheckConstraint("rows_deleted >= 0", name="rows_deleted_positive"),
        {"schema": "ops"},
    )

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    student_id: Mapped[uuid.UUID | None]
    pseudonym: Mapped[str]  # HMAC-SHA256 of the user id: joins audit lines, reveals nothing
    erased_at: Mapped[datetime] = now_default()
    rows_deleted: Mapped[int] = mapped_column(BigInteger)
class StatementSnapshot(Base):
    """ops: pg_stat_statements counters of one database, captured by ``diag slow-queries`` on each
    run, so trends (``--since``) survive a statistics reset. Normalized text only ($n, no values)."""

    __tablename__ = "statement_snapshots"
    # The primary key leads with captured_at: it serves the time-window reads; the index
    # serves one statement's history (the dashboard's query page) without reading every
    # statement of the window.
    __table_args__ = (Index(None, "database", "queryid", "captured_at"), {"schema": "ops"})

    captured_at: Mapped[datetime] = mapped_column(primary_key=True)
    database: Mapped[str] = mapped_column(primary_key=True)
    role: Mapped[str] = mapped_column(primary_key=True)
    queryid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    stats_reset: Mapped[datetime | None]
    query: Mapped[str]
    calls: Mapped[int] = mapped_column(BigInteger)
    total_exec_ms: Mapped[float]
    rows: Mapped[int] = mapped_column(BigInteger)
    shared_blks_hit: Mapped[int] = mapped_column(BigInteger)
    shared_blks_read: Mapped[int] = mapped_column(BigInteger)
    blk_read_ms: Mapped[float]
    blk_write_ms: Mapped[float]


class DatabaseSizeSnapshot(Base):
    """ops: the database's size over time, captured by `studyhub agent`'s capture job (growth
    charts). Sizes only: no rows, no names beyond the database's."""

    __tablename__ = "database_size_snapshots"
    __table_args__ = {"schema": "ops"}

    captured_at: Mapped[datetime] = mapped_column(primary_key=True)
    database: Mapped[str] = mapped_column(primary_key=True)
    database_bytes: Mapped[int] = mapped_column(BigInteger)


class TableSizeSnapshot(Base):
    """ops: each table's size (heap, indexes, TOAST) and row estimate over time, captured with
    :class:`DatabaseSizeSnapshot`. The primary key leads with captured_at (time-window reads)."""

    __tablename__ = "table_size_snapshots"
    __table_args__ = {"schema": "ops"}

    captured_at: Mapped[datetime] = mapped_column(primary_key=True)
    database: Mapped[str] = mapped_column(primary_key=True)
    schema_name: Mapped[str] = mapped_column(primary_key=True)
    table_name: Mapped[str] = mapped_column(primary_key=True)
    row_estimate: Mapped[int] = mapped_column(BigInteger)
    total_bytes: Mapped[int] = mapped_column(BigInteger)
    heap_bytes: Mapped[int] = mapped_column(BigInteger)
    index_bytes: Mapped[int] = mapped_column(BigInteger)
    toast_bytes: Mapped[int] = mapped_column(BigInteger)


class BackupDrill(Base):
    """ops: one restore drill of this database's newest backup set (``studyhub backup drill``):
    which set, from where, how long the restore and its verification took, and whether every
    table matched. Failed drills too. Names, times and counts only: no app rows."""

    __tablename__ = "backup_drills"
    __table_args__ = {"schema": "ops"}

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    drilled_at: Mapped[datetime]  # when the drill finished
    profile: Mapped[str]  # the profile whose backups were drilled (local, staging, production)
    database: Mapped[str]  # its database (sets are per profile and database)
    target: Mapped[str]  # where the set came from: a backup directory, later a remote URL
    set_name: Mapped[str | None]  # None: no complete set to drill
    set_created_at: Mapped[datetime | None]
    ok: Mapped[bool]
    duration_s: Mapped[float]  # the restore and its verification
    tables: Mapped[int] = mapped_column(BigInteger)
    rows: Mapped[int] = mapped_column(BigInteger)
    problems: Mapped[list[str]] = mapped_column(ARRAY(Text))


class AgentHeartbeat(Base):
    """ops: the newest sign of life of one running ``studyhub agent`` for one profile it
    watches (upserted every ``heartbeat_every_s``); the doctor grades its age."""

    __tablename__ = "agent_heartbeats"
    __table_args__ = {"schema": "ops"}

    agent: Mapped[str] = mapped_column(primary_key=True)  # the agent's name (default: host name)
    profile: Mapped[str] = mapped_column(primary_key=True)
    host: Mapped[str]
    pid: Mapped[int]
    started_at: Mapped[datetime]  # when this agent process started
    beat_at: Mapped[datetime]


class AgentRun(Base):
    """ops: one finished run of one agent job for one profile: when, how long, how it ended
    (``missed``: skipped because the previous run still ran) and a one-line detail."""

    __tablename__ = "agent_runs"
    __table_args__ = (
        Index(None, "profile", "job", "started_at"),
        CheckConstraint("outcome IN ('ok', 'failed', 'timeout', 'cancelled', 'missed')",
                        name="outcome"),
        {"schema": "ops"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    agent: Mapped[str]
    profile: Mapped[str]
    job: Mapped[str]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime]
    duration_s: Mapped[float]
    outcome: Mapped[str]
    detail: Mapped[str | None]


class ActivitySnapshot(Base):
    """ops: one sample of the server's activity (``studyhub agent``'s sample job, as the ops
    role): client sessions by state, lock waits, the oldest transaction. Counts only; the
    sessions worth keeping are in :class:`ActivitySample`. See docs/agent-history.md."""

    __tablename__ = "activity_snapshots"
    __table_args__ = {"schema": "ops"}

    taken_at: Mapped[datetime] = mapped_column(primary_key=True)
    max_connections: Mapped[int]
    sessions: Mapped[int]  # client backends, ours left out
    active: Mapped[int]
    idle: Mapped[int]
    idle_in_transaction: Mapped[int]  # aborted ones included
    other: Mapped[int]
    waiting: Mapped[int]  # sessions waiting for a lock
    blocked_chains: Mapped[int]  # root blockers
    sampled: Mapped[int]  # rows in activity_samples
    longest_transaction_s: Mapped[float | None]


class ActivitySample(Base):
    """ops: one session of one :class:`ActivitySnapshot` that was doing something (not idle)
    or blocked someone. Its statement only as a fingerprint (``queryid``, text in
    :class:`StatementFingerprint`): never pg_stat_activity's query text, never literals."""

    __tablename__ = "activity_samples"
    __table_args__ = {"schema": "ops"}

    taken_at: Mapped[datetime] = mapped_column(
        ForeignKey("ops.activity_snapshots.taken_at", ondelete="CASCADE"), primary_key=True)
    pid: Mapped[int] = mapped_column(primary_key=True)
    database: Mapped[str | None]
    role: Mapped[str | None]
    application: Mapped[str | None]
    client_addr: Mapped[str | None] = mapped_column(INET)
    backend_type: Mapped[str]
    state: Mapped[str | None]
    wait_event_type: Mapped[str | None]
    wait_event: Mapped[str | None]
    xact_start: Mapped[datetime | None]
    query_start: Mapped[datetime | None]
    state_change: Mapped[datetime | None]
    queryid: Mapped[int | None] = mapped_column(BigInteger)
    blocked_by: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))  # pg_blocking_pids
    lock_type: Mapped[str | None]  # what it waits for: relation, tuple, transactionid, …
    lock_mode: Mapped[str | None]
    lock_object: Mapped[str | None]  # the relation's name (or "transaction 1234")
    held_mode: Mapped[str | None]  # for blockers: the strongest relation lock held
    held_object: Mapped[str | None]


class StatementFingerprint(Base):
    """ops: the normalised text pg_stat_statements keeps for a query id seen in
    :class:`ActivitySample` (constants as $1, $2 …). Text that pg_stat_statements did not
    normalise (utility statements, anything with a quote left) is stored as NULL."""

    __tablename__ = "statement_fingerprints"
    __table_args__ = {"schema": "ops"}

    queryid: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    query: Mapped[str | None]
    first_seen: Mapped[datetime]
    last_seen: Mapped[datetime]  # refreshed at most hourly (no update per sample)


APP_TABLES = [t.name for t in Base.metadata.sorted_tables if t.schema is None]


MANAGED_SCHEMAS = (None, "public", "ops")


def include_name(name, type_, parent_names) -> bool:
    """Alembic filter: only our schemas (extensions' objects are not ours to manage)."""
    if type_ == "schema":
        return name in MANAGED_SCHEMAS
    return True
