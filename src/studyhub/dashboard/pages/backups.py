"""``/p/NAME/backups``: the provider's backups and recoverable window (``ops.cluster``:
DigitalOcean's API, or the local base backups and WAL archive), our verified logical backup
sets of this profile (``ops.backup``) with their verification and age, the newest set's age
per target and the last restore drills, graded by the doctor's thresholds
(``health.backup_age_check``, ``health.restore_drill_check``). Only the drills need a
database connection (ops role: ``ops.backup_drills``): without one the rest still shows."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response

import psycopg

from studyhub.connect import first_line
from studyhub.dashboard.context import ProfileView, connection
from studyhub.dashboard.render import profile_view, render, settings_of
from studyhub.errors import StudyhubError
from studyhub.ops import backup, cluster, health
from studyhub.profiles import Profile
from studyhub.serving import DashboardSettings

DRILLS_SHOWN = 10

def _age_s(iso_time: str | None) -> float | None:
    if not iso_time:
        return None
    try:
        when = datetime.fromisoformat(iso_time)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - when).total_seconds()


def backups_context(profile: Profile) -> dict[str, Any]:
    ctx: dict[str, Any] = {"cluster": None, "cluster_error": None, "sets": None,
                           "leftovers": [], "backup_dir": None}
    try:
        ctx["cluster"] = cluster.backend_for(profile).backups()
    except StudyhubError as exc:
        ctx["cluster_error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - an API or tool failure is shown, not raised
        ctx["cluster_error"] = first_line(exc)
    if ctx["cluster"] is not None and ctx["cluster"].backups:
        newest = max(b.finished_at or b.created_at for b in ctx["cluster"].backups)
        ctx["cluster_newest_age_s"] = (datetime.now(timezone.utc) - newest).total_seconds()
    ctx["backup_dir"] = str(backup.default_backup_dir())
    listed = backup.list_sets()
    ctx["sets"] = [(s, _age_s(s.created_at), _age_s((s.verified or {}).get("time")))
                   for s in listed if s.status == "complete" and s.profile == profile.name]
    ctx["leftovers"] = [s for s in listed if s.status != "complete"]
    return ctx


def drills_context(view: ProfileView, settings: DashboardSettings) -> dict[str, Any]:
    """The newest set's age per target (files: no connection) and the last restore drills
    (the database shown, as the ops role), graded as the doctor grades them."""
    assert view.profile is not None
    profile = view.profile
    database = settings.database or profile.database
    ctx: dict[str, Any] = {"backup_age": None, "drill_check": None, "drills": None,
                           "drills_error": None, "drills_database": database}
    try:
        limits = health.thresholds()
    except StudyhubError as exc:
        ctx["drills_error"] = str(exc)
        return ctx
    ctx["backup_age"] = health.backup_age_check(profile, database, limits)
    try:
        with connection(view, settings, "ops") as conn:
            ctx["drill_check"] = health.restore_drill_check(conn, profile, database, limits)
            ctx["drills"] = backup.recent_drills(conn, profile.name, database, DRILLS_SHOWN)
    except backup.DrillsUnavailable as exc:
        ctx["drills_error"] = str(exc)
    except (StudyhubError, psycopg.Error) as exc:
        ctx["drills_error"] = first_line(exc)
    return ctx


def backups_page(request: Request, name: str) -> Response:
    view = profile_view(request, name)
    if not view.ok:
        return render(request, "unavailable.html", view, status=503, error=view.error,
                      page="backups")
    return render(request, "backups.html", view, page="backups",
                  **backups_context(view.profile),
                  **drills_context(view, settings_of(request)))


def install(app: FastAPI) -> None:
    """Add this page's routes to the app (under its app-wide CSRF check)."""
    app.get("/p/{name}/backups", response_class=HTMLResponse)(backups_page)
