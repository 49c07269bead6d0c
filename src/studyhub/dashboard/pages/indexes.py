"""``/p/NAME/indexes``: index findings, with the advisor's recommendations on request;
``/p/NAME/indexes/create``: the confirmation (the plan, checked) and the build, started as a
job; ``/p/NAME/jobs/ID``: the job's progress."""

from __future__ import annotations

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
from studyhub.errors import StudyhubError
from studyhub.ops import advisor, indexes

def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def indexes_page(request: Request, name: str, advise: int = 0) -> Response:
    view = profile_view(request, name)

    def build(conn: psycopg.Connection) -> dict[str, Any]:
        report = indexes.index_report(conn)
        ctx: dict[str, Any] = {"report": report, "advice": None, "advice_error": None,
                               "page": "indexes", "jobs": request.app.state.jobs.recent(name)}
        if advise:
            try:
                with connection(view, settings_of(request), "app") as app_conn:
                    app_conn.autocommit = False
                    ctx["advice"] = advisor.advise(app_conn)
                advisor.attach_advice(report, ctx["advice"])
            except (StudyhubError, psycopg.Error) as exc:
                ctx["advice_error"] = first_line(exc)
        return ctx

    return run_page(request, view, "indexes.html", build)


def create_index_confirm(request: Request, name: str, table: str,
                         columns: str, index: str | None = None) -> Response:
    view = profile_view(request, name)

    def build(conn: psycopg.Connection) -> dict[str, Any]:
        # the same checks the build makes, before a "Yes, build" button is offered
        plan = indexes.plan_index(conn, table, _columns(columns), index)
        return dict(page="indexes", table=plan.table_sql, columns=plan.columns,
                    index=plan.index, statement=plan.statement + ";", allowed=view.can_act,
                    refused=view.actions_refused)

    return run_page(request, view, "confirm_index.html", build)


async def create_index(request: Request, name: str) -> Response:
    view = profile_view(request, name)
    form = await request.form()
    refused = refuse_action(request, view)
    if refused is not None:
        return refused
    settings = settings_of(request)
    try:
        with connection(view, settings, "app") as conn:
            plan = indexes.plan_index(conn, str(form.get("table") or ""),
                                      _columns(str(form.get("columns") or "")),
                                      str(form.get("index") or "") or None)
        job = request.app.state.jobs.start(view.profile, plan, audit_client(request),
                                           settings.database)
    except StudyhubError as exc:
        return render(request, "error.html", view, status=400, error=str(exc))
    except psycopg.Error as exc:
        return render(request, "error.html", view, status=500, error=first_line(exc))
    return RedirectResponse(f"/p/{name}/jobs/{job.id}", status_code=303)


def job_page(request: Request, name: str, job_id: str) -> Response:
    view = profile_view(request, name)
    job = request.app.state.jobs.get(job_id)
    if job is None or job.profile != name:
        return render(request, "error.html", view, status=404, error=f"no job {job_id}")
    return render(request, "job.html", view, page="indexes", job=job)


def install(app: FastAPI) -> None:
    """Add this page's routes to the app (under its app-wide CSRF check)."""
    app.get("/p/{name}/indexes", response_class=HTMLResponse)(indexes_page)
    app.get("/p/{name}/indexes/create", response_class=HTMLResponse)(create_index_confirm)
    app.post("/p/{name}/indexes/create")(create_index)
    app.get("/p/{name}/jobs/{job_id}", response_class=HTMLResponse)(job_page)
