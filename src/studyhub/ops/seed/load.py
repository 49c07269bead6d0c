"""Realistic, deterministic demo data: ``seed_database`` (issue "Foundation", section 5).

What gets loaded (rows come from ``studyhub.ops.seed.rows``): users and their students,
enrolments in some of twenty shared subjects, multi-paragraph notes, flashcards whose FSRS
columns are the state after their last review, the reviews themselves (computed by the real
``fsrs`` scheduler), the revision sessions those reviews happened in, and AI tutor exchanges.
The same seed and student count give byte-identical data in an empty database; seeding again
appends new students (numbered on from the last one of that seed).

How it loads, all in ONE transaction (a failure at any point leaves the database as it was,
indexes and foreign keys included):

1. Subjects are created if missing; the app role's tables must be at the migrations' head.
2. When every seeded table is empty (checked again under an ACCESS EXCLUSIVE lock) and their
   keys and indexes are exactly the models', the foreign keys, indexes, unique and primary keys
   are dropped and the (empty) tables truncated, so COPY can write frozen rows (``FREEZE``).
   Otherwise rows are loaded with everything in place.
3. A producer thread encodes batches of students into binary COPY data while this thread
   streams the previous batch to the server (two cores busy: Python and PostgreSQL).
4. Keys and indexes, then foreign keys (validated), are recreated from the SQLAlchemy models,
   so their names and definitions are exactly the migration's; then COMMIT, then ANALYZE.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Iterator, Literal

import psycopg
from psycopg import sql
from sqlalchemy import ForeignKeyConstraint, PrimaryKeyConstraint, UniqueConstraint
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import AddConstraint, CreateIndex, DropConstraint, DropIndex

from studyhub.audit import audited
from studyhub.connect import connect, first_line
from studyhub.db.models import Base
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops import migrate
from studyhub.ops.queries import load
from studyhub.ops.seed.rows import EncodedBatch, encoded_batches, subject_uuid
from studyhub.ops.seed.tables import (
    DATASET_NOW,
    HEAVY_ROWS_ESTIMATE,
    MEAN_ROWS_PER_STUDENT,
    SEEDED_TABLES,
    TABLE_COLUMNS,
)
from studyhub.ops.seed.words import SUBJECTS
from studyhub.profiles import Profile

DEFAULT_SEED = 42
BATCH_STUDENTS = 250  # students per COPY batch (about 60k rows, 12 MB)
QUEUED_BATCHES = 3
LOCK_TIMEOUT = "10s"
SUBJECTS_CREATED_AT = DATASET_NOW - timedelta(days=3 * 365)

Strategy = Literal["rebuild", "in_place"]


class SeedError(StudyhubError):
    """Seeding was refused or failed; nothing was changed."""


@dataclass
class SeedProgress:
    """Reported while seeding: rows loaded so far per table, and what is happening."""

    phase: Literal["load", "keys", "indexes", "foreign_keys", "analyze"]
    rows: dict[str, int]
    expected_rows: dict[str, int]
    detail: str = ""


@dataclass
class SeedResult:
    profile: str
    database: str
    seed: int
    students: int  # ordinary students asked for (the heavy student comes on top)
    first_student_number: int  # per-seed numbering continues across runs
    existing_students: int  # students in the database before this run
    skipped: bool = False  # --if-empty and the database already had students
    rows: dict[str, int] = field(default_factory=dict)  # rows inserted, per table
    total_rows: int = 0
    duration_s: float = 0.0
    rows_per_s: float = 0.0
    heavy_student_id: str | None = None
    strategy: Strategy | None = None  # rebuild: keys/indexes dropped and rebuilt
    strategy_reason: str = ""
    phase_s: dict[str, float] = field(default_factory=dict)


def expected_rows(students: int, heavy_student: bool = False) -> dict[str, int]:
    """About how many rows a run inserts, per table (for progress bars)."""
    out = {t: round(MEAN_ROWS_PER_STUDENT[t] * students) for t in SEEDED_TABLES}
    if heavy_student:
        for t, n in HEAVY_ROWS_ESTIMATE.items():
            out[t] += n
    return out


def check_seed_allowed(profile: Profile) -> None:
    """Fake people never go into production; staging only when named explicitly."""
    if profile.name == "production" or profile.protected:
        raise RefusedError(f"refusing to seed {profile.name}: demo data never goes into production")
    profile.require_changes_allowed("seed")  # the rule for every change: read-only refuses
    if not profile.is_local and not profile.explicit:
        raise RefusedError(
            f"refusing to seed {profile.name} unless it is named explicitly: "
            f"--profile {profile.name}"
        )


# ------------------------------------------------------------------ keys and indexes
@dataclass(frozen=True)
class SchemaPiece:
    """A primary key (p), unique constraint (u), foreign key (f) or index (i) of a table, with
    the DDL the models compile to."""

    table: str
    name: str
    kind: Literal["p", "u", "f", "i"]
    create_sql: str
    drop_sql: str


def rebuildable_pieces(tables: tuple[str, ...] = SEEDED_TABLES) -> list[SchemaPiece]:
    """The keys and indexes of ``tables`` as the models define them (CHECK and NOT NULL stay
    in place during a load: they are cheap per row)."""
    dialect = postgresql.dialect()

    def ddl(element) -> str:
        return str(element.compile(dialect=dialect)).strip()

    pieces: list[SchemaPiece] = []
    for name in tables:
        table = Base.metadata.tables[name]
        for c in sorted(table.constraints, key=lambda c: str(c.name)):
            kind = ("p" if isinstance(c, PrimaryKeyConstraint) else
                    "u" if isinstance(c, UniqueConstraint) else
                    "f" if isinstance(c, ForeignKeyConstraint) else None)
            if kind:
                pieces.append(SchemaPiece(name, str(c.name), kind, ddl(AddConstraint(c)),
                                          ddl(DropConstraint(c))))
        for ix in sorted(table.indexes, key=lambda i: str(i.name)):
            pieces.append(SchemaPiece(name, str(ix.name), "i", ddl(CreateIndex(ix)),
                                      ddl(DropIndex(ix))))
    return pieces


def _in_order(pieces: list[SchemaPiece], kinds: str) -> list[SchemaPiece]:
    return [p for kind in kinds for p in pieces if p.kind == kind]


# --------------------------------------------------------------------- the producer
class _BatchProducer:
    """Encodes batches of students in a thread while the caller streams earlier ones.

    The caller's COPY mostly waits on the socket inside libpq, without the GIL, so encoding
    and the server's ingest run side by side. (A producer *process* measured slower here:
    pickling every batch through a pipe costs more than the GIL does.)"""

    _DONE = object()

    def __init__(self, seed: int, subject_ids: list, first_number: int, students: int,
                 heavy_student: bool, batch_students: int) -> None:
        self._args = (seed, subject_ids, first_number, students, heavy_student, batch_students)
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUED_BATCHES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seed-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch in encoded_batches(*self._args):
                if not self._put(batch):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            self._put(exc)

    def batches(self) -> Iterator[EncodedBatch]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self) -> None:
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)


# ------------------------------------------------------------------------ the steps
def _require_head(conn: psycopg.Connection, database: str) -> None:
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
        raise SeedError(
            f"database {database} has no StudyHub schema; run: studyhub migrate up"
            f" --database {database}"
        )
    current = sorted(r[0] for r in conn.execute(load("get_schema_revision")))
    head = sorted(migrate.heads())
    if current != head:
        raise SeedError(
            f"database {database} is at {', '.join(current) or 'base'}, not at the head "
            f"({', '.join(head)}); run: studyhub migrate up --database {database}"
        )


def _ensure_subjects(conn: psycopg.Connection) -> tuple[list, int]:
    """Create the twenty subjects that are missing; their ids in SUBJECTS order."""
    codes = [s[0] for s in SUBJECTS]
    names = [s[1] for s in SUBJECTS]
    created = conn.execute(load("insert_missing_subjects"), {
        "ids": [subject_uuid(c) for c in codes], "codes": codes, "names": names,
        "created_at": SUBJECTS_CREATED_AT,
    }).fetchall()
    found = conn.execute(load("get_subjects_by_code_or_name"),
                         {"codes": codes, "names": names}).fetchall()
    by_code = {code: sid for code, _, sid in found}
    by_name = {name: sid for _, name, sid in found}
    return [by_code.get(c) or by_name[n] for c, n in zip(codes, names, strict=True)], len(created)


def _next_student_number(conn: psycopg.Connection, seed: int) -> int:
    """Numbering of this seed's students continues after the highest one already there."""
    return conn.execute(load("get_next_student_number"), {
        "pattern": rf"\+s{seed}n([0-9]+)@", "tag": f"+s{seed}n",
    }).fetchone()[0]


