"""``diag doctor``: a registry of small named checks (PgHero-style). Each returns a ``Check``
with a status (ok / warn / critical), the measured value, the threshold it was held against and
the fix; the CLI, ``--json`` and a web dashboard render the same list.

Thresholds have defaults below; ``[doctor]`` in studyhub.toml and ``--set name=value`` override
them (keys are ``check.setting``, e.g. ``long_queries.warn_s``).
"""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from studyhub.connect import first_line
from studyhub.errors import ConfigError
from studyhub.ops import activity, indexes
from studyhub.ops.extensions import extension_status
from studyhub.ops.queries import load
from studyhub.profiles import Profile

STATUSES = ("ok", "warn", "critical")
EXIT_CODES = {"ok": 0, "warn": 1, "critical": 2}

DEFAULT_THRESHOLDS: dict[str, float] = {
    "connections.warn_pct": 70,            # of max_connections minus superuser-reserved
    "connections.critical_pct": 90,
    "idle_in_transaction.warn_s": 60,      # age of the open transaction
    "idle_in_transaction.critical_s": 600,
    "long_queries.warn_s": 60,             # PgHero's "long running" mark
    "long_queries.critical_s": 300,
    "blocked_queries.warn_s": 5,           # time spent waiting for a lock
    "blocked_queries.critical_s": 60,
    "replication_lag.warn_bytes": 16 * 1024**2,
    "replication_lag.critical_bytes": 1024**3,
    "replication_lag.warn_s": 5,
    "replication_lag.critical_s": 60,
    "replication_slots.critical_retained_bytes": 4 * 1024**3,
    "xid_wraparound.warn_age": 500_000_000,        # of ~2.1 billion
    "xid_wraparound.critical_age": 1_000_000_000,
    "sequences.warn_pct": 70,
    "sequences.critical_pct": 90,
    "unused_indexes.min_bytes": 1024**2,  # smaller unused indexes are not worth a warning
    "unused_indexes.min_window_s": 86_400,  # judged once the statistics cover a day of use
    "foreign_keys_without_index.min_table_bytes": 0,
    "cache_hit.warn_pct": 99,
    "cache_hit.critical_pct": 90,
    "cache_hit.min_reads": 10_000,         # below this many block accesses the ratio means little
    "vacuum.warn_dead_pct": 20,
    "vacuum.min_dead_rows": 10_000,
    "analyze.warn_modified_pct": 20,
    "analyze.min_modified_rows": 10_000,
    "slow_queries.min_calls": 100,         # PgHero's defaults
    "slow_queries.min_mean_ms": 20,
}


@dataclass
class Check:
    name: str
    title: str
    status: str  # ok | warn | critical
    value: Any
    threshold: str
    fix: str | None = None
    detail: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class DoctorReport:
    profile: str
    database: str
    status: str
    exit_code: int
    checks: list[Check]


