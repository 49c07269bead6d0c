"""``/p/NAME/privacy``: the personal-data policy (ops role), the erasure ledger as counts (app
role: only it may read the ledger) and the privacy lines of this machine's audit log, counted
by action. Counts only: no ids, no pseudonyms, no names."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from studyhub.audit import read_audit
from studyhub.connect import first_line
from studyhub.dashboard.context import ProfileView, connection
from studyhub.dashboard.render import profile_view, run_page, settings_of
from studyhub.errors import StudyhubError
from studyhub.ops import privacy
from studyhub.serving import DashboardSettings

def privacy_context(conn: psycopg.Connection, view: ProfileView,
                    settings: DashboardSettings) -> dict[str, Any]:
    ctx: dict[str, Any] = {"policy": None, "policy_error": None, "erasures": None,
                           "erasures_error": None}
    try:
        ctx["policy"] = privacy.policy_report(conn)
    except (StudyhubError, psycopg.Error) as exc:
        ctx["policy_error"] = first_line(exc)
    try:
        with connection(view, settings, "app") as app_conn:
            ctx["erasures"] = privacy.erasure_audit(app_conn)
    except (StudyhubError, psycopg.Error) as exc:
        ctx["erasures_error"] = first_line(exc)
    since = datetime.now(timezone.utc) - timedelta(days=30)
    counts: dict[str, list[int]] = {}
    for line in read_audit():
        action = str(line.get("action", ""))
        if line.get("profile") != view.name or not action.startswith("privacy."):
            continue
        total_recent = counts.setdefault(action, [0, 0])
        total_recent[0] += 1
        try:
            if datetime.fromisoformat(str(line.get("time"))) >= since:
                total_recent[1] += 1
        except ValueError:
            pass
    ctx["audit_counts"] = sorted((a, n[0], n[1]) for a, n in counts.items())
    return ctx


def privacy_page(request: Request, name: str) -> Response:
    view = profile_view(request, name)
    return run_page(request, view, "privacy.html",
                    lambda conn: {"page": "privacy",
                                  **privacy_context(conn, view, settings_of(request))})


def install(app: FastAPI) -> None:
    """Add this page's routes to the app (under its app-wide CSRF check)."""
    app.get("/p/{name}/privacy", response_class=HTMLResponse)(privacy_page)