def _any_rows(conn: psycopg.Connection) -> bool:
    return any(
        conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(t)))
        .fetchone()[0]
        for t in SEEDED_TABLES
    )


def _table_list(tables) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(t) for t in tables)


def _prepare_tables(conn: psycopg.Connection) -> tuple[Strategy, str, list[SchemaPiece]]:
    """Choose how to load; for a rebuild, drop keys and indexes and truncate the empty tables."""
    if _any_rows(conn):
        return "in_place", "the tables already hold rows", []
    conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
        _table_list(SEEDED_TABLES)))
    if _any_rows(conn):  # someone wrote between the check and the lock
        return "in_place", "the tables already hold rows", []
    pieces = rebuildable_pieces()
    found = {tuple(r) for r in conn.execute(load("get_keys_and_indexes"),
                                            {"tables": list(SEEDED_TABLES)})}
    if found != {(p.table, p.name, p.kind) for p in pieces}:
        return ("in_place", "the tables' keys or indexes differ from the models "
                "(see: studyhub migrate check)", [])
    if conn.execute(load("get_foreign_keys_into"), {"tables": list(SEEDED_TABLES)}).fetchall():
        return "in_place", "other tables have foreign keys into the seeded tables", []
    for piece in _in_order(pieces, "fiup"):  # foreign keys first: they depend on the keys
        conn.execute(sql.SQL(piece.drop_sql))
    # The tables are empty; truncating them in this transaction lets COPY FREEZE write rows
    # that are already frozen and all-visible (no later VACUUM rewrite, index-only scans now).
    conn.execute(sql.SQL("TRUNCATE {}").format(_table_list(SEEDED_TABLES)))
    return "rebuild", "the tables were empty", pieces


