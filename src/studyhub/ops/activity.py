"""Who is connected and what they do: sessions, connection counts, the blocking tree, long
queries, the ``top`` snapshot (replication lives in ``ops.replication``).

Everything here is read-only and works as the ops role (pg_monitor).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from studyhub.connect import connect, first_line
from studyhub.errors import StudyhubError
from studyhub.ops.queries import load
from studyhub.ops.replication import replication_from_primary
from studyhub.profiles import Endpoint, Profile


@dataclass
class Session:
    pid: int
    database: str | None
    role: str | None
    application: str
    client_addr: str | None
    backend_type: str
    state: str
    wait_event_type: str | None
    wait_event: str | None
    backend_age_s: float | None
    xact_age_s: float | None
    query_age_s: float | None
    state_age_s: float | None
    blocked_by: list[int]
    query_id: int | None
    query: str | None
    ssl: bool
    backend_start: datetime | None
    is_self: bool
    is_superuser: bool

    @property
    def age_s(self) -> float | None:
        """How long the thing worth worrying about has lasted: the transaction for an idle-in-
        transaction session, the query for an active one, the state otherwise."""
        if self.state.startswith("idle in transaction"):
            return self.xact_age_s
        if self.state == "active":
            return self.query_age_s
        return self.state_age_s

    @property
    def is_walsender(self) -> bool:
        return self.backend_type == "walsender"


class MonitorPrivilegeMissing(StudyhubError):
    """The role cannot see other roles' activity: reports would look all clear when they are
    not."""


@dataclass
class MonitorPrivilege:
    role: str
    read_all_stats: bool

    @property
    def grant(self) -> str:
        return f"GRANT pg_monitor TO {self.role};"

    @property
    def reason(self) -> str:
        return (f"role {self.role} cannot see other roles' sessions and statements (it lacks "
                "pg_read_all_stats, part of pg_monitor)")

    def missing(self, what: str) -> str:
        return (f"{self.reason}, so {what} would look all clear when it is not; an "
                f"administrator can run: {self.grant}")


def monitor_privilege(conn: psycopg.Connection) -> MonitorPrivilege:
    """Whether this connection's role sees every role's state, query and statement text."""
    role, ok = conn.execute(load("get_monitor_privilege")).fetchone()
    return MonitorPrivilege(role, bool(ok))


def require_monitor(conn: psycopg.Connection, what: str) -> None:
    """Stop with one line naming the GRANT when the role cannot see other roles' activity
    (pg_stat_activity hides their state and query, pg_stat_statements their text)."""
    priv = monitor_privilege(conn)
    if not priv.read_all_stats:
        raise MonitorPrivilegeMissing(priv.missing(what))


def monitor_connection(profile: Profile, database: str | None = None, role: str = "ops", *,
                       sees_activity: str | None = None,
                       application_name: str = "studyhub") -> psycopg.Connection:
    """The ops role's autocommit connection. ``sees_activity`` names what the caller shows of
    other roles' sessions or statements: without pg_read_all_stats (pg_monitor) those are
    hidden, so it stops with the GRANT (``require_monitor``) instead of reporting all clear."""
    conn = connect(profile, role, database=database, autocommit=True,
                   application_name=application_name)
    if sees_activity:
        try:
            require_monitor(conn, sees_activity)
        except BaseException:
            conn.close()
            raise
    return conn


def sessions(conn: psycopg.Connection) -> list[Session]:
    """Every backend on the server: client sessions, walsenders, autovacuum and background
    workers (filter on ``backend_type``)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(load("get_sessions")).fetchall()
    return [Session(**{**r, "blocked_by": list(r["blocked_by"] or [])}) for r in rows]


# ------------------------------------------------------------------------- connections
@dataclass
class ConnectionGroup:
    key: str
    total: int
    active: int
    idle: int
    idle_in_transaction: int
    other: int
    ssl: int


@dataclass
class PoolStats:
    database: str
    user: str
    clients_active: int
    clients_waiting: int
    servers_active: int
    servers_idle: int
    max_wait_s: float
    mode: str


@dataclass
class ConnectionReport:
    by: str
    max_connections: int
    superuser_reserved: int
    total: int
    groups: list[ConnectionGroup]
    pools: list[PoolStats] | None = None
    pooler_note: str | None = None


