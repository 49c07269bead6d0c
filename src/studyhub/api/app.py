"""The FastAPI application factory.

``create_app()`` resolves the profile, the topology (pooler? replica?) and the token secret
up front — so configuration errors are one clear line before any server starts — and opens the
engines in the lifespan. Everything lives on ``app.state`` (``databases``, ``tokens``,
``read_marks``, ``passwords``, ``scheduler``); other routers (the dashboard) can be included on
the same app and use the same state. ``app_from_environment()`` is the factory ``studyhub
serve`` starts uvicorn with, by name (``studyhub.serving.API_APP``), in its own process or in
each of ``--workers N``: settings from ``STUDYHUB_API_*``, the secret from the environment or
its 0600 file, never from argv.
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fsrs import Scheduler
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studyhub.api.auth import Passwords, TokenService
from studyhub.api.db import Databases
from studyhub.api.errors import document_errors, install_error_handlers
from studyhub.api.read_marks import ReadMarks
from studyhub.api.routers import (
    accounts,
    ai,
    flashcards,
    health,
    notes,
    reviews,
    sessions,
    subjects,
)
from studyhub.profiles import Profile, resolve_profile
from studyhub.serving import ApiSettings, choose_topology, load_token_secret

ROUTERS = (health.router, accounts.router, subjects.router, notes.router, flashcards.router,
           sessions.router, ai.router, reviews.router)


def too_large_detail(max_bytes: int) -> str:
    return f"request body larger than {max_bytes} bytes"


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive()`` once the body passes the limit. It is an HTTPException on
    purpose: FastAPI's body parsing passes those on (any other exception raised while it reads
    the body becomes a 400 "There was an error parsing the body"), so the app's own handler
    answers 413 with the JSON ``detail``, on every route, however the body arrives."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, too_large_detail(max_bytes))


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413: a declared Content-Length over the
    limit before the app runs (so no route acts on the request), a body without one (chunked)
    as soon as the bytes received pass the limit, before it is parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await self._refuse(send)
                return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            if seen > self.max_bytes:
                raise BodyTooLarge(self.max_bytes)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            # read outside the app's exception handlers (none of our routes do): answer here
            if started:
                raise
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": too_large_detail(self.max_bytes)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(settings: ApiSettings | None = None, *, profile: Profile | None = None) -> FastAPI:
    settings = settings or ApiSettings()
    profile = profile or resolve_profile(settings.profile)
    topology = choose_topology(profile, settings)
    secret = load_token_secret(profile)
    tokens = TokenService(secret, settings.token_ttl_s)
    # A mark older than the lag bound is moot (the replica would be lagging, so every read goes
    # to the primary anyway): its lifetime is never below twice the bound.
    read_marks = ReadMarks(secret, max(settings.read_your_writes_mark_ttl_s,
                                       2 * settings.max_replica_lag_s))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dbs = Databases(profile, settings, topology)
        app.state.databases = dbs
        app.state.passwords = Passwords(settings.password_hash_concurrency)
        try:
            await dbs.start()
            yield
        finally:
            await dbs.close()

    app = FastAPI(
        title="StudyHub API",
        version="1",
        description="Students, subjects, notes, flashcards with FSRS scheduling, revision "
                    "sessions and the AI tutor's log. Register with POST /auth/register (202, "
                    "the same answer for every address), then get a bearer token from "
                    "POST /auth/token.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.profile = profile
    app.state.topology = topology
    app.state.tokens = tokens
    app.state.read_marks = read_marks
    app.state.scheduler = Scheduler(enable_fuzzing=settings.fsrs_fuzzing)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    generated_openapi = app.openapi
    documented: dict[str, Any] | None = None

    def openapi() -> dict[str, Any]:
        """FastAPI's schema (cached; generated anew when routes are added) with our errors."""
        nonlocal documented
        schema = generated_openapi()
        if schema is not documented:
            documented = document_errors(schema)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app


def app_from_environment() -> FastAPI:
    """The app ``studyhub serve`` runs (in its own process, or in each worker process): every
    setting from ``STUDYHUB_API_*`` (``serve`` puts its options there before starting)."""
    return create_app(ApiSettings())
