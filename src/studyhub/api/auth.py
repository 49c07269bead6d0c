"""Bearer tokens and passwords.

A token is a JWT (HS256, PyJWT) naming the user and their student row, valid for
``token_ttl_s``. Its signing secret comes from ``studyhub.serving.load_token_secret`` (the
environment or a 0600 file; never from the command line). Passwords are hashed with argon2id
(argon2-cffi), at most ``password_hash_concurrency`` at a time (each hash takes ~64 MiB), off the
event loop.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from studyhub.api.errors import ApiError

ISSUER = "studyhub"
ALGORITHM = "HS256"


@dataclass(frozen=True)
class Principal:
    """Who is calling: every query the API runs for them filters on ``student_id``."""

    user_id: uuid.UUID
    student_id: uuid.UUID


class TokenError(Exception):
    pass


class TokenService:
    def __init__(self, secret: str, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def issue(self, user_id: uuid.UUID, student_id: uuid.UUID, *, ttl_s: int | None = None) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": str(user_id), "sid": str(student_id), "iat": now,
                  "exp": now + (ttl_s or self.ttl_s)}
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> Principal:
        try:
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "sid", "iss"]})
            return Principal(uuid.UUID(claims["sub"]), uuid.UUID(claims["sid"]))
        except jwt.ExpiredSignatureError:
            raise TokenError("token expired") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise TokenError("invalid token") from None


class Passwords:
    """argon2id hashing, bounded in concurrency and run in a worker thread."""

    def __init__(self, concurrency: int) -> None:
        self._hasher = PasswordHasher()
        self._slots = asyncio.Semaphore(concurrency)
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await run_in_threadpool(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Constant work whether or not the user exists (a dummy hash stands in)."""
        async with self._slots:
            return await run_in_threadpool(self._verify, stored_hash, password)

    def _verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash or self._dummy, password) and bool(stored_hash)
        except (VerificationError, InvalidHashError):
            return False


bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>` from "
                                                  "POST /auth/token")


async def current_principal(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        return request.app.state.tokens.verify(credentials.credentials)
    except TokenError as exc:
        raise ApiError(401, str(exc),
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