GROUP_KEYS = {
    "state": lambda s: s.state or "(none)",
    "user": lambda s: s.role or "(none)",
    "app": lambda s: s.application or "(none)",
    "client": lambda s: s.client_addr or "(local socket)",
    "database": lambda s: s.database or "(none)",
}


def connection_report(conn: psycopg.Connection, by: str = "state",
                      profile: Profile | None = None) -> ConnectionReport:
    """Client connections grouped by state, user, app, client or database (with SSL use), and
    PgBouncer's pools when the profile has a pooler."""
    if by not in GROUP_KEYS:
        raise StudyhubError(f"cannot group by {by!r}; choose one of {', '.join(GROUP_KEYS)}")
    max_conn, reserved, _ = conn.execute(load("get_connection_limits")).fetchone()
    clients = [s for s in sessions(conn) if s.backend_type == "client backend"]
    grouped: dict[str, list[Session]] = defaultdict(list)
    for s in clients:
        grouped[GROUP_KEYS[by](s)].append(s)
    groups = []
    for key, members in grouped.items():
        states = Counter(s.state for s in members)
        iit = states["idle in transaction"] + states["idle in transaction (aborted)"]
        groups.append(ConnectionGroup(
            key=key, total=len(members), active=states["active"], idle=states["idle"],
            idle_in_transaction=iit,
            other=len(members) - states["active"] - states["idle"] - iit,
            ssl=sum(1 for s in members if s.ssl)))
    groups.sort(key=lambda g: (-g.total, g.key))
    report = ConnectionReport(by, max_conn, reserved, len(clients), groups)
    if profile is not None and profile.pooler_port:
        report.pools, report.pooler_note = pooler_pools(profile)
    return report


def pooler_endpoint(profile: Profile) -> Endpoint:
    """PgBouncer's admin console, as the ops role (a stats_user there)."""
    ep = profile.endpoint("pooler")
    return Endpoint(ep.host, ep.port, "pgbouncer", profile.users["ops"], ep.sslmode,
                    ep.passfile, ep.sslrootcert, via_pooler=True)


def pooler_pools(profile: Profile) -> tuple[list[PoolStats] | None, str | None]:
    """SHOW POOLS on the pooler's admin console; (None, why) when it cannot be read."""
    ep = pooler_endpoint(profile)
    kwargs: dict[str, Any] = ep.conninfo()
    pw = profile.password_for(ep.user)
    if pw is not None:
        kwargs["password"] = pw.get_secret_value()
    try:
        with psycopg.connect(**kwargs, autocommit=True, connect_timeout=5,
                             prepare_threshold=None) as pconn:
            # The admin console speaks only the simple query protocol.
            rows = _simple_query(pconn, load("get_pooler_pools"))
    except psycopg.Error as exc:
        return None, f"pooler stats unavailable ({ep.host}:{ep.port}): {first_line(exc)}"
    pools = [
        PoolStats(
            database=r["database"], user=r["user"],
            clients_active=int(r["cl_active"]), clients_waiting=int(r["cl_waiting"]),
            servers_active=int(r["sv_active"]), servers_idle=int(r["sv_idle"]),
            max_wait_s=float(r["maxwait"]) + float(r.get("maxwait_us", 0)) / 1e6,
            mode=r.get("pool_mode", ""))
        for r in rows if r["database"] != "pgbouncer"
    ]
    return pools, None


def _simple_query(conn: psycopg.Connection, query: str) -> list[dict[str, Any]]:
    """Run one statement with the simple query protocol (PgBouncer's console needs it)."""
    pgconn = conn.pgconn
    text = "\n".join(ln for ln in query.splitlines() if not ln.lstrip().startswith("--"))
    result = pgconn.exec_(text.strip().rstrip(";").encode())
    if result.status != psycopg.pq.ExecStatus.TUPLES_OK:
        raise psycopg.OperationalError((result.error_message or b"").decode(errors="replace"))
    names = [result.fname(i).decode() for i in range(result.nfields)]
    rows = []
    for r in range(result.ntuples):
        rows.append({names[c]: (v.decode() if (v := result.get_value(r, c)) is not None else None)
                     for c in range(result.nfields)})
    return rows


