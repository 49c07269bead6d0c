"""The per-profile pages (``/p/{profile}/…``) and their actions. Each page gathers typed
results from ``studyhub.ops`` and hands them to its template; each action is a POST (CSRF
checked app-wide), allowed only where ``ProfileView.can_act``, preceded by a confirmation page
that shows exactly what will happen, and audited by the ops function it calls."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from studyhub.connect import ConnectError, first_line
from studyhub.dashboard import charts, optional
from studyhub.dashboard.context import ProfileView, connection
from studyhub.dashboard.forwarded import ForwardedError
from studyhub.dashboard.security import client_address, flash
from studyhub.dashboard.settings import DashboardSettings
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops import activity, emergency, explain, health, indexes, space, statements

WINDOWS = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(days=1),
           "7d": timedelta(days=7), "30d": timedelta(days=30)}
# Summing a window on the queries page reads every stored snapshot in it (500 statements per
# capture): a day of 5-minute captures takes ~0.5 s on 2 cores, a week several seconds. Longer
# spans are on each statement's own page (its history is indexed by queryid).
TABLE_WINDOWS = {k: WINDOWS[k] for k in ("1h", "6h", "24h")}
TOP_PREVIOUS_MAX_AGE_S = 300
GROWTH_SERIES = 6
GROWTH_BARS = 15
SPARK_POINTS = 48


def _table_label(schema: str, table: str) -> str:
    return table if schema == "public" else f"{schema}.{table}"


def _client(request: Request) -> str | None:
    """For audit lines: the client's address (behind trusted proxies, the one they report)."""
    try:
        return client_address(request)
    except ForwardedError:
        return request.client.host if request.client else None


def _window(value: str | None, default: str) -> tuple[str, timedelta]:
    key = value if value in WINDOWS else default
    return key, WINDOWS[key]


