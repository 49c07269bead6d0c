"""Measuring pending migrations while they run under a synthetic workload (the rehearsal's
engine; it runs on a fork, but works on any database the caller owns).

The migrations run through the same path as ``migrate up`` (``apply.run_unaudited``: Alembic
in-process on a connection to the server's own port with ``lock_timeout``; no retries, so a
lock timeout is reported as one). Around every statement the migration's connection sends
(SQLAlchemy ``before/after_cursor_execute``), the same connection is asked
``get_migration_statement_snapshot`` — so the migration's own uncommitted catalog changes are
seen — giving per statement:

- ``wal_bytes``: WAL the server wrote while it ran (pg_current_wal_insert_lsn difference; server-wide,
  so it includes the workload's own writes during the statement);
- ``disk_growth_bytes``: pg_database_size difference (a rewrite's new files, before the old
  ones are unlinked at commit);
- ``rewrote``: tables whose relfilenode changed; ``rows_rewritten``: their row estimate plus
  the rows UPDATEd in the tables the statement writes;
- the relation locks it took (held after it, or seen by the watcher while it ran), and for how
  long: until the commit of its transaction (or its own end in autocommit).

A watcher thread on a second connection (ops role; pg_monitor) polls
``get_migration_lock_watch`` every ``interval_s`` (25 ms): the sessions waiting behind the
migration's backend (pg_blocking_pids) and since when (pg_locks.waitstart), and the locks it
holds. Each wait is attributed to the statement running when it was first seen. A wait
is a *write* when it asked for more than ACCESS SHARE. Waits shorter than one poll can be
missed, and a wait's length is its last sighting (up to one interval short).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import pglast
from alembic import command
from sqlalchemy import event
from sqlalchemy.engine import Engine

from studyhub.connect import connect, first_line
from studyhub.errors import StudyhubError
from studyhub.ops.migrate import statements as migrate_statements
from studyhub.ops.migrate.apply import run_unaudited
from studyhub.ops.migrate.rehearse.watch import LockWatcher, Wait, conflicts, mode_name
from studyhub.ops.migrate.rehearse.workload import (
    Workload,
    WorkloadSpec,
    WorkloadStats,
    workload_stats,
)
from studyhub.ops.migrate.rehearse.pending import pending_revisions
from studyhub.ops.migrate.revisions import DEFAULT_LOCK_TIMEOUT, ExtraVersions
from studyhub.ops.queries import load
from studyhub.profiles import Profile

__all__ = ["Measurement", "StatementMeasure", "WaitStats", "WorkloadSpec", "WorkloadStats",
           "measure_migrations"]


@dataclass
class WaitStats:
    sessions: int  # distinct sessions that waited behind the migration
    max_s: float
    p99_s: float
    waits: int = 0  # waits seen (one session can wait several times)


@dataclass
class StatementMeasure:
    revision: str
    index: int
    statement: str  # first line, shortened; literals as in the migration
    wall_s: float
    lock_mode: str | None  # the strongest table lock it took ("ACCESS EXCLUSIVE" …)
    lock_relation: str | None
    lock_held_s: float | None
    waits: WaitStats
    blocked_writes_max_s: float
    rewrote: list[str]
    rows_rewritten: int | None
    wal_bytes: int
    disk_growth_bytes: int
    error: str | None = None
    executions: int = 1  # consecutive runs of the same text (a batched backfill's batches)
    rewrote_bytes: dict[str, int] = field(default_factory=dict)  # size before the rewrite
    blocked_writes: int = 0
    blocked_reads: int = 0


@dataclass
class Measurement:
    database: str
    revisions: list[str]
    statements: list[StatementMeasure]
    workload: WorkloadStats
    duration_s: float
    failed: StatementMeasure | None
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers
def _strength(mode: str) -> int:
    try:
        return migrate_statements.strength(mode)
    except ValueError:
        return -1


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[max(0, -(-len(s) * 99 // 100) - 1)]


def _shorten(statement: str, limit: int = 160) -> str:
    text = " ".join(statement.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


_STAMP = re.compile(r"alembic_version", re.I)
_STAMP_REV = re.compile(r"(?:SET\s+version_num\s*=|VALUES\s*\()\s*'([^']+)'", re.I)
_BOOKKEEPING = re.compile(r"^\s*(SET|SHOW|RESET)\b|pg_backend_pid\(\)", re.I)
_CATALOG = re.compile(r"\b(pg_\w+|information_schema)\b", re.I)
_WRITES = re.compile(r"\b(UPDATE|INSERT|DELETE|MERGE)\b", re.I)


def _recorded(statement: str) -> bool:
    """Whether a statement is the migration's (not Alembic's or a helper's catalog question)."""
    if _STAMP.search(statement) or _BOOKKEEPING.search(statement):
        return False
    head = statement.lstrip().lstrip("(").upper()
    if head.startswith("SELECT") and _CATALOG.search(statement) and not _WRITES.search(statement):
        return False
    return True


