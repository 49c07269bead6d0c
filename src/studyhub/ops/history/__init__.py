"""Incident history: what the server's sessions were doing, sampled every few seconds into
``ops.activity_snapshots`` / ``ops.activity_samples`` / ``ops.statement_fingerprints``, and
read back as a past moment (``top --at``, ``diag locks --at``, the dashboard's time slider)
or an incident summary (``diag history``). See docs/agent-history.md.

Sampling runs as the ops role (pg_monitor) in one statement (``insert_activity_sample.sql``).
Statements are kept only as fingerprints: the query id and the text pg_stat_statements
normalised ($1 for every constant); pg_stat_activity's query text is never read.
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.rows import dict_row

from studyhub.errors import StudyhubError
from studyhub.ops import activity
from studyhub.ops.history.settings import HistorySettings
from studyhub.ops.queries import load

__all__ = [
    "HistorySettings", "SampleResult", "PruneResult", "Moment", "IncidentSummary",
    "WaitEpisode", "RootBlocker", "WaitEventCount", "take_sample", "prune_history", "moment",
    "summarize", "parse_when", "history_range", "DEFAULT_MAX_GAP_S",
]

# A replayed moment must be close to the asked time: beyond this gap, say so instead.
DEFAULT_MAX_GAP_S = 900.0
TABLES = "ops.activity_snapshots, ops.activity_samples, ops.statement_fingerprints"

# Connections whose database has no usable pg_stat_statements: sampled without texts.
_without_statements: "weakref.WeakSet[psycopg.Connection]" = weakref.WeakSet()


class HistoryUnavailable(StudyhubError):
    """The history tables are missing here or this role may not use them."""


# ----------------------------------------------------------------------------- times
def parse_when(text: str, *, what: str = "time") -> datetime:
    """'2026-12-02 09:41', '2026-12-02T09:41:30+01:00', '…Z' → an aware datetime; without an
    offset the time is this machine's local time. Anything else: one line."""
    value = (text or "").strip()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise StudyhubError(
            f"invalid {what} {text!r}: give a date and time such as '2026-12-02 09:41' (local "
            "time) or '2026-12-02T09:41:00+01:00'") from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()  # the machine's local zone
    return parsed


# ----------------------------------------------------------------------------- sample
@dataclass(frozen=True)
class SampleResult:
    taken_at: datetime
    sessions: int  # client backends (the sampler left out)
    by_state: dict[str, int]
    waiting: int  # sessions waiting for a lock
    longest_transaction_s: float | None
    blocked_chains: int  # root blockers: sessions blocking others while waiting on no one
    sampled: int  # rows stored: sessions doing something or blocking someone
    new_fingerprints: int


def _history_error(conn: psycopg.Connection, exc: psycopg.Error) -> HistoryUnavailable:
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return HistoryUnavailable(
            f"role {conn.info.user} may not use the activity history ({TABLES}); the "
            "migration grants it to the ops role (studyhub_ops): connect as that role")
    return HistoryUnavailable(
        f"the activity history ({TABLES}) is missing in database {conn.info.dbname}: run "
        "studyhub migrate up")


