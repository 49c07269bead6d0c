"""What every page shares: the templates and their filters, the ``Renderer`` (the profile
switcher, the page tabs, flash messages, the CSRF token, the time the page took), the profile a
URL names (``profile_view``) and ``run_page``: connect, gather the page's typed results, render
them — or render why not."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import psycopg
from fastapi import Request
from fastapi.exceptions import HTTPException
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from studyhub.connect import ConnectError, first_line
from studyhub.dashboard import charts
from studyhub.dashboard.context import ProfileView, all_profiles, connection, view_profile
from studyhub.dashboard.security import client_address, session_of
from studyhub.errors import ConfigError, RefusedError, StudyhubError
from studyhub.humanize import human_bytes, human_s, short
from studyhub.ops import activity, capture, indexes
from studyhub.profiles import PROFILE_NAMES
from studyhub.serving import DashboardSettings, ForwardedError

HERE = Path(__file__).resolve().parent
PAGES = (("overview", "Overview", ""), ("queries", "Queries", "queries"),
         ("indexes", "Indexes", "indexes"), ("live", "Live", "live"),
         ("space", "Space", "space"), ("backups", "Backups", "backups"),
         ("privacy", "Privacy", "privacy"))
WINDOWS = {"1h": timedelta(hours=1), "6h": timedelta(hours=6), "24h": timedelta(days=1),
           "7d": timedelta(days=7), "30d": timedelta(days=30)}


def _templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    env = t.env
    env.autoescape = True
    env.filters.update(
        bytes=human_bytes,
        seconds=human_s,
        short=short,
        num=lambda v: "-" if v is None else f"{v:,.0f}" if isinstance(v, (int, float)) else v,
        ms=lambda v: "-" if v is None else f"{v:,.2f} ms" if v < 100 else f"{v:,.0f} ms",
        pct=lambda v: "-" if v is None else f"{v:.1f}%",
        ts=lambda t: "-" if t is None else
        t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        ago=lambda t: "-" if t is None else human_s(
            (datetime.now(timezone.utc) - t).total_seconds()) + " ago",
        # epoch seconds (the live page's time slider) as a UTC time / as ISO 8601 for ?at=
        epoch_ts=lambda s: datetime.fromtimestamp(s, timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC"),
        epoch_iso=lambda s: datetime.fromtimestamp(s, timezone.utc).isoformat(),
    )
    env.globals.update(line_chart=charts.line_chart, bar_chart=charts.bar_chart,
                       sparkline=charts.sparkline, Series=charts.Series,
                       bytes_axis=human_bytes,
                       ms_axis=lambda v: f"{v:,.1f}" if v < 10 else f"{v:,.0f}",
                       # a table as SQL (quoted), for links that hand it to the index build
                       table_sql=indexes.qualified_name)
    return t


class Renderer:
    """Renders pages with what every page shows: the profile switcher, the page tabs, flash
    messages, the CSRF token for forms and the time the page took."""

    def __init__(self, settings: DashboardSettings) -> None:
        self.settings = settings
        self.templates = _templates()

    def __call__(self, request: Request, template: str, view: ProfileView | None = None,
                 status: int = 200, **ctx: Any) -> HTMLResponse:
        session = session_of(request)
        flashes, session.flash = session.flash, []
        started = getattr(request.state, "started", time.monotonic())
        ctx.update(
            request=request,
            view=view,
            nav_profiles=all_profiles(self.settings),
            pages=PAGES,
            csrf_token=session.csrf_token,
            flashes=flashes,
            logged_in=self.settings.token is not None and session.authenticated,
            elapsed_ms=lambda: (time.monotonic() - started) * 1000,
            database_override=self.settings.database,
            now=datetime.now(timezone.utc),
        )
        return self.templates.TemplateResponse(request, template, ctx, status_code=status)


def settings_of(request: Request) -> DashboardSettings:
    return request.app.state.settings


def render(request: Request, template: str, view: ProfileView | None = None,
           status: int = 200, **ctx: Any) -> HTMLResponse:
    """The app's ``Renderer``."""
    renderer: Renderer = request.app.state.render
    return renderer(request, template, view, status, **ctx)


def profile_view(request: Request, name: str) -> ProfileView:
    """The profile a URL names (404 for a name that is no profile)."""
    if name not in PROFILE_NAMES:
        raise HTTPException(404, f"unknown profile {name!r}")
    return view_profile(name, settings_of(request))


def run_page(request: Request, view: ProfileView, template: str,
             build: Callable[[psycopg.Connection], dict[str, Any]], *, role: str = "ops",
             monitor: str | None = None) -> Response:
    """Connect as ``role``, let ``build(conn)`` gather the page's typed results, render them.
    ``monitor``: the page reads other roles' activity or statements, which without pg_monitor
    would look empty (all clear); it then shows the GRANT instead. A profile that does not
    resolve or cannot be reached renders as such (503) with the switcher intact; a refused or
    bad request shows its one line."""
    if not view.ok:
        return render(request, "unavailable.html", view, status=503, error=view.error)
    try:
        with connection(view, settings_of(request), role) as conn:
            if monitor:
                activity.require_monitor(conn, monitor)
            ctx = build(conn)
    except (ConnectError, ConfigError) as exc:
        return render(request, "unavailable.html", view, status=503, error=str(exc))
    except RefusedError as exc:
        return render(request, "error.html", view, status=403, error=str(exc))
    except StudyhubError as exc:
        return render(request, "error.html", view, status=400, error=str(exc))
    except psycopg.Error as exc:
        return render(request, "error.html", view, status=500, error=first_line(exc))
    return render(request, template, view, **ctx)


def history_freshness(request: Request, view: ProfileView,
                      conn: psycopg.Connection) -> capture.HistoryFreshness:
    """For pages that chart stored history: how old it is (their notice when it is stale)."""
    return capture.history_freshness(
        conn, stale_after_s=settings_of(request).history_stale_after_s,
        read_only=bool(view.profile and view.profile.read_only))


def pick_window(value: str | None, default: str) -> tuple[str, timedelta]:
    """A history window by its name in ``WINDOWS`` (``default`` for anything else)."""
    key = value if value in WINDOWS else default
    return key, WINDOWS[key]


def table_label(schema: str, table: str) -> str:
    return table if schema == "public" else f"{schema}.{table}"


def audit_client(request: Request) -> str | None:
    """For audit lines: the client's address (behind trusted proxies, the one they report)."""
    try:
        return client_address(request)
    except ForwardedError:
        return request.client.host if request.client else None


def refuse_action(request: Request, view: ProfileView) -> Response | None:
    """The 403 page when the profile may not act (read-only, or protected and not named when
    the dashboard started); None when it may."""
    if view.can_act:
        return None
    return render(request, "error.html", view, status=403,
                  error=view.actions_refused or "actions are disabled (nothing was done)")
