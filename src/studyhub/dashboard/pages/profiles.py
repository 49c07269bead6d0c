"""``/``: every profile with its doctor status (computed in parallel); ``/p/NAME`` goes to the
profile's overview."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from studyhub.connect import first_line
from studyhub.dashboard.context import ProfileView, all_profiles, connection
from studyhub.dashboard.render import render, settings_of
from studyhub.errors import StudyhubError
from studyhub.ops import health
from studyhub.profiles import PROFILE_NAMES

def profiles_page(request: Request) -> Response:
    settings = settings_of(request)
    views = all_profiles(settings)

    def status_of(view: ProfileView) -> tuple[str, Any]:
        if not view.ok:
            return view.name, None
        try:
            with connection(view, settings) as conn:
                return view.name, health.run_doctor(conn, view.profile)
        except (StudyhubError, psycopg.Error) as exc:
            return view.name, first_line(exc)

    with ThreadPoolExecutor(max_workers=len(PROFILE_NAMES)) as pool:
        reports = dict(pool.map(status_of, views))
    return render(request, "profiles.html", None, views=views, reports=reports,
                  default_profile=settings.default_profile)


def profile_root(name: str) -> Response:
    return RedirectResponse(f"/p/{name}/", status_code=307)


def install(app: FastAPI) -> None:
    """Add this page's routes to the app (under its app-wide CSRF check)."""
    app.get("/", response_class=HTMLResponse)(profiles_page)
    app.get("/p/{name}")(profile_root)
