"""``/p/NAME/``: every doctor check with its status, value, threshold, fix and the rows behind
it."""

from __future__ import annotations

from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from studyhub.dashboard.render import profile_view, run_page
from studyhub.ops import health

def overview(request: Request, name: str) -> Response:
    view = profile_view(request, name)

    def build(conn: psycopg.Connection) -> dict[str, Any]:
        report = health.run_doctor(conn, view.profile)
        checks = {c.name: c for c in report.checks}
        return {"report": report, "checks": checks, "page": "overview"}

    return run_page(request, view, "overview.html", build)


def install(app: FastAPI) -> None:
    """Add this page's routes to the app (under its app-wide CSRF check)."""
    app.get("/p/{name}/", response_class=HTMLResponse)(overview)
