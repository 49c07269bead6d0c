"""Statement and size history: ``capture_snapshots`` stores, for one profile, a
pg_stat_statements snapshot (``ops.statement_snapshots``, what ``diag slow-queries`` stores on
each run) and a size snapshot (``ops.database_size_snapshots``, ``ops.table_size_snapshots``) —
the history behind the dashboard's query and growth charts. ``studyhub agent``'s capture job
calls it on its schedule (every 5 minutes by default), as the ops role; profiles marked
read-only are never written to.

``history_freshness`` tells a reader (the dashboard) when that history stopped moving: the
newest snapshot older than ``STALE_AFTER_S`` (three missed captures) means no agent captures.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import psycopg

from studyhub.connect import connect, first_line
from studyhub.errors import StudyhubError
from studyhub.humanize import human_s
from studyhub.ops import space, statements
from studyhub.profiles import Profile

CAPTURE_EVERY_S = 300.0  # the agent's default capture interval
STALE_AFTER_S = 3 * CAPTURE_EVERY_S
APP_NAME = "studyhub capture"
STATEMENT_TIMEOUT_MS = 60_000


@dataclass
class CaptureResult:
    profile: str
    database: str | None  # None: nothing was connected to (read-only profile)
    captured_at: datetime
    statements_stored: bool = False
    sizes_stored: bool = False
    skipped: bool = False  # a read-only profile: nothing is stored there, by design
    notes: list[str] = field(default_factory=list)  # why something was not stored

    @property
    def ok(self) -> bool:
        """Both snapshots stored, or nothing was to be stored (read-only profile)."""
        return self.skipped or (self.statements_stored and self.sizes_stored)


def _store(result: CaptureResult, conn: psycopg.Connection) -> None:
    for what, fn in (("statements", statements.capture_snapshot),
                     ("sizes", space.capture_sizes)):
        try:
            why = fn(conn, result.captured_at)
        except StudyhubError as exc:
            why = f"{what}: {exc}"
        except psycopg.Error as exc:  # one failing capture must not stop the other
            if not conn.autocommit:
                conn.rollback()
            why = f"{what}: {first_line(exc)}"
        if why:
            result.notes.append(why)
        else:
            setattr(result, f"{what}_stored", True)


def capture_snapshots(profile: Profile, conn: psycopg.Connection | None = None, *,
                      database: str | None = None,
                      now: datetime | None = None) -> CaptureResult:
    """Store one statement snapshot and one size snapshot of ``profile``'s database (or
    ``database`` on its server), both stamped ``now`` (default: the current UTC time).

    ``conn``: an open connection to use (autocommit, the ops role); without it one is opened as
    the ops role and closed again — a ``ConnectError`` then propagates (the database is down:
    the caller retries). What cannot be stored (table missing, no privilege, no
    pg_stat_statements) comes back as a note, and the other snapshot is still stored. A
    read-only profile is not connected to: one note, nothing written."""
    result = CaptureResult(profile.name, None, now or datetime.now(timezone.utc))
    if profile.read_only:
        result.skipped = True
        result.notes.append(f"no history captured: profile {profile.name} is marked read-only")
        return result
    if conn is not None:
        result.database = conn.info.dbname
        _store(result, conn)
        return result
    with connect(profile, "ops", database=database, autocommit=True, application_name=APP_NAME,
                 options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}") as own:
        result.database = own.info.dbname
        _store(result, own)
    return result


@dataclass
class HistoryFreshness:
    statements_at: datetime | None  # newest statement snapshot of this database (None: never)
    sizes_at: datetime | None       # newest size snapshot
    checked_at: datetime
    stale_after_s: float
    stale: bool
    note: str | None  # what a reader should be told (None: fresh)


def _age(when: datetime | None, now: datetime) -> str:
    return "never taken" if when is None else f"{human_s((now - when).total_seconds())} old"


def history_freshness(conn: psycopg.Connection, *, stale_after_s: float = STALE_AFTER_S,
                      read_only: bool = False, now: datetime | None = None) -> HistoryFreshness:
    """How old the newest statement and size snapshots of this database are; stale when either
    is missing or older than ``stale_after_s``. ``read_only``: the profile is never captured
    (said so, not stale)."""
    now = now or datetime.now(timezone.utc)
    stmts, sizes = statements.latest_snapshot_at(conn), space.latest_size_snapshot_at(conn)
    if read_only:
        return HistoryFreshness(stmts, sizes, now, stale_after_s, False,
                                "read-only profile: no history is captured here")
    old = [w for w in (stmts, sizes) if w is None or (now - w).total_seconds() > stale_after_s]
    if not old:
        return HistoryFreshness(stmts, sizes, now, stale_after_s, False, None)
    if stmts is None and sizes is None:
        note = ("no history captured yet: is `studyhub agent` running? (its capture job stores "
                "statement and size snapshots every 5 min)")
    else:
        note = (f"history is stale (statement snapshot {_age(stmts, now)}, size snapshot "
                f"{_age(sizes, now)}): is `studyhub agent` running?")
    return HistoryFreshness(stmts, sizes, now, stale_after_s, True, note)