# ------------------------------------------------------------------------- locks
@dataclass
class LockNode:
    pid: int
    role: str | None
    database: str | None
    application: str
    state: str
    waiting: bool
    wait_s: float | None  # how long it has waited (its current state's age) when waiting
    xact_age_s: float | None
    waiting_mode: str | None
    locked_object: str | None
    held_mode: str | None
    held_object: str | None
    query_id: int | None
    query: str | None
    blocked_by: list[int]
    children: list["LockNode"] = field(default_factory=list)

    def count(self) -> int:
        """Sessions in this subtree below this one."""
        return sum(1 + c.count() for c in self.children)


def blocking_tree(conn: psycopg.Connection) -> list[LockNode]:
    """Who blocks whom: root blockers first (most sessions blocked behind them first), each
    with the sessions waiting behind it as children."""
    with conn.cursor(row_factory=dict_row) as cur:
        waits = {r["pid"]: r for r in cur.execute(load("get_lock_waits")).fetchall()}
    if not waits:
        return []
    by_pid = {s.pid: s for s in sessions(conn)}
    involved = set(waits) | {b for w in waits.values() for b in w["blocked_by"]}
    with conn.cursor(row_factory=dict_row) as cur:
        held = {r["pid"]: r for r in cur.execute(load("get_held_locks"),
                                                 {"pids": list(involved)}).fetchall()}
    return build_tree(waits, by_pid, held)


def build_tree(waits: dict[int, dict[str, Any]], by_pid: dict[int, Session],
               held: dict[int, dict[str, Any]]) -> list[LockNode]:
    """The blocking tree from its parts (live: :func:`blocking_tree`; replayed from the
    activity history: ``ops.history.moment``): ``waits`` PID → its ``blocked_by``,
    ``waiting_mode`` and ``locked_object``; ``by_pid`` the sessions; ``held`` PID → the
    ``held_mode`` and ``held_object`` of a blocker."""
    if not waits:
        return []
    involved = set(waits) | {b for w in waits.values() for b in w["blocked_by"]}

    def node(pid: int) -> LockNode:
        s, w, h = by_pid.get(pid), waits.get(pid), held.get(pid, {})
        return LockNode(
            pid=pid, role=s.role if s else None, database=s.database if s else None,
            application=s.application if s else "", state=s.state if s else "?",
            waiting=w is not None, wait_s=s.state_age_s if (s and w) else None,
            xact_age_s=s.xact_age_s if s else None,
            waiting_mode=w["waiting_mode"] if w else None,
            locked_object=w["locked_object"] if w else None,
            held_mode=h.get("held_mode"), held_object=h.get("held_object"),
            query_id=s.query_id if s else None, query=s.query if s else None,
            blocked_by=list(w["blocked_by"]) if w else [])

    children: dict[int, list[int]] = defaultdict(list)
    for pid, w in waits.items():
        for b in w["blocked_by"]:
            children[b].append(pid)

    def build(pid: int, seen: frozenset[int]) -> LockNode:
        n = node(pid)
        for child in sorted(children.get(pid, [])):
            if child not in seen:  # lock cycles (deadlocks) resolve themselves; don't loop
                n.children.append(build(child, seen | {child}))
        return n

    roots_pids = [p for p in involved if p not in waits]
    if not roots_pids:  # everyone waits on someone: a cycle; show each waiter once
        roots_pids = sorted(waits)[:1]
    roots = [build(p, frozenset({p})) for p in roots_pids]
    roots.sort(key=lambda n: (-n.count(), -(n.xact_age_s or 0)))
    return roots


# ------------------------------------------------------------------------- long queries
DEFAULT_LONG_STATES = ("active", "idle in transaction", "idle in transaction (aborted)",
                       "fastpath function call")
# pg_stat_activity.state's values (PostgreSQL 15)
SESSION_STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)",
                  "fastpath function call", "disabled")


