"""Slow queries from pg_stat_statements, with history that survives a statistics reset.

Each ``slow_queries`` run stores the current counters of the costliest statements in
``ops.statement_snapshots`` (normalized text only: constants are ``$n``); ``since`` computes the
work done in a window from those snapshots, adding up across resets (a counter that went down
was reset, so its new value is all new work).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
import re

import psycopg
from psycopg.rows import dict_row

from studyhub.audit import audited
from studyhub.errors import StudyhubError
from studyhub.ops.extensions import require_extension
from studyhub.ops.queries import load
from studyhub.profiles import Profile

SORTS = ("total", "mean", "calls", "io")
SNAPSHOT_KEEP = "30 days"
SNAPSHOT_TOP = 500  # statements kept per snapshot (by total time)
SORT_MEMORY = "SET LOCAL work_mem = '32MB'"
COUNTERS = ("calls", "total_exec_ms", "rows", "shared_blks_hit", "shared_blks_read",
            "blk_read_ms", "blk_write_ms")


class PrivilegeMissing(StudyhubError):
    pass


@dataclass
class StatementStats:
    queryid: int
    role: str
    query: str
    calls: int
    total_exec_ms: float
    rows: int
    shared_blks_hit: int
    shared_blks_read: int
    blk_read_ms: float
    blk_write_ms: float
    share_pct: float = 0.0

    @property
    def mean_ms(self) -> float:
        return self.total_exec_ms / self.calls if self.calls else 0.0

    @property
    def io_ms(self) -> float:
        return self.blk_read_ms + self.blk_write_ms

    @property
    def cache_hit_pct(self) -> float | None:
        total = self.shared_blks_hit + self.shared_blks_read
        return 100.0 * self.shared_blks_hit / total if total else None


@dataclass
class SlowQueryReport:
    database: str
    sort: str
    window: str  # "since the statistics reset at …" or "last 1h (from snapshots)"
    stats_reset: datetime | None
    total_exec_ms: float
    statements: list[dict]
    snapshot_saved: bool
    notes: list[str] = field(default_factory=list)


def current_stats(conn: psycopg.Connection) -> list[StatementStats]:
    require_extension(conn, "pg_stat_statements", "reading slow queries")
    with conn.cursor(row_factory=dict_row) as cur:
        return [StatementStats(**r) for r in cur.execute(load("get_statement_stats")).fetchall()]


def stats_reset_at(conn: psycopg.Connection) -> datetime | None:
    return conn.execute(load("get_statement_stats_reset")).fetchone()[0]


def save_snapshot(conn: psycopg.Connection, stats: list[StatementStats],
                  reset_at: datetime | None, captured_at: datetime | None = None) -> str | None:
    """Store the top statements in ops.statement_snapshots; returns why not when it cannot
    (no table, or a role that may not use the ops schema or insert there)."""
    try:
        row = conn.execute(load("get_table_exists"),
                           {"name": "ops.statement_snapshots"}).fetchone()
        if not row[0]:
            return ("history not saved: ops.statement_snapshots is missing (run: studyhub "
                    "migrate up)")
        if not row[1]:
            return "history not saved: this role may not INSERT into ops.statement_snapshots"
        captured_at = captured_at or datetime.now(timezone.utc)
        top = sorted(stats, key=lambda s: -s.total_exec_ms)[:SNAPSHOT_TOP]
        with conn.transaction():
            with conn.cursor() as cur:
                cur.executemany(load("insert_statement_snapshot"), [
                    {"captured_at": captured_at, "database": conn.info.dbname, "role": s.role,
                     "queryid": s.queryid, "stats_reset": reset_at, "query": s.query,
                     **{c: getattr(s, c) for c in COUNTERS}} for s in top])
                cur.execute(load("delete_old_statement_snapshots"), {"keep": SNAPSHOT_KEEP})
    except psycopg.errors.InsufficientPrivilege:
        if not conn.autocommit:
            conn.rollback()
        return (f"history not saved: role {conn.info.user} may not use schema ops or write "
                "ops.statement_snapshots (migration grants it to the ops role)")
    return None


def require_history(conn: psycopg.Connection) -> None:
    """Stop with one line when the snapshots cannot be read: no table here (not migrated, or
    another database), or a role without USAGE on schema ops / SELECT on the table."""
    try:
        exists = conn.execute(load("get_table_exists"),
                              {"name": "ops.statement_snapshots"}).fetchone()[0]
    except psycopg.errors.InsufficientPrivilege:
        exists = None
    if exists is None or (exists and not conn.execute(
            "SELECT has_table_privilege('ops.statement_snapshots', 'SELECT')").fetchone()[0]):
        raise PrivilegeMissing(
            f"history needs ops.statement_snapshots, which role {conn.info.user} may not read "
            "(no USAGE on schema ops or SELECT on the table); an administrator can run: GRANT "
            f"USAGE ON SCHEMA ops TO {conn.info.user}; GRANT SELECT ON ops.statement_snapshots "
            f"TO {conn.info.user};")
    if not exists:
        raise StudyhubError(f"history needs ops.statement_snapshots; run studyhub migrate up "
                            f"(database {conn.info.dbname} has no such table)")


def parse_duration(text: str) -> timedelta:
    """'90s', '15m', '1h', '2d' → timedelta."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)\s*", text or "")
    if not m:
        raise StudyhubError(f"invalid duration {text!r} (use e.g. 30s, 15m, 1h, 2d)")
    value, unit = float(m.group(1)), m.group(2)
    seconds = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[unit]
    return timedelta(seconds=value * seconds)


