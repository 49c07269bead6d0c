"""``/p/NAME/space``: database and table sizes, the largest indexes, and growth over a stored
window (charts of the database, the largest tables and growth per table)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

from studyhub.dashboard import charts
from studyhub.dashboard.render import (
    WINDOWS,
    history_freshness,
    pick_window,
    profile_view,
    run_page,
    table_label,
)
from studyhub.ops import indexes, space

GROWTH_SERIES = 6
GROWTH_BARS = 15

def space_page(request: Request, name: str, window: str | None = None) -> Response:
    view = profile_view(request, name)
    win_key, win = pick_window(window, "7d")

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
                "growth_series": [charts.Series(table_label(t.schema, t.table), [
                    (p.captured_at, p.total_bytes) for p in t.points]) for t in biggest],
                "growth_bars": [(table_label(t.schema, t.table), t.growth_bytes)
                                for t in growing],
                "growth_by_table": {(t.schema, t.table): t for t in history.tables},
                "history_freshness": history_freshness(request, view, conn),
                "window": win_key, "windows": WINDOWS, "page": "space"}

    return run_page(request, view, "space.html", build)


def install(app: FastAPI) -> None:
    """Add this page's routes to the app (under its app-wide CSRF check)."""
    app.get("/p/{name}/space", response_class=HTMLResponse)(space_page)
