"""``/p/NAME/live``: TPS, cache hit, sessions (sorted and filtered as ``studyhub top`` does),
the blocking tree, connections and replication; ``/p/NAME/live/ACTION/PID``: the confirmation
of a cancel or terminate and the signal itself, refused when the PID now belongs to another
session than the one confirmed."""

from __future__ import annotations

from dataclasses import dataclass
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
from studyhub.ops import activity, emergency, history, replication

TOP_PREVIOUS_MAX_AGE_S = 300

def live(request: Request, name: str, sort: str = "blocking", filter: str | None = None,
         idle: int = 0, by: str = "state", at: str | None = None,
         at_s: float | None = None) -> Response:
    """The live view, or with ``at`` (ISO 8601; ``at_s``: epoch seconds, from the time slider)
    a past moment replayed from the agent's activity history."""
    view = profile_view(request, name)
    if sort not in activity.SORTS:
        sort = "blocking"

    def replay(conn: psycopg.Connection) -> dict[str, Any]:
        when = (datetime.fromtimestamp(at_s, timezone.utc) if at_s is not None
                else history.parse_when(at or "", what="time"))
        m = history.moment(conn, when)
        snap = m.as_top(conn.info.dbname)
        rows = activity.sort_sessions(snap, sort, filter)
        return {"snap": snap, "rows": rows, "blockers": {b for s in snap.sessions
                                                         for b in s.blocked_by},
                "tree": m.tree, "moment": m, "slider": _slider(conn, m.taken_at),
                "sort": sort, "sorts": activity.SORTS, "filter": filter or "", "idle": idle,
                "by": by, "groupings": tuple(activity.GROUP_KEYS), "page": "live"}

    def build(conn: psycopg.Connection) -> dict[str, Any]:
        if at is not None or at_s is not None:
            return replay(conn)
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
                "conns": conns, "replication": replica_report, "moment": None,
                "slider": _slider(conn, None), "sort": sort,
                "sorts": activity.SORTS, "filter": filter or "", "idle": idle, "by": by,
                "groupings": tuple(activity.GROUP_KEYS), "page": "live"}

    return run_page(request, view, "live.html", build, monitor="the live activity page")


@dataclass
class Slider:
    """The time slider over the activity history: its range (epoch seconds), the step (the
    sampling interval seen) and the position shown."""

    first_s: int
    last_s: int
    value_s: int
    step_s: int
    snapshots: int


def _slider(conn: psycopg.Connection, shown: datetime | None) -> Slider | None:
    """None when the history is empty or not readable here (the live view still works)."""
    try:
        span = history.history_range(conn)
    except StudyhubError:
        return None
    if not span.snapshots:
        return None
    first, last = int(span.first_at.timestamp()), int(span.last_at.timestamp()) + 1
    step = max(1, round((last - first) / (span.snapshots - 1))) if span.snapshots > 1 else 1
    return Slider(first, last, int((shown or span.last_at).timestamp()), step, span.snapshots)


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
