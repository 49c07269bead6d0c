"""Sessions, CSRF and access.

- Every browser gets a session (an unguessable id in an HttpOnly, SameSite=Strict cookie) that
  holds its CSRF token. Every request that is not GET/HEAD must carry that token (form field
  ``csrf_token`` or header ``X-CSRF-Token``); without it the request is refused with 403 before
  any handler runs — nothing happens.
- With an access token configured (required to listen beyond loopback), every page except the
  login form needs a session that logged in with it; tokens are compared in constant time and
  the session id is replaced at login.
- Without a token the dashboard only answers requests whose Host is a loopback name, so a web
  page elsewhere cannot read it through DNS rebinding.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from studyhub.dashboard.settings import DashboardSettings, is_loopback

COOKIE = "studyhub_dashboard"
SAFE_METHODS = ("GET", "HEAD")
OPEN_PATHS = ("/login", "/static/")
LOGIN_FAILURES_ALLOWED = 10
LOGIN_FAILURE_WINDOW_S = 300.0

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass
class Session:
    id: str
    csrf_token: str
    authenticated: bool = False
    flash: list[tuple[str, str]] = field(default_factory=list)  # (level, message)
    created: float = field(default_factory=time.monotonic)


def constant_time_equal(a: str, b: str) -> bool:
    """Compare secrets without leaking where (or, through hashing, how long) they differ."""
    return hmac.compare_digest(hashlib.sha256(a.encode()).digest(),
                               hashlib.sha256(b.encode()).digest())


class SessionStore:
    """In-memory sessions, the oldest dropped beyond ``max_sessions``."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {}

    def new(self, authenticated: bool = False) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), authenticated)
        with self._lock:
            self._sessions[s.id] = s
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            return self._sessions.get(sid)

    def drop(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def login_blocked(self, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if now - t < LOGIN_FAILURE_WINDOW_S]
            self._failures[client] = recent
            return len(recent) >= LOGIN_FAILURES_ALLOWED

    def login_failed(self, client: str) -> None:
        with self._lock:
            self._failures.setdefault(client, []).append(time.monotonic())


def session_of(request: Request) -> Session:
    return request.state.session


def flash(request: Request, message: str, level: str = "info") -> None:
    session_of(request).flash.append((level, message))


def set_session_cookie(response: Response, session: Session) -> None:
    response.set_cookie(COOKIE, session.id, httponly=True, samesite="strict", path="/")


class AccessMiddleware(BaseHTTPMiddleware):
    """Host check, session cookie, login requirement and security headers, in that order."""

    def __init__(self, app: Any, settings: DashboardSettings, store: SessionStore) -> None:
        super().__init__(app)
        self.settings = settings
        self.store = store

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await self._dispatch(request, call_next)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    async def _dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if self.settings.token is None:
            if not is_loopback(host_name(request.headers.get("host", ""))):
                return PlainTextResponse("unexpected Host header: without an access token the "
                                         "dashboard answers only on loopback names", 400)
        session = self.store.get(request.cookies.get(COOKIE))
        fresh = session is None
        if session is None:
            session = self.store.new()
        request.state.session = session
        path = request.url.path
        if (self.settings.token is not None and not session.authenticated
                and not path.startswith(OPEN_PATHS)):
            if request.method in SAFE_METHODS:
                target = path + (f"?{request.url.query}" if request.url.query else "")
                response: Response = RedirectResponse(
                    "/login?" + _urlencode({"next": target}), status_code=303)
            else:
                response = PlainTextResponse("log in first (nothing was done)", 401)
        else:
            response = await call_next(request)
        current: Session = request.state.session  # login replaces it
        if fresh or current is not session:
            set_session_cookie(response, current)
        return response


def host_name(header: str) -> str:
    """``127.0.0.1:8100`` → ``127.0.0.1``; ``[::1]:8100`` → ``::1``."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _urlencode(params: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(params)


class CsrfRefused(Exception):
    pass


async def csrf_guard(request: Request) -> None:
    """App-wide dependency: any request that is not GET/HEAD needs this session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    session: Session | None = getattr(request.state, "session", None)
    sent = request.headers.get("x-csrf-token")
    if sent is None:
        content_type = request.headers.get("content-type", "")
        if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
            form = await request.form()
            value = form.get("csrf_token")
            sent = value if isinstance(value, str) else None
    if session is None or not sent or not constant_time_equal(sent, session.csrf_token):
        raise CsrfRefused()


def csrf_refused_response() -> Response:
    return PlainTextResponse("CSRF token missing or wrong: request refused, nothing was done", 403)


def safe_next(target: str | None) -> str:
    """Only same-site paths after login (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
