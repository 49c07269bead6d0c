"""``/p/NAME/live``: TPS, cache hit, sessions (sorted and filtered as ``studyhub top`` does),
the blocking tree, connections and replication; ``/p/NAME/live/ACTION/PID``: the confirmation
of a cancel or terminate and the signal itself, refused when the PID now belongs to another
session than the one confirmed."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from studyhub.connect import first_line
from studyhub.dashboard.context import connection
from studyhub.dashboard.render import (
    audit_client,
    profile_view,
    refuse_action,
    render,
    run_page,
    settings_of,
)
from studyhub.dashboard.security import flash
from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops import activity, emergency, replication

TOP_PREVIOUS_MAX_AGE_S = 300

def live(request: Request, name: str, sort: str = "blocking", filter: str | None = None,
         idle: int = 0, by: str = "state") -> Response:
    view = profile_view(request, name)
    if sort not in activity.SORTS:
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
        rows = activity.sort_sessions(snap, sort, filter)
        blockers = {b for s in snap.sessions for b in s.blocked_by}
        tree = activity.blocking_tree(conn)
        conns = activity.connection_report(conn, by, view.profile)
        replica_report = replication.replication_report(view.profile, conn)
        return {"snap": snap, "rows": rows, "blockers": blockers, "tree": tree,
                "conns": conns, "replication": replica_report, "sort": sort,
                "sorts": activity.SORTS, "filter": filter or "", "idle": idle, "by": by,
                "groupings": tuple(activity.GROUP_KEYS), "page": "live"}

    return run_page(request, view, "live.html", build, monitor="the live activity page")


def signal_confirm(request: Request, name: str, action: str, pid: int) -> Response:
    view = profile_view(request, name)
    if action not in emergency.ACTIONS:
        return render(request, "error.html", view, status=404, error=f"no action {action!r}")

    def build(conn: psycopg.Connection) -> dict[str, Any]:
        # the operator picks the exact PID from the live list, which spans databases
        targets = emergency.plan_signal(conn, [pid], other_databases=True)
        session = next((s for s in activity.sessions(conn) if s.pid == pid), None)
        return {"action": action, "target": targets[0], "session": session,
                "allowed": view.can_act, "refused": view.actions_refused, "page": "live"}

    return run_page(request, view, "confirm_signal.html", build, monitor="cancel or terminate")


async def signal(request: Request, name: str, action: str, pid: int) -> Response:
    view = profile_view(request, name)
    form = await request.form()
    back = RedirectResponse(f"/p/{name}/live", status_code=303)
    if action not in emergency.ACTIONS:
        return render(request, "error.html", view, status=404, error=f"no action {action!r}")
    refused = refuse_action(request, view)
    if refused is not None:
        return refused
    try:
        with connection(view, settings_of(request), "ops") as conn:
            emergency.ensure_can_signal(conn)
            targets = emergency.plan_signal(conn, [pid], other_databases=True)
            emergency.require_same_session(targets[0], str(form.get("backend_start") or ""))
            outcome = emergency.signal(conn, targets, action, profile=view.name,
                                       audit_extra={"via": "dashboard",
                                                    "client": audit_client(request)})[0]
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


def install(app: FastAPI) -> None:
    """Add this page's routes to the app (under its app-wide CSRF check)."""
    app.get("/p/{name}/live", response_class=HTMLResponse)(live)
    app.get("/p/{name}/live/{action}/{pid}", response_class=HTMLResponse)(signal_confirm)
    app.post("/p/{name}/live/{action}/{pid}")(signal)
