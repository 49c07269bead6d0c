"""Sessions, CSRF and access.

- Every browser gets a session (an unguessable id in an HttpOnly, SameSite=Strict cookie) that
  holds its CSRF token. Every request that is not GET/HEAD must carry that token (form field
  ``csrf_token`` or header ``X-CSRF-Token``); without it the request is refused with 403 before
  any handler runs — nothing happens.
- With an access token configured (required to listen beyond loopback), every page except the
  login form needs a session that logged in with it; tokens are compared in constant time and
  the session id is replaced at login.
- Failed logins are counted per session (ten in five minutes lock that session, not anyone
  else's) and, only when the operator named the reverse proxies in front
  (``trusted_proxies``), also per client address as those proxies report it. A client without
  a session cannot try the token at all: the login form's CSRF token belongs to a session.
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
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import PlainTextResponse, RedirectResponse
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response

from studyhub.serving import DashboardSettings, ProxyTrust, is_loopback

COOKIE = "studyhub_dashboard"
SAFE_METHODS = ("GET", "HEAD")
OPEN_PATHS = ("/login", "/static/")
LOGIN_FAILURES_ALLOWED = 10  # per session, and per client address behind trusted proxies
LOGIN_FAILURE_WINDOW_S = 300.0
MAX_TRACKED_ADDRESSES = 10_000

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
    login_failures: list[float] = field(default_factory=list)  # monotonic times


def constant_time_equal(a: str, b: str) -> bool:
    """Compare secrets without leaking where (or, through hashing, how long) they differ."""
    return hmac.compare_digest(hashlib.sha256(a.encode()).digest(),
                               hashlib.sha256(b.encode()).digest())


class SessionStore:
    """In-memory sessions and recent failed logins per client address (the least recently
    failing dropped beyond MAX_TRACKED_ADDRESSES).

    Sessions that logged in and sessions that did not are kept apart, each group's oldest
    dropped beyond ``max_sessions``: anyone can make anonymous sessions by the thousand (one
    GET each), and they must never push out an operator's logged-in session."""

    def __init__(self, max_sessions: int) -> None:
        self.max_sessions = max_sessions
        self._anonymous: OrderedDict[str, Session] = OrderedDict()
        self._authenticated: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()
        self._address_failures: OrderedDict[str, list[float]] = OrderedDict()

    def new(self, authenticated: bool = False) -> Session:
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), authenticated)
        group = self._authenticated if authenticated else self._anonymous
        with self._lock:
            group[s.id] = s
            while len(group) > self.max_sessions:
                group.popitem(last=False)
        return s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        with self._lock:
            return self._authenticated.get(sid) or self._anonymous.get(sid)

    def drop(self, sid: str) -> None:
        with self._lock:
            self._authenticated.pop(sid, None)
            self._anonymous.pop(sid, None)

    def login_blocked(self, session: Session, address: str | None) -> bool:
        """Ten failures within the window from this session — or from this address, when the
        address is known (``None``: not counted per address)."""
        now = time.monotonic()
        with self._lock:
            session.login_failures[:] = _recent(session.login_failures, now)
            if len(session.login_failures) >= LOGIN_FAILURES_ALLOWED:
                return True
            if address is None or address not in self._address_failures:
                return False
            recent = _recent(self._address_failures[address], now)
            if recent:
                self._address_failures[address] = recent
            else:
                del self._address_failures[address]
            return len(recent) >= LOGIN_FAILURES_ALLOWED

    def login_failed(self, session: Session, address: str | None) -> None:
        now = time.monotonic()
        with self._lock:
            session.login_failures.append(now)
            if address is None:
                return
            self._address_failures.setdefault(address, []).append(now)
            self._address_failures.move_to_end(address)
            while len(self._address_failures) > MAX_TRACKED_ADDRESSES:
                self._address_failures.popitem(last=False)


def _recent(times: list[float], now: float) -> list[float]:
    return [t for t in times if now - t < LOGIN_FAILURE_WINDOW_S]


def client_address(request: Request) -> str | None:
    """The client's address: the peer's, or behind trusted proxies the one they report
    (studyhub.serving.forwarded). Raises ForwardedError when that header cannot be read."""
    trust: ProxyTrust = request.app.state.proxy_trust
    peer = request.client.host if request.client else None
    return trust.client_address(peer, request.headers.getlist(trust.header))


def login_address(request: Request) -> str | None:
    """The address failed logins are also counted under: only behind trusted proxies (without
    them every client of a shared proxy would share one address, and one attacker could lock
    everyone out)."""
    trust: ProxyTrust = request.app.state.proxy_trust
    return client_address(request) if trust.configured else None


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