@dataclass
class CheckContext:
    conn: psycopg.Connection
    profile: Profile | None
    thresholds: dict[str, float]
    _sessions: list[activity.Session] | None = None

    def t(self, key: str) -> float:
        return self.thresholds[key]

    @property
    def sessions(self) -> list[activity.Session]:
        if self._sessions is None:
            self._sessions = activity.sessions(self.conn)
        return self._sessions

    def rows(self, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(load(name), params).fetchall()


CheckFn = Callable[[CheckContext], Check]
REGISTRY: dict[str, CheckFn] = {}
# Checks that read other roles' sessions or statements: without pg_read_all_stats (pg_monitor)
# pg_stat_activity hides their state and query, pg_stat_statements their text and
# pg_stat_replication the positions, so these would report "ok" when they cannot know.
NEEDS_ALL_STATS: set[str] = set()


def check(name: str, *, needs_all_stats: bool = False) -> Callable[[CheckFn], CheckFn]:
    def register(fn: CheckFn) -> CheckFn:
        REGISTRY[name] = fn
        if needs_all_stats:
            NEEDS_ALL_STATS.add(name)
        return fn
    return register


def grade(value: float, warn: float, critical: float, *, higher_is_worse: bool = True) -> str:
    if higher_is_worse:
        return "critical" if value >= critical else "warn" if value >= warn else "ok"
    return "critical" if value <= critical else "warn" if value <= warn else "ok"


def worst(statuses: list[str]) -> str:
    return max(statuses, key=STATUSES.index, default="ok")


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _join_fixes(statements: list[str], shown: int = 3) -> str:
    head = " ".join(statements[:shown])
    if len(statements) > shown:
        head += f" … and {len(statements) - shown} more (see `studyhub diag indexes`)"
    return head


def _clients(ctx: CheckContext) -> list[activity.Session]:
    return [s for s in ctx.sessions if s.backend_type == "client backend" and not s.is_self]


# --------------------------------------------------------------------------- checks
@check("connections")
def connections(ctx: CheckContext) -> Check:
    max_conn, reserved, total = ctx.conn.execute(load("get_connection_limits")).fetchone()
    usable = max(1, max_conn - reserved)
    pct = 100.0 * total / usable
    warn, crit = ctx.t("connections.warn_pct"), ctx.t("connections.critical_pct")
    by_state: dict[str, int] = {}
    for s in ctx.sessions:
        if s.backend_type == "client backend":
            by_state[s.state or "(none)"] = by_state.get(s.state or "(none)", 0) + 1
    status = grade(pct, warn, crit)
    return Check(
        "connections", "Connections vs max_connections", status,
        f"{total}/{usable} ({pct:.0f}%)", f"warn ≥{warn:g}%, critical ≥{crit:g}%",
        fix=None if status == "ok" else
        "route the app through the connection pooler; find who holds connections with "
        "`studyhub diag connections --by app`",
        detail=", ".join(f"{k}: {v}" for k, v in sorted(by_state.items())),
        items=[{"state": k, "count": v} for k, v in sorted(by_state.items())])


def _session_item(s: activity.Session) -> dict[str, Any]:
    return {"pid": s.pid, "database": s.database, "role": s.role, "application": s.application,
            "state": s.state, "age_s": round(s.age_s or 0, 1), "query_id": s.query_id}


@check("idle_in_transaction", needs_all_stats=True)
def idle_in_transaction(ctx: CheckContext) -> Check:
    found = [s for s in _clients(ctx) if s.state.startswith("idle in transaction")]
    oldest = max((s.age_s or 0 for s in found), default=0)
    warn, crit = ctx.t("idle_in_transaction.warn_s"), ctx.t("idle_in_transaction.critical_s")
    flagged = [s for s in found if (s.age_s or 0) >= warn]
    status = grade(oldest, warn, crit) if found else "ok"
    return Check(
        "idle_in_transaction", "Sessions idle in a transaction", status,
        f"{len(found)} (oldest {_fmt_s(oldest)})" if found else "0",
        f"warn ≥{_fmt_s(warn)}, critical ≥{_fmt_s(crit)}",
        fix=None if status == "ok" else
        "they hold locks and stop vacuum: fix the app's transaction handling; end them with "
        "`studyhub emergency terminate PID`; set idle_in_transaction_session_timeout",
        items=[_session_item(s) for s in flagged])


@check("long_queries", needs_all_stats=True)
def long_queries(ctx: CheckContext) -> Check:
    warn, crit = ctx.t("long_queries.warn_s"), ctx.t("long_queries.critical_s")
    found = [s for s in _clients(ctx) if s.state == "active" and (s.query_age_s or 0) >= warn]
    oldest = max((s.query_age_s or 0 for s in found), default=0)
    status = grade(oldest, warn, crit) if found else "ok"
    return Check(
        "long_queries", "Long-running queries", status,
        f"{len(found)} (longest {_fmt_s(oldest)})" if found else "0",
        f"warn ≥{_fmt_s(warn)}, critical ≥{_fmt_s(crit)}",
        fix=None if status == "ok" else
        "inspect with `studyhub emergency queries`; cancel with `studyhub emergency cancel PID`",
        items=[_session_item(s) for s in found])


@check("blocked_queries", needs_all_stats=True)
def blocked_queries(ctx: CheckContext) -> Check:
    found = [s for s in _clients(ctx) if s.blocked_by]
    longest = max((s.state_age_s or 0 for s in found), default=0)
    warn, crit = ctx.t("blocked_queries.warn_s"), ctx.t("blocked_queries.critical_s")
    status = grade(longest, warn, crit) if found else "ok"
    items = [{**_session_item(s), "blocked_by": s.blocked_by, "waiting_s": round(s.state_age_s or 0, 1)}
             for s in found]
    return Check(
        "blocked_queries", "Queries waiting for a lock", status,
        f"{len(found)} (longest wait {_fmt_s(longest)})" if found else "0",
        f"warn ≥{_fmt_s(warn)}, critical ≥{_fmt_s(crit)}",
        fix=None if status == "ok" else
        "see the blocking tree with `studyhub diag locks`; end the root blocker with "
        "`studyhub emergency cancel PID` (or terminate)",
        items=items)


@check("replication_lag", needs_all_stats=True)
def replication_lag(ctx: CheckContext) -> Check:
    if ctx.conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
        row = ctx.rows("get_replica_self_status")[0]
        gap = row["receive_replay_gap_bytes"] or 0
        secs = row["last_replay_age_s"] if gap > 0 else 0
        items = [{"name": "(this replica)", "replay_lag_bytes": gap, "replay_lag_s": secs,
                  "paused": row["replay_pause_state"] != "not paused"}]
    else:
        replicas, _ = activity.replication_from_primary(ctx.conn)
        if not replicas:
            return Check("replication_lag", "Replication lag", "ok", "no replicas", "-")
        items = [{"name": r.name, "state": r.state, "replay_lag_bytes": r.replay_lag_bytes,
                  "replay_lag_s": r.replay_lag_s} for r in replicas]
    wb, cb = ctx.t("replication_lag.warn_bytes"), ctx.t("replication_lag.critical_bytes")
    ws, cs = ctx.t("replication_lag.warn_s"), ctx.t("replication_lag.critical_s")
    statuses = []
    for it in items:
        statuses.append(grade(it["replay_lag_bytes"] or 0, wb, cb))
        statuses.append(grade(it["replay_lag_s"] or 0, ws, cs))
        if it.get("state") not in (None, "streaming"):
            statuses.append("warn")
    status = worst(statuses)
    max_b = max((it["replay_lag_bytes"] or 0) for it in items)
    max_s = max((it["replay_lag_s"] or 0) for it in items)
    return Check(
        "replication_lag", "Replication lag", status,
        f"{_fmt_bytes(max_b)}, {max_s:.1f}s ({len(items)} replica(s))",
        f"warn ≥{_fmt_bytes(wb)} or ≥{ws:g}s, critical ≥{_fmt_bytes(cb)} or ≥{cs:g}s",
        fix=None if status == "ok" else
        "see `studyhub diag replication` (replayed or paused? long queries on the replica? "
        "network?); route reads to the primary until it catches up",
        items=items)


@check("replication_slots")
def replication_slots(ctx: CheckContext) -> Check:
    slots = [activity.ReplicationSlot(**r) for r in ctx.rows("get_replication_slots")]
    inactive = [s for s in slots if not s.active]
    crit = ctx.t("replication_slots.critical_retained_bytes")
    status = "ok"
    if inactive:
        status = "critical" if any((s.retained_bytes or 0) >= crit for s in inactive) else "warn"
    return Check(
        "replication_slots", "Inactive replication slots", status,
        f"{len(inactive)} inactive of {len(slots)}",
        f"warn: any inactive, critical: one retains ≥{_fmt_bytes(crit)} of WAL",
        fix=None if status == "ok" else
        "an inactive slot keeps WAL forever and fills the disk: restart its consumer, or drop "
        "it with SELECT pg_drop_replication_slot('NAME');",
        items=[{"slot": s.slot_name, "type": s.slot_type, "retained_bytes": s.retained_bytes}
               for s in inactive])


@check("xid_wraparound")
def xid_wraparound(ctx: CheckContext) -> Check:
    rows = ctx.rows("get_xid_age")
    top = rows[0] if rows else {"database": "-", "xid_age": 0}
    warn, crit = ctx.t("xid_wraparound.warn_age"), ctx.t("xid_wraparound.critical_age")
    status = grade(top["xid_age"], warn, crit)
    headroom = 2**31 - 3_000_000 - top["xid_age"]
    return Check(
        "xid_wraparound", "Transaction ID wraparound headroom", status,
        f"oldest XID age {top['xid_age']:,} in {top['database']} ({headroom:,} left)",
        f"warn ≥{warn:,.0f}, critical ≥{crit:,.0f}",
        fix=None if status == "ok" else
        f"VACUUM (FREEZE) the oldest tables of {top['database']}; look for long transactions "
        "and stale replication slots holding back the xmin",
        items=[r for r in rows if r["xid_age"] >= warn])


@check("sequences")
def sequences(ctx: CheckContext) -> Check:
    rows = ctx.rows("get_sequence_usage")
    unreadable = [r for r in rows if r["last_value"] is None]
    items = []
    for r in rows:
        if r["last_value"] is None or not r["limit_value"]:
            continue
        pct = 100.0 * r["last_value"] / r["limit_value"]
        items.append({"sequence": f"{r['schema']}.{r['sequence']}", "used_pct": round(pct, 2),
                      "last_value": r["last_value"], "limit": r["limit_value"],
                      "column": f"{r['owned_by_table']}.{r['owned_by_column']}"
                      if r["owned_by_column"] else None})
    warn, crit = ctx.t("sequences.warn_pct"), ctx.t("sequences.critical_pct")
    top = max((i["used_pct"] for i in items), default=0.0)
    status = grade(top, warn, crit)
    return Check(
        "sequences", "Sequences close to their limit", status,
        f"highest {top:.1f}% ({len(rows)} sequence(s))",
        f"warn ≥{warn:g}%, critical ≥{crit:g}%",
        fix=None if status == "ok" else
        "change the column (and sequence) to bigint before it runs out",
        detail=(f"{len(unreadable)} sequence(s) not readable by this role (last_value hidden)"
                if unreadable else None),
        items=[i for i in items if i["used_pct"] >= warn])


@check("invalid_indexes")
def invalid_indexes(ctx: CheckContext) -> Check:
    found = indexes.invalid_indexes(indexes.index_definitions(ctx.conn))
    return Check(
        "invalid_indexes", "Invalid indexes", "warn" if found else "ok", len(found), "any",
        fix=None if not found else
        "drop and rebuild them: " + _join_fixes([f.fix_sql for f in found]),
        detail="often left by a failed CREATE INDEX CONCURRENTLY" if found else None,
        items=[{"index": f.index, "table": f.table, "fix_sql": f.fix_sql} for f in found])


@check("invalid_constraints")
def invalid_constraints(ctx: CheckContext) -> Check:
    rows = ctx.rows("get_invalid_constraints")
    return Check(
        "invalid_constraints", "Constraints not validated", "warn" if rows else "ok", len(rows),
        "any",
        fix=None if not rows else
        "validate each (takes only a SHARE UPDATE EXCLUSIVE lock): ALTER TABLE t VALIDATE "
        "CONSTRAINT c;",
        items=rows)


@check("duplicate_indexes")
def duplicate_indexes(ctx: CheckContext) -> Check:
    found = indexes.duplicate_indexes(indexes.index_definitions(ctx.conn))
    return Check(
        "duplicate_indexes", "Duplicate / redundant indexes", "warn" if found else "ok",
        len(found), "any",
        fix=None if not found else _join_fixes([f.fix_sql for f in found]),
        items=[{"index": f.index, "covered_by": f.covered_by, "table": f.table,
                "size_bytes": f.size_bytes, "fix_sql": f.fix_sql} for f in found])


@check("unused_indexes")
def unused_indexes(ctx: CheckContext) -> Check:
    min_bytes, min_window = ctx.t("unused_indexes.min_bytes"), ctx.t("unused_indexes.min_window_s")
    found = [f for f in indexes.unused_indexes(indexes.index_definitions(ctx.conn),
                                               indexes.sole_foreign_key_indexes(ctx.conn))
             if f.size_bytes >= min_bytes]
    window = ctx.rows("get_statistics_window")[0]
    threshold = (f"never scanned in ≥{_fmt_s(min_window)} of statistics, "
                 f"≥{_fmt_bytes(min_bytes)}, not the only index of a foreign key")
    items = [{"index": f.index, "table": f.table, "size_bytes": f.size_bytes,
              "fix_sql": f.fix_sql} for f in found]
    value = f"{len(found)} ({_fmt_bytes(sum(f.size_bytes for f in found))})"
    since = "the statistics reset" if window["since_reset"] else "the server started"
    if found and window["window_s"] < min_window:
        # Minutes after a restart, a restore or a bulk load every index looks unused.
        return Check("unused_indexes", "Unused indexes", "ok",
                     f"{value}, not judged: {_fmt_s(window['window_s'])} since {since}",
                     threshold, items=items,
                     detail="candidates only: an index is judged unused after "
                            f"{_fmt_s(min_window)} of statistics without a scan")
    return Check(
        "unused_indexes", "Unused indexes", "warn" if found else "ok", value, threshold,
        fix=None if not found else
        "check the replica's statistics too, then: " + _join_fixes([f.fix_sql for f in found]),
        detail=f"statistics cover {_fmt_s(window['window_s'])} (since {since})" if found else None,
        items=items)


@check("foreign_keys_without_index")
def foreign_keys_without_index(ctx: CheckContext) -> Check:
    min_bytes = ctx.t("foreign_keys_without_index.min_table_bytes")
    found = [f for f in indexes.foreign_keys_without_index(ctx.conn)
             if f.table_bytes >= min_bytes]
    return Check(
        "foreign_keys_without_index", "Foreign keys without a supporting index",
        "warn" if found else "ok", len(found), "any",
        fix=None if not found else _join_fixes([f.fix_sql for f in found]),
        detail="each delete on the referenced table scans the referencing one" if found else None,
        items=[{"table": f.table, "constraint": f.constraint, "columns": f.columns,
                "fix_sql": f.fix_sql} for f in found])


def judge_cache_hit(hits: int, reads: int, database_blocks: int, *, warn_pct: float,
                    critical_pct: float, min_reads: float) -> tuple[str, str, str, str | None]:
    """(status, value, threshold, fix) for the buffer cache hit ratio. Too few accesses, or no
    more reads than the tables' blocks (each may be a block's first touch after a restart or a
    bulk load), say nothing about whether the working set fits: reported ok with "n/a"."""
    total = hits + reads
    if total == 0 or total < min_reads:
        return ("ok", f"n/a ({total:,} block accesses)",
                f"measured once ≥{min_reads:,.0f} block accesses", None)
    pct = 100.0 * hits / total
    if reads <= database_blocks:
        return ("ok", f"n/a, cold cache ({pct:.2f}%: {reads:,} reads ≤ {database_blocks:,} "
                      f"blocks in the tables)",
                "judged once reads exceed the tables' size in blocks", None)
    status = "critical" if pct < critical_pct else "warn" if pct < warn_pct else "ok"
    fix = None if status == "ok" else (
        "the working set does not fit in shared_buffers: add memory (a bigger plan) or cut "
        "what queries read (see `studyhub diag slow-queries --sort io`)")
    return status, f"{pct:.2f}%", f"warn <{warn_pct:g}%, critical <{critical_pct:g}%", fix


@check("cache_hit")
def cache_hit(ctx: CheckContext) -> Check:
    r = ctx.rows("get_cache_hit_ratio")[0]
    status, value, threshold, fix = judge_cache_hit(
        r["table_hits"] + r["index_hits"], r["table_reads"] + r["index_reads"],
        r["database_blocks"], warn_pct=ctx.t("cache_hit.warn_pct"),
        critical_pct=ctx.t("cache_hit.critical_pct"), min_reads=ctx.t("cache_hit.min_reads"))
    return Check(
        "cache_hit", "Cache hit ratio", status, value, threshold, fix=fix,
        detail=f"tables {r['table_hits']:,} hits / {r['table_reads']:,} reads; "
               f"indexes {r['index_hits']:,} / {r['index_reads']:,}")


@check("vacuum")
def vacuum(ctx: CheckContext) -> Check:
    rows = ctx.rows("get_vacuum_status")
    dead_pct, min_dead = ctx.t("vacuum.warn_dead_pct"), ctx.t("vacuum.min_dead_rows")
    mod_pct, min_mod = ctx.t("analyze.warn_modified_pct"), ctx.t("analyze.min_modified_rows")
    items = []
    for r in rows:
        live, dead, mod = r["live_rows"] or 0, r["dead_rows"] or 0, r["modified_since_analyze"] or 0
        pct = 100.0 * dead / (live + dead) if live + dead else 0.0
        needs_vacuum = dead >= min_dead and pct >= dead_pct
        mpct = 100.0 * mod / live if live else (100.0 if mod else 0.0)
        needs_analyze = mod >= min_mod and mpct >= mod_pct
        if needs_vacuum or needs_analyze:
            name = r["table"] if r["schema"] == "public" else f"{r['schema']}.{r['table']}"
            items.append({"table": name, "dead_rows": dead, "dead_pct": round(pct, 1),
                          "modified_since_analyze": mod, "needs_vacuum": needs_vacuum,
                          "needs_analyze": needs_analyze,
                          "last_vacuum": r["last_vacuum"], "last_analyze": r["last_analyze"]})
    fixes = [f"VACUUM (ANALYZE) {i['table']};" if i["needs_vacuum"] else f"ANALYZE {i['table']};"
             for i in items]
    return Check(
        "vacuum", "Tables overdue for VACUUM / ANALYZE", "warn" if items else "ok", len(items),
        f"dead ≥{dead_pct:g}% and ≥{min_dead:,.0f} rows; changed ≥{mod_pct:g}% and "
        f"≥{min_mod:,.0f} rows since ANALYZE",
        fix=" ".join(fixes) + " (as the table owner; check why autovacuum fell behind)"
        if items else None,
        items=items)


@check("pg_stat_statements")
def pg_stat_statements(ctx: CheckContext) -> Check:
    st = extension_status(ctx.conn, "pg_stat_statements")
    return Check(
        "pg_stat_statements", "pg_stat_statements available", "ok" if st.usable else "warn",
        "installed" if st.usable else ("not preloaded" if st.installed else "not installed"),
        "installed and preloaded", fix=st.fix(ctx.conn.info.dbname),
        detail=None if st.usable else "slow-query, index advice and history need it")


@check("slow_queries", needs_all_stats=True)
def slow_queries(ctx: CheckContext) -> Check:
    if not extension_status(ctx.conn, "pg_stat_statements").usable:
        return Check("slow_queries", "Slow queries", "ok", "n/a",
                     "needs pg_stat_statements (see above)")
    from studyhub.ops import statements

    min_calls, min_mean = ctx.t("slow_queries.min_calls"), ctx.t("slow_queries.min_mean_ms")
    stats = statements.current_stats(ctx.conn)
    slow = [s for s in stats if s.calls >= min_calls and s.mean_ms >= min_mean]
    slow.sort(key=lambda s: -s.total_exec_ms)
    return Check(
        "slow_queries", "Slow queries", "warn" if slow else "ok", len(slow),
        f"≥{min_calls:,.0f} calls and mean ≥{min_mean:g} ms",
        fix=None if not slow else
        "look at `studyhub diag slow-queries` and `studyhub diag advise`",
        items=[{"queryid": s.queryid, "role": s.role, "calls": s.calls,
                "mean_ms": round(s.mean_ms, 2)} for s in slow[:20]])


# ------------------------------------------------------------- values in the server log
def _disabled_ms(value: str) -> bool:
    """A duration threshold that logs nothing: -1 (0 logs every statement)."""
    return value.strip().startswith("-")


def _positive(value: str) -> bool:
    try:
        return float(value) > 0
    except ValueError:
        return True


def _on(value: str) -> bool:
    return value.strip().lower() in ("on", "true", "yes", "1", "t", "y")


# The settings log_value_leaks judges (read by get_log_value_settings.sql).
LOG_VALUE_SETTINGS = (
    "log_error_verbosity", "log_min_error_statement", "log_statement",
    "log_min_duration_statement", "log_min_duration_sample", "log_statement_sample_rate",
    "log_transaction_sample_rate", "log_parameter_max_length",
    "log_parameter_max_length_on_error", "debug_print_parse", "debug_print_rewritten",
    "debug_print_plan", "auto_explain.log_min_duration",
)


def log_value_leaks(settings: dict[str, str]) -> list[tuple[str, str]]:
    """(setting, what it lets into the server log) for each of ``settings`` (name → value as
    pg_settings shows it; absent names count as PostgreSQL's defaults) that copies data values —
    an email in a unique violation, a failing row, a statement's literals or bound parameters —
    into the log. Empty when none does."""
    s = {k: str(v).strip().lower() for k, v in settings.items()}
    terse = s.get("log_error_verbosity", "default") == "terse"
    sampled = (not _disabled_ms(s.get("log_min_duration_sample", "-1"))
               and _positive(s.get("log_statement_sample_rate", "1")))
    statements_logged = (s.get("log_statement", "none") != "none" or sampled
                         or not _disabled_ms(s.get("log_min_duration_statement", "-1"))
                         or _positive(s.get("log_transaction_sample_rate", "0")))
    found: list[tuple[str, str]] = []
    if not terse:
        found.append(("log_error_verbosity",
                      "DETAIL lines copy key values (a unique violation's email), failing rows "
                      "and deadlock reports' statements; CONTEXT lines a failed statement's "
                      "parameters"))
    if s.get("log_min_error_statement", "error") != "panic":
        found.append(("log_min_error_statement",
                      "a failed statement's text, literals included, follows the error as a "
                      "STATEMENT line"))
    if s.get("log_statement", "none") != "none":
        found.append(("log_statement", "statement texts are logged with their literals"))
    if not _disabled_ms(s.get("log_min_duration_statement", "-1")):
        found.append(("log_min_duration_statement",
                      "slow statements are logged with their texts"))
    if sampled:
        found.append(("log_min_duration_sample", "a sample of slow statements is logged with "
                                                 "their texts"))
    if _positive(s.get("log_transaction_sample_rate", "0")):
        found.append(("log_transaction_sample_rate",
                      "every statement of a sample of transactions is logged"))
    if statements_logged and s.get("log_parameter_max_length", "-1") != "0":
        found.append(("log_parameter_max_length",
                      "logged statements carry their bound parameter values"))
    if not terse and s.get("log_parameter_max_length_on_error", "0") != "0":
        found.append(("log_parameter_max_length_on_error",
                      "failed statements' bound parameter values are logged"))
    for name in ("debug_print_parse", "debug_print_rewritten", "debug_print_plan"):
        if not terse and _on(s.get(name, "off")):
            found.append((name, "query trees are logged with their constants"))
    if not _disabled_ms(s.get("auto_explain.log_min_duration", "-1")):
        found.append(("auto_explain.log_min_duration",
                      "auto_explain logs slow statements' texts with their plans"))
    return found


def _safe_log_value(name: str) -> str:
    from studyhub.local.cluster import LOG_PRIVACY_SETTINGS

    return LOG_PRIVACY_SETTINGS.get(name, "off" if name.startswith("debug_print") else "-1")


# What DigitalOcean's database configuration API can set, in the form it takes.
DO_LOG_CONFIG = {"log_error_verbosity": "TERSE", "log_min_duration_statement": -1}


def _log_values_fix(profile: Profile | None, server: list[str], auto_conf: list[str],
                    resets: list[str]) -> str:
    """How to undo each finding: ``server`` settings from the configuration files (the
    provider's way), ``auto_conf`` ones from ALTER SYSTEM, ``resets`` for role/database ones."""
    parts = []
    if server and profile is not None and profile.is_local:
        parts.append("run `studyhub local up` (it writes the safe values into studyhub.conf and "
                     "reloads the servers)")
    elif server and profile is not None and profile.do_cluster_id:
        body = {n: v for n, v in DO_LOG_CONFIG.items() if n in server}
        if body:
            parts.append(f"PATCH /v2/databases/{profile.do_cluster_id}/config "
                         f"{{\"config\": {json.dumps(body)}}}")
        rest = [n for n in server if n not in DO_LOG_CONFIG]
        if rest:
            parts.append(f"DigitalOcean's API cannot set {', '.join(rest)}: keep values out of "
                         "statement texts (bind parameters) and see docs/privacy.md")
    elif server:
        parts.append(" ".join(f"ALTER SYSTEM SET {n} = '{_safe_log_value(n)}';" for n in server)
                     + " SELECT pg_reload_conf(); (as a superuser)")
    if auto_conf:
        parts.append(" ".join(f"ALTER SYSTEM RESET {n};" for n in auto_conf)
                     + " SELECT pg_reload_conf(); (as a superuser)")
    if resets:
        parts.append(" ".join(resets))
    return "; then ".join(parts)


# pg_settings sources that are per-role or per-database settings of this very session: judged
# from get_log_setting_overrides.sql (which sees them for every role), not as the server's.
SESSION_OVERRIDE_SOURCES = ("database", "user", "database user")


def _alter_target(conn: psycopg.Connection, role: str | None, database: str | None) -> str:
    """``ROLE x IN DATABASE y`` / ``ROLE x`` / ``DATABASE y`` / ``ROLE ALL``, names quoted."""
    def ident(name: str) -> str:
        return sql.Identifier(name).as_string(conn)

    if role is None and database is not None:
        return f"DATABASE {ident(database)}"
    target = f"ROLE {ident(role)}" if role is not None else "ROLE ALL"
    return target + (f" IN DATABASE {ident(database)}" if database is not None else "")


@check("server_log_values")
def server_log_values(ctx: CheckContext) -> Check:
    names = {"names": list(LOG_VALUE_SETTINGS)}
    rows = [r for r in ctx.rows("get_log_value_settings", names)
            if r["source"] not in SESSION_OVERRIDE_SOURCES]
    current = {r["name"]: r["setting"] for r in rows}
    set_by = {r["name"]: r["sourcefile"] or r["source"] for r in rows}
    items = [{"setting": name, "value": current.get(name), "safe": _safe_log_value(name),
              "why": why, "set_by": set_by.get(name, "default")}
             for name, why in log_value_leaks(current)]
    # ALTER SYSTEM wins over the configuration files: undone by ALTER SYSTEM RESET, except on
    # DigitalOcean, where only its configuration API sets server settings.
    managed = ctx.profile is not None and ctx.profile.do_cluster_id is not None
    auto_conf = [i["setting"] for i in items
                 if not managed and str(i["set_by"]).endswith("postgresql.auto.conf")]
    server = [i["setting"] for i in items if i["setting"] not in auto_conf]
    resets = []
    for o in ctx.rows("get_log_setting_overrides", names):
        leaks = dict(log_value_leaks({**current, o["name"]: o["setting"]}))
        if o["name"] not in leaks:
            continue
        target = _alter_target(ctx.conn, o["role"], o["database"])
        items.append({"setting": o["name"], "value": o["setting"],
                      "safe": _safe_log_value(o["name"]), "why": leaks[o["name"]],
                      "set_by": f"ALTER {target}"})
        resets.append(f"ALTER {target} RESET {o['name']};")
    return Check(
        "server_log_values", "Server log settings that copy data values into the log",
        "warn" if items else "ok",
        f"{len(items)}: " + ", ".join(dict.fromkeys(i["setting"] for i in items))
        if items else "none",
        "log_error_verbosity=terse, log_min_error_statement=panic, no statement or parameter "
        "logging",
        fix=_log_values_fix(ctx.profile, server, auto_conf, resets) if items else None,
        detail="what reaches the server log outlives an erasure (docs/privacy.md)"
        if items else None,
        items=items)


# --------------------------------------------------------------------------- running
TITLES = {"idle_in_transaction": "Sessions idle in a transaction",
          "long_queries": "Long-running queries", "blocked_queries": "Queries waiting for a lock",
          "replication_lag": "Replication lag", "slow_queries": "Slow queries"}


def _config_thresholds() -> dict[str, Any]:
    raw = os.environ.get("STUDYHUB_CONFIG")
    path = Path(raw) if raw else Path.cwd() / "studyhub.toml"
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: line {exc.lineno}") from None
    flat: dict[str, Any] = {}
    for key, value in (data.get("doctor") or {}).items():
        if isinstance(value, dict):  # [doctor.long_queries] warn_s = 30
            for sub, v in value.items():
                flat[f"{key}.{sub}"] = v
        else:  # [doctor] "long_queries.warn_s" = 30
            flat[key] = value
    return flat


def thresholds(overrides: dict[str, Any] | None = None, *, use_config: bool = True) -> dict[str, float]:
    """Defaults, then studyhub.toml's [doctor], then ``overrides`` (e.g. from --set)."""
    result = dict(DEFAULT_THRESHOLDS)
    for source, values in (("studyhub.toml [doctor]", _config_thresholds() if use_config else {}),
                           ("--set", overrides or {})):
        for key, value in values.items():
            if key not in DEFAULT_THRESHOLDS:
                raise ConfigError(f"unknown doctor threshold {key!r} in {source}; known: "
                                  + ", ".join(sorted(DEFAULT_THRESHOLDS)))
            try:
                result[key] = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"doctor threshold {key} in {source} must be a number, "
                                  f"not {value!r}") from None
    return result


