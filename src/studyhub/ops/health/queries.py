"""Checks on statements: pg_stat_statements available, slow queries."""

from __future__ import annotations

from studyhub.ops import statements
from studyhub.ops.extensions import extension_status
from studyhub.ops.health.registry import Check, CheckContext, check


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