def install(app: FastAPI, settings: DashboardSettings, render) -> None:  # noqa: ANN001, C901
    from studyhub.dashboard.app import profile_view, run_page

    def page(request: Request, view: ProfileView, template: str, build, role: str = "ops",
             monitor: str | None = None):
        """``monitor``: the page reads other roles' activity or statements, which without
        pg_monitor would look empty (all clear); it then shows the GRANT instead."""
        if monitor:
            inner = build

            def build(conn: psycopg.Connection) -> dict[str, Any]:
                activity.require_monitor(conn, monitor)
                return inner(conn)
        return run_page(request, view, template, build, role=role, settings=settings)

    # ------------------------------------------------------------------ overview
    @app.get("/p/{name}/", response_class=HTMLResponse)
    def overview(request: Request, name: str) -> Response:
        view = profile_view(name, settings)

        def build(conn: psycopg.Connection) -> dict[str, Any]:
            report = health.run_doctor(conn, view.profile)
            checks = {c.name: c for c in report.checks}
            return {"report": report, "checks": checks, "page": "overview"}

        return page(request, view, "overview.html", build)

    # ------------------------------------------------------------------ queries
    @app.get("/p/{name}/queries", response_class=HTMLResponse)
    def queries(request: Request, name: str, sort: str = "total", window: str | None = None,
                limit: int = 25, min_calls: int = 1) -> Response:
        view = profile_view(name, settings)
        limit = max(1, min(limit, 200))
        win_key = window if window in TABLE_WINDOWS else None
        chart_key, chart_window = _window(window, "24h")

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
                    "chart_window": chart_key, "latest": statements.latest_snapshot_at(conn)}

        return page(request, view, "queries.html", build, monitor="the queries page")

    @app.get("/p/{name}/queries/{queryid}", response_class=HTMLResponse)
    def query_detail(request: Request, name: str, queryid: int, role: str | None = None,
                     window: str | None = None) -> Response:
        view = profile_view(name, settings)
        win_key, win = _window(window, "24h")

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
                    "page": "queries"}

        return page(request, view, "query.html", build, monitor="the query page")

    @app.get("/p/{name}/queries/{queryid}/explain", response_class=HTMLResponse)
    def query_explain(request: Request, name: str, queryid: int,
                      role: str | None = None) -> Response:
        """EXPLAIN (estimate only) of a statement known to pg_stat_statements — never of text
        sent by the browser: rolled back, with a statement_timeout, as the app role. The text
        must be one statement EXPLAIN takes, as PostgreSQL's parser reads it (refused
        otherwise), and goes over the extended protocol (``explain.explain_statement``)."""
        view = profile_view(name, settings)
        if not view.ok:
            return page(request, view, "explain.html", lambda conn: {})
        try:
            with connection(view, settings, "ops") as conn:
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

        return page(request, view, "explain.html", build, role="app")

    # ------------------------------------------------------------------ indexes
    @app.get("/p/{name}/indexes", response_class=HTMLResponse)
    def indexes_page(request: Request, name: str, advise: int = 0) -> Response:
        view = profile_view(name, settings)

        def build(conn: psycopg.Connection) -> dict[str, Any]:
            report = indexes.index_report(conn)
            ctx: dict[str, Any] = {"report": report, "advice": None, "advice_error": None,
                                   "page": "indexes",
                                   "jobs": request.app.state.jobs.recent(name)}
            if advise:
                from studyhub.ops import advisor

                try:
                    with connection(view, settings, "app") as app_conn:
                        app_conn.autocommit = False
                        ctx["advice"] = advisor.advise(app_conn)
                    advisor.attach_advice(report, ctx["advice"])
                except (StudyhubError, psycopg.Error) as exc:
                    ctx["advice_error"] = first_line(exc)
            return ctx

        return page(request, view, "indexes.html", build)

    @app.get("/p/{name}/indexes/create", response_class=HTMLResponse)
    def create_index_confirm(request: Request, name: str, table: str,
                             columns: str, index: str | None = None) -> Response:
        view = profile_view(name, settings)
        cols = [c.strip() for c in columns.split(",") if c.strip()]

        def build(conn: psycopg.Connection) -> dict[str, Any]:
            # the same checks the build makes, before a "Yes, build" button is offered
            schema, tname = indexes.check_index_target(conn, table, cols)
            iname = index or indexes.index_name(tname, cols)
            statement = indexes.create_index_sql(schema, tname, cols, iname).as_string(None)
            return dict(page="indexes", table=f"{schema}.{tname}", columns=cols, index=iname,
                        statement=statement + ";", allowed=view.can_act,
                        refused=view.actions_refused)

        return page(request, view, "confirm_index.html", build)

    @app.post("/p/{name}/indexes/create")
    async def create_index(request: Request, name: str) -> Response:
        view = profile_view(name, settings)
        form = await request.form()
        if not view.can_act:
            return render(request, "error.html", view, status=403,
                          error=view.actions_refused or "actions are disabled (nothing was done)")
        cols = [c.strip() for c in str(form.get("columns") or "").split(",") if c.strip()]
        try:
            job = request.app.state.jobs.start(view.profile, str(form.get("table") or ""), cols,
                                               str(form.get("index") or "") or None,
                                               _client(request), settings.database)
        except StudyhubError as exc:
            return render(request, "error.html", view, status=400, error=str(exc))
        return RedirectResponse(f"/p/{name}/jobs/{job.id}", status_code=303)

    @app.get("/p/{name}/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(request: Request, name: str, job_id: str) -> Response:
        view = profile_view(name, settings)
        job = request.app.state.jobs.get(job_id)
        if job is None or job.profile != name:
            return render(request, "error.html", view, status=404, error=f"no job {job_id}")
        return render(request, "job.html", view, page="indexes", job=job)

    # ------------------------------------------------------------------ live
    @app.get("/p/{name}/live", response_class=HTMLResponse)
    def live(request: Request, name: str, sort: str = "blocking", filter: str | None = None,
             idle: int = 0, by: str = "state") -> Response:
        from studyhub.cli.top import SORTS, sort_sessions

        view = profile_view(name, settings)
        if sort not in SORTS:
            sort = "blocking"

        def build(conn: psycopg.Connection) -> dict[str, Any]:
            prev_store = request.app.state.top_previous
            prev = prev_store.get(name)
            if prev is not None and (datetime.now(timezone.utc) - prev.counters.measured_at
                                     ).total_seconds() > TOP_PREVIOUS_MAX_AGE_S:
                prev = None
            if prev is not None and prev.database != conn.info.dbname:
                prev = None
            snap = activity.top_snapshot(conn, prev, include_idle=bool(idle))
            prev_store[name] = snap
            rows = sort_sessions(snap, sort, filter)
            blockers = {b for s in snap.sessions for b in s.blocked_by}
            tree = activity.blocking_tree(conn)
            conns = activity.connection_report(conn, by, view.profile)
            replication = activity.replication_report(view.profile, conn)
            return {"snap": snap, "rows": rows, "blockers": blockers, "tree": tree,
                    "conns": conns, "replication": replication, "sort": sort, "sorts": SORTS,
                    "filter": filter or "", "idle": idle, "by": by,
                    "groupings": tuple(activity.GROUP_KEYS), "page": "live"}

        return page(request, view, "live.html", build, monitor="the live activity page")

    @app.get("/p/{name}/live/{action}/{pid}", response_class=HTMLResponse)
    def signal_confirm(request: Request, name: str, action: str, pid: int) -> Response:
        view = profile_view(name, settings)
        if action not in emergency.ACTIONS:
            return render(request, "error.html", view, status=404, error=f"no action {action!r}")

        def build(conn: psycopg.Connection) -> dict[str, Any]:
            # the operator picks the exact PID from the live list, which spans databases
            targets = emergency.plan_signal(conn, [pid], other_databases=True)
            session = next((s for s in activity.sessions(conn) if s.pid == pid), None)
            return {"action": action, "target": targets[0], "session": session,
                    "allowed": view.can_act, "refused": view.actions_refused, "page": "live"}

        return page(request, view, "confirm_signal.html", build,
                    monitor="cancel or terminate")

    @app.post("/p/{name}/live/{action}/{pid}")
    async def signal(request: Request, name: str, action: str, pid: int) -> Response:
        view = profile_view(name, settings)
        form = await request.form()
        back = RedirectResponse(f"/p/{name}/live", status_code=303)
        if action not in emergency.ACTIONS:
            return render(request, "error.html", view, status=404, error=f"no action {action!r}")
        if not view.can_act:
            return render(request, "error.html", view, status=403,
                          error=view.actions_refused or "actions are disabled (nothing was done)")
        try:
            with connection(view, settings, "ops") as conn:
                emergency.ensure_can_signal(conn)
                targets = emergency.plan_signal(conn, [pid], other_databases=True)
                expected = str(form.get("backend_start") or "")
                seen = targets[0].backend_start.isoformat() if targets[0].backend_start else ""
                if expected != seen:
                    raise RefusedError(f"PID {pid} is now a different session than the one you "
                                       "confirmed (nothing was changed)")
                outcome = emergency.signal(conn, targets, action, profile=view.name,
                                           audit_extra={"via": "dashboard",
                                                        "client": _client(request)})[0]
        except RefusedError as exc:
            flash(request, str(exc), "error")
            return back
        except StudyhubError as exc:
            flash(request, f"{action} {pid}: {exc}", "error")
            return back
        except psycopg.Error as exc:
            flash(request, f"{action} {pid}: {first_line(exc)}", "error")
            return back
        flash(request, f"{action} {pid}: {outcome.result}", "ok" if outcome.ok else "error")
        return back

    # ------------------------------------------------------------------ space
    @app.get("/p/{name}/space", response_class=HTMLResponse)
    def space_page(request: Request, name: str, window: str | None = None) -> Response:
        view = profile_view(name, settings)
        win_key, win = _window(window, "7d")

        def build(conn: psycopg.Connection) -> dict[str, Any]:
            sizes = space.table_sizes(conn)
            defs = sorted(indexes.index_definitions(conn), key=lambda d: -d.size_bytes)
            history = space.size_history(conn, datetime.now(timezone.utc) - win)
            biggest = sorted(history.tables, key=lambda t: -t.last_bytes)[:GROWTH_SERIES]
            growing = [t for t in history.tables
                       if len(t.points) > 1 and t.growth_bytes][:GROWTH_BARS]
            return {"sizes": sizes, "index_defs": defs[:25], "history": history,
                    "database_series": [charts.Series(sizes.database, [
                        (p.captured_at, p.total_bytes) for p in history.database_points])],
                    "growth_series": [charts.Series(_table_label(t.schema, t.table), [
                        (p.captured_at, p.total_bytes) for p in t.points]) for t in biggest],
                    "growth_bars": [(_table_label(t.schema, t.table), t.growth_bytes)
                                    for t in growing],
                    "growth_by_table": {(t.schema, t.table): t for t in history.tables},
                    "window": win_key, "windows": WINDOWS, "page": "space"}

        return page(request, view, "space.html", build)

    # ------------------------------------------------------------------ backups, privacy
    @app.get("/p/{name}/backups", response_class=HTMLResponse)
    def backups_page(request: Request, name: str) -> Response:
        view = profile_view(name, settings)
        if not view.ok:
            return render(request, "unavailable.html", view, status=503, error=view.error,
                          page="backups")
        return render(request, "backups.html", view, page="backups",
                      **optional.backups_context(view.profile))

    @app.get("/p/{name}/privacy", response_class=HTMLResponse)
    def privacy_page(request: Request, name: str) -> Response:
        view = profile_view(name, settings)
        if optional.privacy is None:
            return render(request, "privacy.html", view, page="privacy", available=False,
                          why=optional.privacy_missing)
        return page(request, view, "privacy.html",
                    lambda conn: {"page": "privacy", "available": True,
                                  **optional.privacy_context(conn, view, settings)})
