"""The dashboard application: ``create_dashboard(settings)`` → a FastAPI app of server-rendered
pages (Jinja2) over the ops library. Separate from the StudyHub API (``studyhub.api``): it opens
no engine of its own, only a short connection per page to the profile being shown.

Pages (``/p/{profile}/…``, one module each in ``studyhub.dashboard.pages``): overview (doctor),
queries (+ history and EXPLAIN), indexes (+ advisor, create concurrently), live (sessions,
blocking tree, connections; cancel and terminate), space (sizes and growth), backups, privacy.
``/`` lists every profile. The history the pages chart is stored by ``studyhub agent``'s capture job
(``studyhub.ops.capture``), not by the dashboard; those pages say when it is stale.
``dashboard_from_environment`` is the factory ``studyhub dashboard``
starts uvicorn with (``studyhub.serving.DASHBOARD_APP``).
"""

from __future__ import annotations

import time
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from studyhub.dashboard import jobs
from studyhub.dashboard import pages
from studyhub.dashboard.render import HERE, Renderer, render
from studyhub.dashboard.security import (
    AccessMiddleware,
    CsrfRefused,
    SessionStore,
    csrf_guard,
    csrf_refused_response,
)
from studyhub.serving import DashboardSettings


def create_dashboard(settings: DashboardSettings | None = None) -> FastAPI:
    settings = settings or DashboardSettings()
    app = FastAPI(title="StudyHub operations dashboard",
                  dependencies=[Depends(csrf_guard)], docs_url=None, redoc_url=None,
                  openapi_url=None)
    store = SessionStore(settings.max_sessions)
    app.state.settings = settings
    app.state.proxy_trust = settings.proxy_trust()
    app.state.sessions = store
    app.state.jobs = jobs.IndexJobs()
    app.state.top_previous = {}
    app.state.render = Renderer(settings)
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

    pages.install(app)
    return app


def dashboard_from_environment() -> FastAPI:
    """The app ``studyhub dashboard`` runs: its settings from the environment
    (``DashboardSettings.from_environment``), the token from its own variable or 0600 file."""
    return create_dashboard(DashboardSettings.from_environment())