def _counter_deltas(rows: list[dict]):
    """For snapshot rows (oldest first): yield (row, previous row of the same statement or None,
    the work done since that previous row). A counter that went down, or a changed
    ``stats_reset``, means the statistics were reset in between: the new value is all new work.
    A statement first seen after the first snapshot counts whole (new, or back in the top)."""
    previous: dict[tuple[str, int], dict] = {}
    for r in rows:
        key = (r["role"], r["queryid"])
        prev = previous.get(key)
        previous[key] = r
        if prev is None:
            yield r, None, {c: r[c] for c in COUNTERS}
            continue
        reset = r["calls"] < prev["calls"] or r["stats_reset"] != prev["stats_reset"]
        yield r, prev, {c: (r[c] if reset else r[c] - prev[c]) for c in COUNTERS}


def stats_since(conn: psycopg.Connection, since: datetime) -> tuple[list[StatementStats], str]:
    """Work done by each statement between ``since`` and the latest snapshot, from the stored
    snapshots, counting through statistics resets (summed in the server: a day of snapshots is
    hundreds of thousands of rows)."""
    require_history(conn)
    first_at = conn.execute(load("get_statement_snapshots_first_since"),
                            {"since": since}).fetchone()[0]
    if first_at is None:
        return [], "no snapshots in that window"
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(SORT_MEMORY)  # a day of snapshots sorts in memory, not on disk
        rows = cur.execute(load("get_statement_work_since"),
                           {"start": first_at, "database": conn.info.dbname}).fetchall()
    stats = [StatementStats(**r) for r in rows]
    window_note = (f"from {first_at:%Y-%m-%d %H:%M:%S} UTC" if first_at <= since
                   else f"history starts at {first_at:%Y-%m-%d %H:%M:%S} UTC (later than asked)")
    return [s for s in stats if s.calls > 0], window_note


@dataclass
class HistoryPoint:
    """Work one statement did between two snapshots (``interval_s`` long, ending at
    ``captured_at``)."""

    captured_at: datetime
    interval_s: float
    calls: int
    total_exec_ms: float
    rows: int
    shared_blks_read: int

    @property
    def mean_ms(self) -> float | None:
        return self.total_exec_ms / self.calls if self.calls else None

    @property
    def calls_per_min(self) -> float:
        return 60.0 * self.calls / self.interval_s if self.interval_s > 0 else 0.0


@dataclass
class StatementHistory:
    queryid: int
    role: str
    query: str
    points: list[HistoryPoint]


def statement_history(conn: psycopg.Connection, since: datetime,
                      queryids: list[int]) -> list[StatementHistory]:
    """Per statement in ``queryids``: the work done between consecutive stored
    snapshots since ``since`` — calls and mean time over time, through statistics resets.
    The first snapshot of the window is the baseline; it yields no point."""
    start = conn.execute(load("get_statement_snapshots_first_since"),
                         {"since": since}).fetchone()[0]
    if start is None or not queryids:
        return []
    with conn.cursor(row_factory=dict_row) as cur:  # a known start lets the planner use the index
        rows = cur.execute(load("get_statement_history"),
                           {"start": start, "queryids": queryids,
                            "database": conn.info.dbname}).fetchall()
    out: dict[tuple[str, int], StatementHistory] = {}
    for r, prev, delta in _counter_deltas(rows):
        key = (r["role"], r["queryid"])
        hist = out.setdefault(key, StatementHistory(r["queryid"], r["role"], r["query"], []))
        if prev is None:
            continue
        hist.points.append(HistoryPoint(
            r["captured_at"], (r["captured_at"] - prev["captured_at"]).total_seconds(),
            delta["calls"], delta["total_exec_ms"], delta["rows"], delta["shared_blks_read"]))
    return list(out.values())