def _written_tables(statement: str) -> set[str]:
    try:  # bound parameters (%(name)s) as NULL, so that it parses
        nodes = pglast.parse_sql(re.sub(r"%\(\w+\)s|%s", "NULL", statement))
    except Exception:
        return set()
    return {t for raw in nodes for t in migrate_statements.modified_tables(raw.stmt)}


@dataclass
class _Snapshot:
    lsn: str
    db_bytes: int
    tables: dict[int, tuple[str, int, int, int, int]]  # oid → (name, filenode, rows, bytes, upd)
    locks: set[tuple[str, str]]


@dataclass
class _Exec:
    seq: int
    revision: str | None
    statement: str
    started: float
    autocommit: bool
    before: _Snapshot | None
    ended: float | None = None
    after: _Snapshot | None = None
    error: str | None = None


# --------------------------------------------------------------------------- the measurement
class _Recorder:
    """SQLAlchemy cursor events of the migration's connection (only on the calling thread)."""

    def __init__(self, watcher: LockWatcher, pending: list[str],
                 progress: Callable[[str], None] | None) -> None:
        self.thread = threading.get_ident()
        self.watcher, self.pending, self.progress = watcher, pending, progress
        self.execs: list[_Exec] = []
        self.commits: list[float] = []
        self.rev_pointer = 0
        self.unstamped: list[_Exec] = []
        self.last: _Snapshot | None = None
        self.current: _Exec | None = None
        self.pid: int | None = None

    def _snapshot(self, dbapi_conn) -> _Snapshot:
        row = dbapi_conn.execute(load("get_migration_statement_snapshot"),
                                 prepare=False).fetchone()
        tables = row[2] if not isinstance(row[2], str) else json.loads(row[2])
        locks = row[3] if not isinstance(row[3], str) else json.loads(row[3])
        return _Snapshot(row[0], int(row[1]),
                         {int(t[0]): (t[1], int(t[2]), int(t[3]), int(t[4]), int(t[5] or 0))
                          for t in tables},
                         {(rel, mode_name(mode)) for rel, mode in locks})

    def before(self, conn, cursor, statement, parameters, context, executemany) -> None:
        if threading.get_ident() != self.thread:
            return
        if _STAMP.search(statement):
            m = _STAMP_REV.search(statement)
            if m and re.match(r"\s*(UPDATE|INSERT)\b", statement, re.I):
                self._stamp(m.group(1))
            return
        if not _recorded(statement):
            return
        dbapi_conn = cursor.connection
        if self.pid is None:
            self.pid = dbapi_conn.info.backend_pid
            self.watcher.pid = self.pid
        rev = self.pending[self.rev_pointer] if self.rev_pointer < len(self.pending) else None
        if self.progress:
            self.progress(f"{rev or '?'}: {_shorten(statement, 100)}")
        before = self._snapshot(dbapi_conn)
        ex = _Exec(len(self.execs), rev, statement, 0.0, bool(dbapi_conn.autocommit), before)
        self.execs.append(ex)
        self.unstamped.append(ex)
        self.current = ex
        self.watcher.current_seq = ex.seq
        ex.started = time.monotonic()

    def after(self, conn, cursor, statement, parameters, context, executemany) -> None:
        ex = self.current
        if threading.get_ident() != self.thread or ex is None or statement is not ex.statement:
            return
        ex.ended = time.monotonic()
        self.current = None
        ex.after = self._snapshot(cursor.connection)

    def failed(self, context) -> None:
        ex = self.current
        if threading.get_ident() != self.thread or ex is None:
            return
        ex.ended = time.monotonic()
        self.current = None
        ex.error = first_line(context.original_exception)

    def commit(self, conn) -> None:
        if threading.get_ident() == self.thread:
            self.commits.append(time.monotonic())

    def _stamp(self, revision: str) -> None:
        """Alembic wrote ``revision`` into alembic_version: the statements since the last
        stamp were that revision's."""
        for ex in self.unstamped:
            ex.revision = revision
        self.unstamped = []
        if revision in self.pending:
            self.rev_pointer = self.pending.index(revision) + 1
        else:
            self.rev_pointer += 1

    def install(self) -> None:
        event.listen(Engine, "before_cursor_execute", self.before)
        event.listen(Engine, "after_cursor_execute", self.after)
        event.listen(Engine, "handle_error", self.failed)
        event.listen(Engine, "commit", self.commit)
        event.listen(Engine, "rollback", self.commit)

    def remove(self) -> None:
        for name, fn in (("before_cursor_execute", self.before),
                         ("after_cursor_execute", self.after), ("handle_error", self.failed),
                         ("commit", self.commit), ("rollback", self.commit)):
            if event.contains(Engine, name, fn):
                event.remove(Engine, name, fn)


