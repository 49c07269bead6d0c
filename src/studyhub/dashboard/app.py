"""The dashboard application: ``create_dashboard(settings)`` → a FastAPI app of server-rendered
pages (Jinja2) over the ops library. Separate from the StudyHub API (``studyhub.api``): it opens
no engine of its own, only a short connection per page to the profile being shown.

Pages (``/p/{profile}/…``): overview (doctor), queries (+ history and EXPLAIN), indexes
(+ advisor, create concurrently), live (sessions, blocking tree, connections; cancel and
terminate), space (sizes and growth), backups, privacy. ``/`` lists every profile.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from studyhub.humanize import human_bytes, human_s, short
from studyhub.connect import ConnectError, first_line
from studyhub.dashboard import charts, jobs, pages
from studyhub.dashboard.capture import CaptureLoop
from studyhub.dashboard.context import ProfileView, all_profiles, connection, view_profile
from studyhub.dashboard.forwarded import ForwardedError
from studyhub.dashboard.security import (
    AccessMiddleware,
    CsrfRefused,
    SessionStore,
    constant_time_equal,
    csrf_guard,
    csrf_refused_response,
    login_address,
    safe_next,
    session_of,
)
from studyhub.dashboard.settings import DashboardSettings
from studyhub.errors import ConfigError, RefusedError, StudyhubError
from studyhub.ops import health
from studyhub.profiles import PROFILE_NAMES

HERE = Path(__file__).resolve().parent
# How `studyhub dashboard` (and the tests) run uvicorn. No proxy headers: uvicorn would otherwise
# take the client address from X-Forwarded-For whenever the peer is 127.0.0.1, which anyone on
# the machine can send; the dashboard reads that header itself, and only from the proxies the
# operator named (DashboardSettings.trusted_proxies).
UVICORN_OPTIONS = {"proxy_headers": False, "server_header": False, "lifespan": "on"}
PAGES = (("overview", "Overview", ""), ("queries", "Queries", "queries"),
         ("indexes", "Indexes", "indexes"), ("live", "Live", "live"),
         ("space", "Space", "space"), ("backups", "Backups", "backups"),
         ("privacy", "Privacy", "privacy"))


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
    )
    env.globals.update(line_chart=charts.line_chart, bar_chart=charts.bar_chart,
                       sparkline=charts.sparkline, Series=charts.Series,
                       bytes_axis=human_bytes,
                       ms_axis=lambda v: f"{v:,.1f}" if v < 10 else f"{v:,.0f}")
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
            capture_status=request.app.state.capture.status.get(view.name) if view else None,
            database_override=self.settings.database,
            now=datetime.now(timezone.utc),
        )
        return self.templates.TemplateResponse(request, template, ctx, status_code=status)


def create_dashboard(settings: DashboardSettings | None = None) -> FastAPI:
    settings = settings or DashboardSettings()
    capture = CaptureLoop(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        capture.start()
        try:
            yield
        finally:
            capture.stop()

    app = FastAPI(title="StudyHub operations dashboard", lifespan=lifespan,
                  dependencies=[Depends(csrf_guard)], docs_url=None, redoc_url=None,
                  openapi_url=None)
    store = SessionStore(settings.max_sessions)
    app.state.settings = settings
    app.state.proxy_trust = settings.proxy_trust()
    app.state.sessions = store
    app.state.capture = capture
    app.state.jobs = jobs.IndexJobs()
    app.state.top_previous = {}
    render = Renderer(settings)
    app.state.render = render
    app.add_middleware(AccessMiddleware, settings=settings, store=store)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    @app.middleware("http")
    async def timing(request: Request, call_next):  # noqa: ANN001
        request.state.started = time.monotonic()
        return await call_next(request)

    @app.exception_handler(CsrfRefused)
    async def _csrf(request: Request, exc: CsrfRefused) -> Response:
        return csrf_refused_response()

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> Response:
        # a malformed query or form field: one line on the dashboard's own page, not JSON
        names = sorted({".".join(str(p) for p in e.get("loc", ())[1:]) or "request"
                        for e in exc.errors()})
        return render(request, "error.html", status=400,
                      error=f"invalid value for {', '.join(names)} (nothing was done)")

    # ------------------------------------------------------------------ login
    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str = "/") -> Response:
        if settings.token is None:
            return RedirectResponse(safe_next(next), status_code=303)
        return render(request, "login.html", next=safe_next(next))

    @app.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        if settings.token is None:
            return RedirectResponse("/", status_code=303)
        form = await request.form()
        target = safe_next(str(form.get("next") or "/"))
        session = session_of(request)
        try:
            address = login_address(request)
        except ForwardedError as exc:
            return render(request, "login.html", next=target, status=400,
                          error=f"cannot tell your address ({exc}); the token was not tried")
        if store.login_blocked(session, address):
            return render(request, "login.html", next=target, status=429,
                          error="too many failed attempts; wait a few minutes")
        given = str(form.get("token") or "")
        if not constant_time_equal(given, settings.token.get_secret_value()):
            store.login_failed(session, address)
            return render(request, "login.html", next=target, status=401,
                          error="wrong token")
        store.drop(session.id)
        request.state.session = store.new(authenticated=True)  # a new id: no fixation
        return RedirectResponse(target, status_code=303)

    @app.post("/logout")
    def logout(request: Request) -> Response:
        store.drop(session_of(request).id)
        request.state.session = store.new()
        return RedirectResponse("/login" if settings.token else "/", status_code=303)

    # ------------------------------------------------------------------ all profiles
    @app.get("/", response_class=HTMLResponse)
    def profiles_page(request: Request) -> Response:
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

    @app.get("/p/{name}")
    def profile_root(name: str) -> Response:
        return RedirectResponse(f"/p/{name}/", status_code=307)

    pages.install(app, settings, render)
    return app


def profile_view(name: str, settings: DashboardSettings) -> ProfileView:
    if name not in PROFILE_NAMES:
        raise HTTPException(404, f"unknown profile {name!r}")
    return view_profile(name, settings)


def run_page(request: Request, view: ProfileView, template: str,
             build: Callable[..., dict[str, Any]], *, role: str = "ops",
             settings: DashboardSettings) -> Response:
    """Connect as ``role``, let ``build(conn)`` gather the page's typed results, render them.
    A profile that does not resolve or cannot be reached renders as such (503) with the
    switcher intact; a refused or bad request shows its one line."""
    render: Renderer = request.app.state.render
    if not view.ok:
        return render(request, "unavailable.html", view, status=503, error=view.error)
    try:
        with connection(view, settings, role) as conn:
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