def take_sample(conn: psycopg.Connection, *, now: datetime | None = None) -> SampleResult:
    """Store one activity sample (ops role). One statement, one round trip; ``conn`` must
    have no transaction open and is left with none (autocommit, or committed here)."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise StudyhubError("take_sample needs a connection with no transaction open")
    params = {"now": now}
    row = None
    if conn not in _without_statements:
        try:
            row = _run_sample(conn, _sample_sql(with_statements=True), params)
        except (psycopg.errors.UndefinedTable, psycopg.errors.ObjectNotInPrerequisiteState,
                psycopg.errors.UndefinedFunction) as exc:
            if "pg_stat_statements" not in str(exc):
                raise _history_error(conn, exc) from None
            _without_statements.add(conn)  # not installed / not preloaded: ids only
    if row is None:
        try:
            row = _run_sample(conn, _sample_sql(with_statements=False), params)
        except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege) as exc:
            raise _history_error(conn, exc) from None
    by_state = {"active": row["active"], "idle": row["idle"],
                "idle in transaction": row["idle_in_transaction"], "other": row["other"]}
    return SampleResult(row["taken_at"], row["sessions"], by_state, row["waiting"],
                        row["longest_transaction_s"], row["blocked_chains"], row["sampled"],
                        row["new_fingerprints"])


def _sample_sql(*, with_statements: bool) -> str:
    """insert_activity_sample.sql; without pg_stat_statements its ``texts`` part (between the
    file's begin/end marks) is replaced by an empty one: query ids only."""
    sql = load("insert_activity_sample")
    if with_statements:
        return sql
    head, rest = sql.split("-- pg_stat_statements: begin", 1)
    _texts, tail = rest.split("-- pg_stat_statements: end", 1)
    return head + "texts AS (SELECT NULL::bigint AS queryid, NULL::text AS query WHERE false)," \
        + tail


def _run_sample(conn: psycopg.Connection, sql: str, params: dict[str, Any]) -> dict[str, Any]:
    try:
        with conn.cursor(row_factory=dict_row) as cur:
            row = cur.execute(sql, params).fetchone()
        if not conn.autocommit:
            conn.commit()
    except psycopg.errors.InsufficientPrivilege as exc:
        if not conn.autocommit:
            conn.rollback()
        raise _history_error(conn, exc) from None
    except psycopg.Error:
        if not conn.autocommit:
            conn.rollback()
        raise
    return row


# ----------------------------------------------------------------------------- prune
@dataclass(frozen=True)
class PruneResult:
    deleted_by_age: int  # snapshots (their samples went with them)
    deleted_by_size: int
    fingerprints_deleted: int
    snapshots_left: int
    live_bytes_before: int  # estimated (see get_activity_history_size.sql)
    live_bytes_after: int
    disk_bytes: int  # the tables' files (freed space is reused, not returned)
    oldest_kept: datetime | None


def _size(conn: psycopg.Connection) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(load("get_activity_history_size")).fetchone()


def prune_history(conn: psycopg.Connection, settings: HistorySettings, *,
                  now: datetime | None = None) -> PruneResult:
    """Delete snapshots older than ``retention_days``, then the oldest until the history's
    estimated live size is under ``max_size_mib``, then fingerprints no kept sample can use.
    Ops role; each delete commits on its own."""
    now = now or datetime.now(timezone.utc)
    cutoff = now - timedelta(days=settings.retention_days)
    try:
        before = _size(conn)
        with conn.transaction():
            by_age = conn.execute(load("delete_old_activity_snapshots"),
                                  {"before": cutoff}).rowcount
        by_size = 0
        max_bytes = int(settings.max_size_mib * 1024 * 1024)
        if _size(conn)["live_bytes"] > max_bytes:
            with conn.transaction():
                by_size = conn.execute(load("delete_activity_snapshots_over_size"),
                                       {"max_bytes": max_bytes}).rowcount
        after = _size(conn)
        keep_from = max(cutoff, after["first_at"]) if after["first_at"] else now
        with conn.transaction():
            fps = conn.execute(load("delete_old_statement_fingerprints"),
                               {"before": keep_from}).rowcount
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege) as exc:
        raise _history_error(conn, exc) from None
    return PruneResult(by_age, by_size, fps, after["snapshots"], before["live_bytes"],
                       after["live_bytes"], after["disk_bytes"], after["first_at"])


# ----------------------------------------------------------------------------- read back
@dataclass(frozen=True)
class HistoryRange:
    first_at: datetime | None
    last_at: datetime | None
    snapshots: int


def history_range(conn: psycopg.Connection) -> HistoryRange:
    """The first and newest snapshot kept, and how many."""
    try:
        return HistoryRange(*conn.execute(load("get_activity_history_range")).fetchone())
    except (psycopg.errors.UndefinedTable, psycopg.errors.InsufficientPrivilege) as exc:
        if not conn.autocommit:
            conn.rollback()
        raise _history_error(conn, exc) from None


def _samples(conn: psycopg.Connection, start: datetime, end: datetime,
             only_waits: bool = False) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(load("get_activity_samples"),
                           {"from": start, "to": end, "only_waits": only_waits}).fetchall()


def _session(r: dict[str, Any]) -> activity.Session:
    return activity.Session(
        pid=r["pid"], database=r["database"], role=r["role"], application=r["application"],
        client_addr=r["client_addr"], backend_type=r["backend_type"], state=r["state"],
        wait_event_type=r["wait_event_type"], wait_event=r["wait_event"], backend_age_s=None,
        xact_age_s=r["xact_age_s"], query_age_s=r["query_age_s"], state_age_s=r["state_age_s"],
        blocked_by=list(r["blocked_by"]), query_id=r["query_id"], query=r["query"], ssl=False,
        backend_start=None, is_self=False, is_superuser=False)