def measure_migrations(profile: Profile, *, to: str = "head", database: str | None = None,
                       workload: WorkloadSpec = WorkloadSpec(),
                       progress: Callable[[str], None] | None = None,
                       lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
                       extra_versions: ExtraVersions = (),
                       interval_s: float = 0.025, warmup_s: float = 0.3) -> Measurement:
    """Apply the pending migrations up to ``to`` on ``profile``'s database for real (no
    profile check, no audit line: the caller owns the database — a fork), while ``workload``
    runs and the watcher polls, and measure each statement (see the module's docstring).

    A migration that fails is reported in ``failed`` (the statement and PostgreSQL's error);
    the database is left as the failed transaction left it. Connection errors before the
    start raise ``StudyhubError``; KeyboardInterrupt stops the workload and the watcher first
    and propagates."""
    started = time.monotonic()
    db_name = profile.endpoint("app", database).database
    pending = pending_revisions(profile, to, database=database, extra_versions=extra_versions)
    notes: list[str] = []
    if not pending:
        return Measurement(db_name, [], [], workload_stats([], workload, set(), [], 0, 0),
                           0.0, None, lock_timeout, ["no pending migrations"])
    say = progress or (lambda _m: None)
    load_ = Workload(profile, database, workload)
    watcher = LockWatcher(profile, database, interval_s)
    recorder = _Recorder(watcher, pending, progress)
    error: str | None = None
    say(f"starting the {workload.kind} workload ({workload.clients} clients)")
    try:
        load_.start()
        with watcher:
            time.sleep(warmup_s)
            recorder.install()
            say(f"applying {len(pending)} migration(s): {', '.join(pending)}")
            m_start = time.monotonic()
            try:
                result = run_unaudited(profile, command.upgrade, to, database, lock_timeout,
                                       extra_versions=extra_versions)
                notes.extend(result.notes)
            except StudyhubError as exc:
                error = str(exc)
            except Exception as exc:  # a broken migration file: reported, not raised
                error = first_line(exc)
            finally:
                recorder.remove()
            m_end = time.monotonic()
            time.sleep(min(warmup_s, 0.1))
        say("stopping the workload")
    finally:
        recorder.remove()
        load_.stop()
        if watcher._thread.is_alive():
            watcher.__exit__()
    if watcher.error:
        notes.append(f"lock watcher stopped: {watcher.error}")
    notes.extend(load_.notes)
    statements, failed = _assemble(recorder, watcher, m_end, error, pending, load_.pids)
    wstats = workload_stats(load_.requests, workload, load_.pids, watcher.episodes, m_start,
                             m_end, skipped=len(load_.skipped))
    return Measurement(db_name, pending, statements, wstats,
                       round(time.monotonic() - started, 3), failed, lock_timeout, notes)


def _assemble(rec: _Recorder, watcher: LockWatcher, m_end: float, error: str | None,
              pending: list[str], workload_pids: set[int]
              ) -> tuple[list[StatementMeasure], StatementMeasure | None]:
    held_seen: dict[int, list[tuple[str, str, float, float]]] = {}
    for rel, mode, first, last, seq in watcher.held:
        if seq is not None:
            held_seen.setdefault(seq, []).append((rel, mode, first, last))
    holders = _lock_holders(rec, held_seen, m_end)
    by_seq: dict[int, list[Wait]] = {}
    for ep in watcher.episodes:
        seq = ep.seq if ep.seq is not None else (len(rec.execs) - 1 if rec.execs else None)
        # behind the statement that took a lock conflicting with the one it waits for, if
        # any (ADD COLUMN's ACCESS EXCLUSIVE makes writers wait during the UPDATE after it)
        for h_seq, rel, mode in reversed(holders):
            if seq is not None and h_seq <= seq and rel == ep.obj and conflicts(ep.mode, mode):
                seq = h_seq
                break
        if seq is not None:
            by_seq.setdefault(seq, []).append(ep)

    out: list[StatementMeasure] = []
    failed: StatementMeasure | None = None
    group: list[_Exec] = []

    def flush() -> None:
        if group:
            out.append(_measure_group(group, len(out), rec, by_seq, held_seen, m_end))

    for ex in rec.execs:
        if ex.error is not None or ex.ended is None:
            continue
        if group and (group[-1].statement != ex.statement or group[-1].revision != ex.revision):
            flush()
            group = []
        group.append(ex)
    flush()
    if error is not None:
        bad = next((ex for ex in rec.execs if ex.error is not None or ex.ended is None), None)
        if bad is not None:
            if bad.ended is None:
                bad.ended = m_end
            failed = _measure_group([bad], len(out), rec, by_seq, held_seen, m_end)
            failed.error = bad.error or error
        else:
            rev = rec.pending[rec.rev_pointer] if rec.rev_pointer < len(pending) else None
            failed = StatementMeasure(rev or "?", len(out), "", 0.0, None, None, None,
                                      WaitStats(0, 0.0, 0.0), 0.0, [], None, 0, 0, error=error)
        if failed.error and error and failed.error not in error:
            failed.error = error
    return out, failed