def long_queries(conn: psycopg.Connection, older_than_s: float = 300,
                 states: tuple[str, ...] = DEFAULT_LONG_STATES,
                 database: str | None = None) -> list[Session]:
    """Client sessions in ``states`` whose query (or open transaction, when idle in one) is
    older than ``older_than_s``, oldest first. Our own session is left out. An unknown state
    is refused (a typo must not look like "nothing running")."""
    unknown = [st for st in states if st not in SESSION_STATES]
    if unknown:
        raise StudyhubError(f"unknown state(s) {', '.join(repr(u) for u in unknown)}; "
                            f"pg_stat_activity's states are: {', '.join(SESSION_STATES)}")
    found = [
        s for s in sessions(conn)
        if s.backend_type == "client backend" and not s.is_self and s.state in states
        and (s.age_s or 0) >= older_than_s and (database is None or s.database == database)
    ]
    return sorted(found, key=lambda s: -(s.age_s or 0))


# ------------------------------------------------------------------------- top
@dataclass
class DatabaseCounters:
    transactions: int
    blocks_hit: int
    blocks_read: int
    measured_at: datetime


@dataclass
class TopSnapshot:
    database: str
    tps: float | None
    cache_hit_pct: float | None
    connections_by_state: dict[str, int]
    max_connections: int
    replication_lag_bytes: int | None
    replication_lag_s: float | None
    sessions: list[Session]
    counters: DatabaseCounters


def database_counters(conn: psycopg.Connection) -> DatabaseCounters:
    return DatabaseCounters(*conn.execute(load("get_database_counters")).fetchone())


def top_snapshot(conn: psycopg.Connection, previous: TopSnapshot | None = None,
                 include_idle: bool = False) -> TopSnapshot:
    """One frame of ``studyhub top``: header numbers (TPS and cache hit over the interval since
    ``previous``) and the sessions, blocked and blocking ones flagged."""
    counters = database_counters(conn)
    tps = hit = None
    if previous is not None:
        dt = (counters.measured_at - previous.counters.measured_at).total_seconds()
        if dt > 0:
            tps = max(0, counters.transactions - previous.counters.transactions) / dt
        dh = counters.blocks_hit - previous.counters.blocks_hit
        dr = counters.blocks_read - previous.counters.blocks_read
        hit = 100.0 * dh / (dh + dr) if dh + dr > 0 else None
    elif counters.blocks_hit + counters.blocks_read > 0:
        hit = 100.0 * counters.blocks_hit / (counters.blocks_hit + counters.blocks_read)
    all_sessions = sessions(conn)
    by_state = Counter(s.state or "(none)" for s in all_sessions
                       if s.backend_type == "client backend")
    max_conn = conn.execute(load("get_connection_limits")).fetchone()[0]
    lag_b = lag_s = None
    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        replicas, _ = replication_from_primary(conn)
        if replicas:
            lag_b = max((r.replay_lag_bytes or 0) for r in replicas)
            lag_s = max((r.replay_lag_s or 0) for r in replicas)
    shown = [s for s in all_sessions if s.backend_type == "client backend"
             and (include_idle or s.state != "idle")]
    return TopSnapshot(conn.info.dbname, tps, hit, dict(by_state), max_conn, lag_b, lag_s,
                       shown, counters)


SORTS = ("duration", "pid", "state", "blocking")


def sort_sessions(snap: TopSnapshot, sort: str, text_filter: str | None) -> list[Session]:
    """The sessions of a ``top_snapshot`` as ``studyhub top`` and the dashboard's live page list
    them: our own left out, only those whose user, app, database, query, state, client or PID
    contains ``text_filter`` (any case), sorted by ``sort`` (one of ``SORTS``; "blocking": root
    blockers first, then the blocked, each group longest first)."""
    blockers = {b for s in snap.sessions for b in s.blocked_by}
    rows = [s for s in snap.sessions if not s.is_self]
    if text_filter:
        needle = text_filter.lower()
        rows = [s for s in rows if any(needle in (v or "").lower() for v in
                                       (s.role, s.application, s.database, s.query, s.state,
                                        s.client_addr, str(s.pid)))]
    key = {
        "duration": lambda s: -(s.age_s or 0),
        "pid": lambda s: s.pid,
        "state": lambda s: (s.state, -(s.age_s or 0)),
        "blocking": lambda s: (s.pid not in blockers, not s.blocked_by, -(s.age_s or 0)),
    }[sort]
    return sorted(rows, key=key)