def _tree(rows: list[dict[str, Any]]) -> tuple[list[activity.Session], list[activity.LockNode]]:
    sessions = [_session(r) for r in rows]
    waits = {r["pid"]: {"blocked_by": list(r["blocked_by"]), "waiting_mode": r["lock_mode"],
                        "locked_object": r["lock_object"]}
             for r in rows if r["blocked_by"]}
    held = {r["pid"]: {"held_mode": r["held_mode"], "held_object": r["held_object"]}
            for r in rows if r["held_mode"]}
    return sessions, activity.build_tree(waits, {s.pid: s for s in sessions}, held)


@dataclass
class Moment:
    """One replayed snapshot: the nearest at or before ``asked_at``."""

    asked_at: datetime
    taken_at: datetime
    gap_s: float  # asked_at - taken_at
    max_connections: int
    connections_by_state: dict[str, int]  # client sessions, as top shows them
    waiting: int
    blocked_chains: int
    longest_transaction_s: float | None
    sessions: list[activity.Session]  # those doing something or blocking someone
    tree: list[activity.LockNode]

    def as_top(self, database: str) -> activity.TopSnapshot:
        """The moment as a ``top`` frame (no TPS, cache hit or lag: not sampled)."""
        counters = activity.DatabaseCounters(0, 0, 0, self.taken_at)
        return activity.TopSnapshot(database, None, None, self.connections_by_state,
                                    self.max_connections, None, None, self.sessions, counters)


def moment(conn: psycopg.Connection, at: datetime, *,
           max_gap_s: float = DEFAULT_MAX_GAP_S) -> Moment:
    """The snapshot nearest to ``at`` at or before it, with its sessions and blocking tree;
    one line (StudyhubError) when the history has none within ``max_gap_s`` before."""
    if at.tzinfo is None:
        raise StudyhubError("moment needs an aware datetime")
    span = history_range(conn)
    with conn.cursor(row_factory=dict_row) as cur:
        snap = cur.execute(load("get_activity_snapshot_at"), {"at": at}).fetchone()
    if snap is None or (at - snap["taken_at"]).total_seconds() > max_gap_s:
        held = ("the history is empty" if not span.snapshots else
                f"the history holds {span.first_at.astimezone():%Y-%m-%d %H:%M:%S %z} to "
                f"{span.last_at.astimezone():%Y-%m-%d %H:%M:%S %z}")
        raise StudyhubError(
            f"no activity snapshot within {max_gap_s / 60:g} min before "
            f"{at.astimezone():%Y-%m-%d %H:%M:%S %z}: {held}")
    rows = _samples(conn, snap["taken_at"], snap["taken_at"])
    sessions, tree = _tree(rows)
    states = {"active": snap["active"], "idle": snap["idle"],
              "idle in transaction": snap["idle_in_transaction"], "other": snap["other"]}
    return Moment(at, snap["taken_at"], (at - snap["taken_at"]).total_seconds(),
                  snap["max_connections"], {k: v for k, v in states.items() if v},
                  snap["waiting"], snap["blocked_chains"], snap["longest_transaction_s"],
                  sessions, tree)


# ----------------------------------------------------------------------------- summarize
@dataclass
class WaitEpisode:
    """One statement seen waiting for a lock (a PID and its query start)."""

    pid: int
    role: str | None
    database: str | None
    application: str
    lock_type: str | None
    lock_mode: str | None
    lock_object: str | None
    wait_s: float  # its query had run this long at the last sample that saw it waiting
    first_seen: datetime
    last_seen: datetime
    blocked_by: list[int]
    root_blockers: list[int]
    query_id: int | None
    query: str | None


@dataclass
class RootBlocker:
    """A session that blocked others while waiting on no one (one PID and transaction)."""

    pid: int
    role: str | None
    database: str | None
    application: str
    state: str
    held_mode: str | None
    held_object: str | None
    blocked_sessions: int  # distinct sessions ever behind it (directly or not)
    most_blocked_at_once: int
    blocked_for_s: float  # the longest wait of a session behind it
    first_seen: datetime
    last_seen: datetime
    transaction_age_s: float | None  # at the last sample that saw it blocking
    query_id: int | None
    query: str | None


@dataclass
class WaitEventCount:
    wait_event_type: str
    wait_event: str | None
    samples: int
    sessions: int
    approx_s: float | None  # samples × the mean interval between snapshots


@dataclass
class IncidentSummary:
    start: datetime
    end: datetime
    snapshots: int
    first_at: datetime | None
    last_at: datetime | None
    interval_s: float | None  # mean time between snapshots in the window
    peak_sessions: int | None
    peak_sessions_at: datetime | None
    peak_active: int | None
    peak_waiting: int | None
    peak_waiting_at: datetime | None
    longest_transaction_s: float | None
    longest_waits: list[WaitEpisode] = field(default_factory=list)
    root_blockers: list[RootBlocker] = field(default_factory=list)
    wait_events: list[WaitEventCount] = field(default_factory=list)