def _lock_holders(rec: _Recorder, held_seen, m_end: float) -> list[tuple[int, str, str]]:
    """(seq, relation, mode) of every table lock a statement took, in statement order."""
    out = []
    for ex in rec.execs:
        locks = set()
        if ex.before is not None and ex.after is not None:
            locks |= ex.after.locks - ex.before.locks
        locks |= {(rel, mode) for rel, mode, _, _ in held_seen.get(ex.seq, [])
                  if ex.before is None or (rel, mode) not in ex.before.locks}
        out += [(ex.seq, rel, mode) for rel, mode in sorted(locks)]
    return out


def _lsn(value: str) -> int:
    hi, lo = value.split("/")
    return (int(hi, 16) << 32) + int(lo, 16)


def _measure_group(group: list[_Exec], index: int, rec: _Recorder,
                   by_seq: dict[int, list[Wait]],
                   held_seen: dict[int, list[tuple[str, str, float, float]]],
                   m_end: float) -> StatementMeasure:
    wall = wal = disk = 0
    rewrote: dict[str, int] = {}
    rows = 0
    any_rows = False
    episodes: list[Wait] = []
    best: tuple[str, str, float] | None = None  # (mode, relation, held_s)
    written = _written_tables(group[0].statement)
    for ex in group:
        end = ex.ended if ex.ended is not None else m_end
        wall += end - ex.started
        episodes += by_seq.get(ex.seq, [])
        b, a = ex.before, ex.after
        if b is not None and a is not None:
            wal += max(0, _lsn(a.lsn) - _lsn(b.lsn))
            disk += a.db_bytes - b.db_bytes
            for oid, (name, node, reltuples, size, upd) in b.tables.items():
                after = a.tables.get(oid)
                if after is None:
                    continue
                if after[1] != node:
                    rewrote[name] = size
                    rows += reltuples
                    any_rows = True
                elif name in written or name.split(".")[-1] in written:
                    delta = after[4] - upd
                    if delta > 0:
                        rows += delta
                        any_rows = True
        # locks it took: held after it (in its transaction) or seen while it ran
        release = end if ex.autocommit else next((c for c in rec.commits if c >= end), m_end)
        taken: list[tuple[str, str, float]] = []
        if b is not None and a is not None:
            for rel, mode in a.locks - b.locks:
                taken.append((mode, rel, release - ex.started))
        for rel, mode, first, last in held_seen.get(ex.seq, []):  # seen while it ran
            if (b is None or (rel, mode) not in b.locks) and \
                    not any(t[0] == mode and t[1] == rel for t in taken):
                taken.append((mode, rel, release - ex.started))
        for t in taken:
            if best is None or _strength(t[0]) > _strength(best[0]) or (
                    _strength(t[0]) == _strength(best[0]) and t[2] > best[2]):
                best = t
    waits = [e.waited_s for e in episodes]
    writes = [e.waited_s for e in episodes if e.mode != "ACCESS SHARE"]
    first = group[0]
    return StatementMeasure(
        revision=first.revision or "?", index=index, statement=_shorten(first.statement),
        wall_s=round(wall, 4),
        lock_mode=best[0] if best else None, lock_relation=best[1] if best else None,
        lock_held_s=round(best[2], 4) if best else None,
        waits=WaitStats(len({e.pid for e in episodes}), round(max(waits, default=0.0), 4),
                        round(_p99(waits), 4), len(waits)),
        blocked_writes_max_s=round(max(writes, default=0.0), 4),
        rewrote=sorted(rewrote), rows_rewritten=rows if any_rows else None,
        wal_bytes=wal, disk_growth_bytes=disk, executions=len(group), rewrote_bytes=rewrote,
        blocked_writes=len(writes), blocked_reads=len(waits) - len(writes))
