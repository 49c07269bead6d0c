"""Checks on client sessions: connections against max_connections, sessions idle in a
transaction, long-running queries, queries waiting for a lock."""

from __future__ import annotations

from typing import Any

from studyhub.ops import activity
from studyhub.ops.health.registry import Check, CheckContext, _clients, _fmt_s, check, grade
from studyhub.ops.queries import load


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
