"""``/p/NAME/queries``: slow queries (since the reset or over a stored window) with a sparkline
each; ``/p/NAME/queries/QUERYID``: one statement's counters and history; ``…/explain``: its
plan (estimate only, as the app role)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from studyhub.connect import ConnectError, first_line
from studyhub.dashboard.context import connection
from studyhub.dashboard.render import (
    WINDOWS,
    history_freshness,
    pick_window,
    profile_view,
    render,
    run_page,
    settings_of,
)
from studyhub.errors import StudyhubError
from studyhub.ops import explain, statements

# Summing a window on the queries page reads every stored snapshot in it (500 statements per
# capture): a day of 5-minute captures takes ~0.5 s on 2 cores, a week several seconds. Longer
# spans are on each statement's own page (its history is indexed by queryid).
TABLE_WINDOWS = {k: WINDOWS[k] for k in ("1h", "6h", "24h")}
SPARK_POINTS = 48

def queries(request: Request, name: str, sort: str = "total", window: str | None = None,
            limit: int = 25, min_calls: int = 1) -> Response:
    view = profile_view(request, name)
    limit = max(1, min(limit, 200))
    win_key = window if window in TABLE_WINDOWS else None
    chart_key, chart_window = pick_window(window, "24h")

    def build(conn: psycopg.Connection) -> dict[str, Any]:
        report = statements.slow_queries(
            conn, sort=sort, limit=limit, min_calls=max(0, min_calls),
            since=WINDOWS[win_key] if win_key else None, save=False)
        since = datetime.now(timezone.utc) - chart_window
        history = {}
        if report.statements:
            for h in statements.statement_history(
                    conn, since, [s["queryid"] for s in report.statements]):
                history[(h.role, h.queryid)] = h
        sparks = {key: [p.calls_per_min for p in h.points][-SPARK_POINTS:]
                  for key, h in history.items()}
        return {"report": report, "sparks": sparks, "sort": sort, "window": win_key,
                "windows": TABLE_WINDOWS, "limit": limit, "page": "queries",
                "chart_window": chart_key, "latest": statements.latest_snapshot_at(conn),
                "history_freshness": history_freshness(request, view, conn)}

    return run_page(request, view, "queries.html", build, monitor="the queries page")


def query_detail(request: Request, name: str, queryid: int, role: str | None = None,
                 window: str | None = None) -> Response:
    view = profile_view(request, name)
    win_key, win = pick_window(window, "24h")

    def build(conn: psycopg.Connection) -> dict[str, Any]:
        current = [s for s in statements.current_stats(conn) if s.queryid == queryid]
        history = statements.statement_history(conn, datetime.now(timezone.utc) - win,
                                               [queryid])
        roles = sorted({s.role for s in current} | {h.role for h in history})
        if not roles:
            raise StudyhubError(f"no statement with queryid {queryid} in pg_stat_statements "
                                "or in the stored history of this database")
        chosen = role if role in roles else roles[0]
        stat = next((s for s in current if s.role == chosen), None)
        hist = next((h for h in history if h.role == chosen), None)
        text = stat.query if stat else hist.query if hist else ""
        points = hist.points if hist else []
        return {"queryid": queryid, "role": chosen, "roles": roles, "stat": stat,
                "history": hist, "query_text": text, "window": win_key, "windows": WINDOWS,
                "calls_points": [(p.captured_at, p.calls_per_min) for p in points],
                "mean_points": [(p.captured_at, p.mean_ms) for p in points
                                if p.mean_ms is not None],
                "history_freshness": history_freshness(request, view, conn),
                "page": "queries"}

    return run_page(request, view, "query.html", build, monitor="the query page")


def query_explain(request: Request, name: str, queryid: int,
                  role: str | None = None) -> Response:
    """EXPLAIN (estimate only) of a statement known to pg_stat_statements — never of text
    sent by the browser: rolled back, with a statement_timeout, as the app role. The text
    must be one statement EXPLAIN takes, as PostgreSQL's parser reads it (refused
    otherwise), and goes over the extended protocol (``explain.explain_statement``)."""
    view = profile_view(request, name)
    if not view.ok:
        return run_page(request, view, "explain.html", lambda conn: {})
    try:
        with connection(view, settings_of(request), "ops") as conn:
            found = [s for s in statements.current_stats(conn) if s.queryid == queryid
                     and (role is None or s.role == role)]
    except (StudyhubError, psycopg.Error) as exc:
        return render(request, "error.html", view, status=503 if isinstance(
            exc, ConnectError) else 400, error=first_line(exc))
    if not found:
        return render(request, "error.html", view, status=404,
                      error=f"no statement with queryid {queryid} in pg_stat_statements")
    stmt = found[0]

    def build(conn: psycopg.Connection) -> dict[str, Any]:
        conn.autocommit = False  # explain_statement runs in a transaction it rolls back
        result = explain.explain_statement(conn, stmt.query, analyze=False, timeout="10s")
        return {"stat": stmt, "result": result, "page": "queries"}

    return run_page(request, view, "explain.html", build, role="app")


def install(app: FastAPI) -> None:
    """Add this page's routes to the app (under its app-wide CSRF check)."""
    app.get("/p/{name}/queries", response_class=HTMLResponse)(queries)
    app.get("/p/{name}/queries/{queryid}", response_class=HTMLResponse)(query_detail)
    app.get("/p/{name}/queries/{queryid}/explain", response_class=HTMLResponse)(query_explain)