def capture_snapshot(conn: psycopg.Connection, captured_at: datetime | None = None) -> str | None:
    """Store the current counters (what every ``slow_queries`` run does, for schedulers such as
    ``studyhub agent``'s capture job, ``studyhub.ops.capture``); returns why not when it
    cannot."""
    return save_snapshot(conn, current_stats(conn), stats_reset_at(conn), captured_at)


def latest_snapshot_at(conn: psycopg.Connection) -> datetime | None:
    """When this database's counters were last stored (None: never, or no history table)."""
    exists = conn.execute(load("get_table_exists"), {"name": "ops.statement_snapshots"})
    if not exists.fetchone()[0]:
        return None
    return conn.execute(load("get_latest_statement_snapshot")).fetchone()[0]


def slow_queries(conn: psycopg.Connection, *, sort: str = "total", limit: int = 20,
                 min_calls: int = 1, since: timedelta | None = None,
                 save: bool = True) -> SlowQueryReport:
    """The costliest statements of this database. Saves a snapshot first (when the role may),
    then reports either the counters since the last reset or, with ``since``, the work done in
    that window according to the snapshots."""
    if sort not in SORTS:
        raise StudyhubError(f"unknown sort {sort!r}; choose one of {', '.join(SORTS)}")
    stats = current_stats(conn)
    reset_at = stats_reset_at(conn)
    notes = []
    saved = False
    if save:
        why = save_snapshot(conn, stats, reset_at)
        saved = why is None
        if why:
            notes.append(why)
    if since is not None:
        start = datetime.now(timezone.utc) - since
        stats, window_note = stats_since(conn, start)
        window = f"last {_fmt_td(since)} ({window_note}, from stored snapshots)"
    else:
        window = (f"since the statistics reset at {reset_at:%Y-%m-%d %H:%M:%S} UTC"
                  if reset_at else "since the statistics were last reset")
    total = sum(s.total_exec_ms for s in stats) or 0.0
    for s in stats:
        s.share_pct = 100.0 * s.total_exec_ms / total if total else 0.0
    key = {"total": lambda s: -s.total_exec_ms, "mean": lambda s: -s.mean_ms,
           "calls": lambda s: -s.calls, "io": lambda s: -(s.io_ms + s.shared_blks_read)}[sort]
    chosen = sorted((s for s in stats if s.calls >= min_calls), key=key)[:limit]
    rendered = [{"queryid": s.queryid, "role": s.role, "calls": s.calls,
                 "total_exec_ms": round(s.total_exec_ms, 3), "mean_ms": round(s.mean_ms, 3),
                 "share_pct": round(s.share_pct, 2), "rows": s.rows,
                 "cache_hit_pct": None if s.cache_hit_pct is None else round(s.cache_hit_pct, 2),
                 "shared_blks_read": s.shared_blks_read, "io_ms": round(s.io_ms, 3),
                 "query": s.query} for s in chosen]
    return SlowQueryReport(conn.info.dbname, sort, window, reset_at, round(total, 3), rendered,
                           saved, notes)


def _fmt_td(td: timedelta) -> str:
    s = int(td.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n and s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"


@dataclass
class ResetResult:
    database: str
    snapshot_saved: bool
    statements_before: int


def reset_stats(conn: psycopg.Connection, profile: Profile) -> ResetResult:
    """Save a snapshot, then reset pg_stat_statements for this database: a change, so the
    profile's rule applies first (``Profile.require_changes_allowed``) and it is audited
    (``diag.slow_queries.reset``) however it ends."""
    profile.require_changes_allowed(f"reset pg_stat_statements of {conn.info.dbname}")
    with audited("diag.slow_queries.reset", profile.name, database=conn.info.dbname) as line:
        stats = current_stats(conn)
        why = save_snapshot(conn, stats, stats_reset_at(conn))
        line.update(statements=len(stats), snapshot_saved=why is None)
        try:
            conn.execute(load("do_reset_statement_stats"))
        except psycopg.errors.InsufficientPrivilege:
            if not conn.autocommit:
                conn.rollback()
            raise PrivilegeMissing(
                f"role {conn.info.user} may not reset pg_stat_statements: it lacks EXECUTE on "
                "pg_stat_statements_reset; as an administrator run in database "
                f"{conn.info.dbname}: GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, "
                f"oid, bigint) TO {conn.info.user};") from None
    return ResetResult(conn.info.dbname, why is None, len(stats))