def _copy_statements(freeze: bool) -> dict[str, sql.Composed]:
    options = sql.SQL("FORMAT BINARY, FREEZE" if freeze else "FORMAT BINARY")
    return {
        t: sql.SQL("COPY {} ({}) FROM STDIN ({})").format(
            sql.Identifier(t), sql.SQL(", ").join(sql.Identifier(c) for c in cols), options)
        for t, cols in TABLE_COLUMNS.items()
    }


class _Stopwatch:
    """Seconds per phase (a phase may be timed in several pieces)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def restart(self) -> None:
        self._since = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.seconds[phase] = round(self.seconds.get(phase, 0.0) + now - self._since, 3)
        self._since = now


def seed_database(
    profile: Profile,
    *,
    students: int,
    seed: int = DEFAULT_SEED,
    heavy_student: bool = False,
    database: str | None = None,
    if_empty: bool = False,
    progress: Callable[[SeedProgress], None] | None = None,
    batch_students: int = BATCH_STUDENTS,
) -> SeedResult:
    """Insert ``students`` demo students (plus one with 10,000+ cards and 100,000+ reviews when
    ``heavy_student``) with everything they own. With ``if_empty``, do nothing when the
    database already has students. One transaction: on any failure nothing is changed. Writes
    the audit line ``seed`` however it ends (``skipped`` when ``if_empty`` found students)."""
    check_seed_allowed(profile)
    if students < 1:
        raise SeedError(f"the number of students must be at least 1 (got {students})")
    if seed < 0:
        raise SeedError(f"the seed must be zero or positive (got {seed})")
    if batch_students < 1:
        raise SeedError("batch_students must be at least 1")
    with audited("seed", profile.name, database=database or profile.database, seed=seed,
                 students=students) as line:
        result = _seed(profile, students=students, seed=seed, heavy_student=heavy_student,
                       database=database, if_empty=if_empty, progress=progress,
                       batch_students=batch_students)
        line.update(database=result.database, first_student_number=result.first_student_number,
                    rows=result.total_rows, heavy_student_id=result.heavy_student_id)
        if result.skipped:
            line.update(skipped=True, existing_students=result.existing_students)
    return result


def _seed(profile: Profile, *, students: int, seed: int, heavy_student: bool,
          database: str | None, if_empty: bool,
          progress: Callable[[SeedProgress], None] | None, batch_students: int) -> SeedResult:
    report = progress or (lambda _event: None)
    expected = expected_rows(students, heavy_student)
    started = time.perf_counter()
    watch = _Stopwatch()

    with connect(profile, "app", database=database, application_name="studyhub seed") as conn:
        db = conn.info.dbname
        result = SeedResult(profile.name, db, seed, students, 0, 0)
        try:
            _require_head(conn, db)
            result.existing_students = conn.execute(load("get_student_count")).fetchone()[0]
            if if_empty and result.existing_students:
                result.skipped = True
                return result
            for setting, value in (("lock_timeout", LOCK_TIMEOUT), ("statement_timeout", "0"),
                                   ("maintenance_work_mem", "512MB"), ("work_mem", "128MB")):
                conn.execute("SELECT set_config(%s, %s, true)", (setting, value))  # this tx
            subject_ids, subjects_created = _ensure_subjects(conn)
            result.first_student_number = _next_student_number(conn, seed)
            producer = _BatchProducer(seed, subject_ids, result.first_student_number, students,
                                      heavy_student, batch_students)
            producer.start()  # encodes the first batches while the tables are prepared
            try:
                result.strategy, result.strategy_reason, pieces = _prepare_tables(conn)
                watch.lap("prepare")
                loaded = _load(conn, producer, result, freeze=result.strategy == "rebuild",
                               expected=expected, report=report)
                watch.lap("load")
            finally:
                producer.stop()
            _rebuild(conn, pieces, loaded, expected, report, watch)
            # Make the backend flush this transaction's row counts to the statistics right
            # after COMMIT, so the ANALYZE below comes after them: n_mod_since_analyze then
            # starts at zero and `diag doctor` does not call freshly seeded tables overdue.
            conn.execute("SELECT pg_stat_force_next_flush()")
            conn.commit()
            watch.lap("commit")
            report(SeedProgress("analyze", dict(loaded), expected, "subjects and seeded tables"))
            watch.restart()
            conn.execute(sql.SQL("ANALYZE {}").format(_table_list(("subjects", *SEEDED_TABLES))))
            conn.commit()
            watch.lap("analyze")
        except psycopg.errors.LockNotAvailable:
            raise SeedError(
                f"the tables of {db} are in use by another session (waited {LOCK_TIMEOUT} for "
                "a lock); nothing was changed"
            ) from None
        except psycopg.Error as exc:
            raise SeedError(
                f"seeding {db} failed, nothing was changed: {first_line(exc)}") from None
    result.phase_s = watch.seconds
    result.rows = {"subjects": subjects_created, **loaded}
    result.total_rows = sum(result.rows.values())
    result.duration_s = round(time.perf_counter() - started, 3)
    if result.duration_s:
        result.rows_per_s = round(result.total_rows / result.duration_s, 1)
    return result


def _load(conn: psycopg.Connection, producer: _BatchProducer, result: SeedResult, *,
          freeze: bool, expected: dict[str, int],
          report: Callable[[SeedProgress], None]) -> dict[str, int]:
    """COPY each batch, table by table (parents first, for the in-place foreign keys)."""
    statements = _copy_statements(freeze)
    loaded = {t: 0 for t in SEEDED_TABLES}
    with conn.cursor() as cur:
        for batch in producer.batches():
            for table in SEEDED_TABLES:
                if batch.counts[table]:
                    with cur.copy(statements[table]) as copy:
                        copy.write(batch.data[table])
                    loaded[table] += batch.counts[table]
            if batch.heavy_student_id:
                result.heavy_student_id = batch.heavy_student_id
            report(SeedProgress("load", dict(loaded), expected))
    return loaded


def _rebuild(conn: psycopg.Connection, pieces: list[SchemaPiece], loaded: dict[str, int],
             expected: dict[str, int], report: Callable[[SeedProgress], None],
             watch: _Stopwatch) -> None:
    """Primary and unique keys, then indexes, then foreign keys (validated against the
    data), exactly as the models define them. Nothing to do after an in-place load."""
    steps = (("keys", "pu", "keys_and_indexes"), ("indexes", "i", "keys_and_indexes"),
             ("foreign_keys", "f", "foreign_keys"))
    for phase, kinds, timer in steps:
        for piece in _in_order(pieces, kinds):
            report(SeedProgress(phase, dict(loaded), expected, piece.name))
            watch.restart()
            conn.execute(sql.SQL(piece.create_sql))
            watch.lap(timer)