def summarize(conn: psycopg.Connection, start: datetime, end: datetime, *,
              limit: int = 10) -> IncidentSummary:
    """What happened between ``start`` and ``end``: peaks, the longest lock waits, the root
    blockers (how many sessions they blocked and for how long) and the top wait events."""
    if start.tzinfo is None or end.tzinfo is None:
        raise StudyhubError("summarize needs aware datetimes")
    if end <= start:
        raise StudyhubError("the end of the window must be after its start")
    history_range(conn)  # one line when the tables are missing or not ours to read
    params = {"from": start, "to": end}
    with conn.cursor(row_factory=dict_row) as cur:
        peaks = cur.execute(load("get_activity_history_peaks"), params).fetchone()
        events = cur.execute(load("get_activity_history_wait_events"),
                             {**params, "limit": limit}).fetchall()
    n = peaks["snapshots"]
    interval = ((peaks["last_at"] - peaks["first_at"]).total_seconds() / (n - 1)
                if n > 1 else None)
    summary = IncidentSummary(
        start, end, n, peaks["first_at"], peaks["last_at"], interval, peaks["peak_sessions"],
        peaks["peak_sessions_at"], peaks["peak_active"], peaks["peak_waiting"],
        peaks["peak_waiting_at"], peaks["longest_transaction_s"])
    summary.wait_events = [
        WaitEventCount(e["wait_event_type"], e["wait_event"], e["samples"], e["sessions"],
                       e["samples"] * interval if interval else None) for e in events]
    by_snapshot: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
    for r in _samples(conn, start, end, only_waits=True):
        by_snapshot[r["taken_at"]].append(r)
    episodes: dict[tuple, WaitEpisode] = {}
    roots: dict[tuple, RootBlocker] = {}
    behind: dict[tuple, set[int]] = defaultdict(set)
    for taken_at, rows in sorted(by_snapshot.items()):
        row_of = {r["pid"]: r for r in rows}
        _, tree = _tree(rows)
        for root in tree:
            below = _descendants(root)
            if not below:
                continue
            r = row_of.get(root.pid, {})
            key = (root.pid, r.get("xact_start"))
            waits_below = [d.wait_s or 0.0 for d in below]
            rb = roots.get(key)
            if rb is None:
                rb = roots[key] = RootBlocker(
                    root.pid, root.role, root.database, root.application, root.state,
                    root.held_mode, root.held_object, 0, 0, 0.0, taken_at, taken_at,
                    root.xact_age_s, root.query_id, root.query)
            behind[key] |= {d.pid for d in below}
            rb.blocked_sessions = len(behind[key])
            rb.most_blocked_at_once = max(rb.most_blocked_at_once, len(below))
            rb.blocked_for_s = max(rb.blocked_for_s, max(waits_below))
            rb.last_seen, rb.state = taken_at, root.state
            rb.transaction_age_s = root.xact_age_s
            rb.held_mode = rb.held_mode or root.held_mode
            rb.held_object = rb.held_object or root.held_object
            rb.query_id, rb.query = root.query_id or rb.query_id, root.query or rb.query
            for d in below:
                w = row_of[d.pid]
                key_w = (d.pid, w["query_start"])
                ep = episodes.get(key_w)
                wait_s = w["query_age_s"] or w["state_age_s"] or 0.0
                if ep is None:
                    ep = episodes[key_w] = WaitEpisode(
                        d.pid, d.role, d.database, d.application, w["lock_type"], w["lock_mode"],
                        w["lock_object"], wait_s, taken_at, taken_at, list(d.blocked_by), [],
                        w["query_id"], w["query"])
                ep.wait_s = max(ep.wait_s, wait_s)
                ep.last_seen = taken_at
                ep.blocked_by = sorted(set(ep.blocked_by) | set(d.blocked_by))
                if root.pid not in ep.root_blockers:
                    ep.root_blockers.append(root.pid)
    summary.longest_waits = sorted(episodes.values(), key=lambda e: -e.wait_s)[:limit]
    summary.root_blockers = sorted(
        roots.values(), key=lambda b: (-b.blocked_sessions, -b.blocked_for_s))[:limit]
    return summary


def _descendants(node: activity.LockNode) -> list[activity.LockNode]:
    """The sessions behind ``node``, each once (one waiting on two blockers of the same chain
    appears under both in the tree)."""
    out: dict[int, activity.LockNode] = {}
    for c in node.children:
        for n in (c, *_descendants(c)):
            out.setdefault(n.pid, n)
    return list(out.values())