def parse_settings(pairs: list[str]) -> dict[str, str]:
    """``["long_queries.warn_s=30"]`` → {"long_queries.warn_s": "30"}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects name=value (e.g. long_queries.warn_s=30), got {pair!r}")
        out[key.strip()] = value.strip()
    return out


def run_doctor(conn: psycopg.Connection, profile: Profile | None = None, *,
               limits: dict[str, float] | None = None,
               only: list[str] | None = None) -> DoctorReport:
    """Run every registered check (or those named in ``only``). A check that cannot run (no
    privilege, missing view) comes back as ``warn`` saying why; the others still run."""
    if only:
        unknown = [n for n in only if n not in REGISTRY]
        if unknown:
            raise ConfigError(f"unknown check(s) {', '.join(unknown)}; known: "
                              + ", ".join(REGISTRY))
    ctx = CheckContext(conn, profile, limits or thresholds())
    privilege = activity.monitor_privilege(conn)
    results = []
    for name, fn in REGISTRY.items():
        if only and name not in only:
            continue
        if name in NEEDS_ALL_STATS and not privilege.read_all_stats:
            results.append(Check(name, TITLES.get(name, name.replace("_", " ")), "warn",
                                 "not visible", "-", fix=privilege.grant,
                                 detail=f"{privilege.reason}: this check cannot tell"))
            continue
        try:
            results.append(fn(ctx))
        except psycopg.Error as exc:
            if not conn.autocommit:
                conn.rollback()
            results.append(Check(name, name.replace("_", " "), "warn", "could not check", "-",
                                 fix="run as a role with pg_monitor (the ops role)",
                                 detail=first_line(exc)))
    status = worst([c.status for c in results])
    return DoctorReport(profile.name if profile else "-", conn.info.dbname, status,
                        EXIT_CODES[status], results)
