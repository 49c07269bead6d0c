"""STUB of helper M's measurement engine (issue 17): the plan's dataclasses and the signature of
``measure_migrations``, so the rehearsal (fork lifecycle, verdict, CLI) can be built and tested
before the engine lands. M's version replaces this file at merge.

What the stub does: applies the pending migrations on ``profile`` (the fork) through the normal
audited path (``ops.migrate.upgrade``) and records each statement's text and wall time with
SQLAlchemy's cursor events; it runs no workload and watches no locks (lock, wait, rewrite and
WAL fields are empty/zero). A failing statement is named in ``Measurement.failed``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sqlalchemy import event
from sqlalchemy.engine import Engine

from studyhub.ops.migrate.apply import upgrade
from studyhub.ops.migrate.revisions import ExtraVersions, MigrationError
from studyhub.profiles import Profile

STUB = True  # M's engine has no such attribute (tests that need real measurements check it)


@dataclass
class WorkloadSpec:
    kind: str = "app"  # "app": the API's reads/writes; "top": pg_stat_statements' top N
    clients: int = 4
    top_n: int = 20


@dataclass
class WaitStats:
    sessions: int
    max_s: float
    p99_s: float


@dataclass
class StatementMeasure:
    revision: str
    index: int
    statement: str
    wall_s: float
    lock_mode: str | None
    lock_relation: str | None
    lock_held_s: float | None
    waits: WaitStats
    blocked_writes_max_s: float
    rewrote: list[str]
    rows_rewritten: int | None
    wal_bytes: int
    disk_growth_bytes: int
    error: str | None = None


@dataclass
class WorkloadStats:
    requests: int
    errors: int
    p50_s: float
    p99_s: float
    max_s: float


@dataclass
class Measurement:
    database: str
    revisions: list[str]
    statements: list[StatementMeasure]
    workload: WorkloadStats
    duration_s: float
    failed: StatementMeasure | None


def _short(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 200 else text[:199] + "…"


@dataclass
class _Recorder:
    thread: int
    pending: list[str]
    statements: list[StatementMeasure] = field(default_factory=list)
    open: tuple[str, float] | None = None
    buffered: list[StatementMeasure] = field(default_factory=list)

    def before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if threading.get_ident() == self.thread:
            self.open = (statement, time.monotonic())

    def after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if threading.get_ident() != self.thread or self.open is None:
            return
        sql, started = self.open
        self.open = None
        head = " ".join(sql.split()[:3]).upper()
        if "ALEMBIC_VERSION" in sql.upper() and not head.startswith(("UPDATE ALEMBIC_VERSION",
                                                                      "INSERT INTO ALEMBIC_VERSION")):
            return  # Alembic's own bookkeeping (reading the version, creating its table)
        if head.startswith(("UPDATE ALEMBIC_VERSION", "INSERT INTO ALEMBIC_VERSION")):
            # Alembic stamps a revision right after its statements
            rev = self.pending[0] if self.pending else "?"
            for m in self.buffered:
                m.revision = rev
            self.statements += self.buffered
            self.buffered = []
            if self.pending:
                self.pending.pop(0)
            return
        self.buffered.append(_measure(self.pending[0] if self.pending else "?",
                                      len(self.statements) + len(self.buffered) + 1, sql,
                                      time.monotonic() - started))


def _measure(revision: str, index: int, sql: str, wall_s: float,
             error: str | None = None) -> StatementMeasure:
    return StatementMeasure(revision, index, _short(sql), round(wall_s, 4), None, None, None,
                            WaitStats(0, 0.0, 0.0), 0.0, [], None, 0, 0, error)


def measure_migrations(profile: Profile, *, to: str = "head", database: str | None = None,
                       workload: WorkloadSpec = WorkloadSpec(),
                       progress: Callable[[str], None] | None = None,
                       extra_versions: ExtraVersions = ()) -> Measurement:
    from studyhub.ops.migrate.rehearse.pending import pending_revisions  # stub only

    report = progress or (lambda _: None)
    started = time.monotonic()
    revisions = pending_revisions(profile, to, database=database, extra_versions=extra_versions)
    rec = _Recorder(threading.get_ident(), list(revisions))
    event.listen(Engine, "before_cursor_execute", rec.before)
    event.listen(Engine, "after_cursor_execute", rec.after)
    failed = None
    try:
        report(f"applying {', '.join(revisions) or 'nothing'} (stub: no workload)")
        upgrade(profile, to, database=database, extra_versions=extra_versions)
    except MigrationError as exc:
        sql = rec.open[0] if rec.open else "?"
        wall = time.monotonic() - rec.open[1] if rec.open else 0.0
        failed = _measure(rec.pending[0] if rec.pending else "?",
                          len(rec.statements) + len(rec.buffered) + 1, sql, wall, str(exc))
    finally:
        event.remove(Engine, "before_cursor_execute", rec.before)
        event.remove(Engine, "after_cursor_execute", rec.after)
    statements = rec.statements + (rec.buffered + [failed] if failed else [])
    return Measurement(profile.endpoint("app", database).database, revisions, statements,
                       WorkloadStats(0, 0, 0.0, 0.0, 0.0),
                       round(time.monotonic() - started, 3), failed)
