"""``/login`` and ``/logout``: the access token, compared in constant time; failed logins
counted per session (and per client address behind trusted proxies); a new session id at
login."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from studyhub.dashboard.render import render, settings_of
from studyhub.dashboard.security import (
    SessionStore,
    constant_time_equal,
    login_address,
    safe_next,
    session_of,
)
from studyhub.serving import ForwardedError

def login_form(request: Request, next: str = "/") -> Response:
    if settings_of(request).token is None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", next=safe_next(next))


async def login(request: Request) -> Response:
    token = settings_of(request).token
    if token is None:
        return RedirectResponse("/", status_code=303)
    store: SessionStore = request.app.state.sessions
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
    if not constant_time_equal(given, token.get_secret_value()):
        store.login_failed(session, address)
        return render(request, "login.html", next=target, status=401, error="wrong token")
    store.drop(session.id)
    request.state.session = store.new(authenticated=True)  # a new id: no fixation
    return RedirectResponse(target, status_code=303)


def logout(request: Request) -> Response:
    store: SessionStore = request.app.state.sessions
    store.drop(session_of(request).id)
    request.state.session = store.new()
    return RedirectResponse("/login" if settings_of(request).token else "/", status_code=303)


def install(app: FastAPI) -> None:
    """Add this page's routes to the app (under its app-wide CSRF check)."""
    app.get("/login", response_class=HTMLResponse)(login_form)
    app.post("/login", response_class=HTMLResponse)(login)
    app.post("/logout")(logout)
