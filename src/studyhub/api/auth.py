"""Bearer tokens and passwords.

A token is a JWT (HS256, PyJWT) naming the user and their student row, valid for
``token_ttl_s``. Its signing secret comes from, in order:

1. ``STUDYHUB_API_SECRET`` (at least 32 characters);
2. the file named by ``STUDYHUB_API_SECRET_FILE`` (refused unless mode 0600);
3. for the local profile only: ``$STUDYHUB_HOME/secrets/api_token.key``, created 0600 on first
   use.

Never from the command line. Passwords are hashed with argon2id (argon2-cffi), at most
``password_hash_concurrency`` at a time (each hash takes ~64 MiB), off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from studyhub.errors import ConfigError
from studyhub.profiles import Profile

SECRET_ENV = "STUDYHUB_API_SECRET"
SECRET_FILE_ENV = "STUDYHUB_API_SECRET_FILE"
LOCAL_SECRET_NAME = "api_token.key"
MIN_SECRET_CHARS = 32
ISSUER = "studyhub"
ALGORITHM = "HS256"


def local_secret_path(profile: Profile) -> Path:
    """Next to the local cluster's 0600 passfile, in its 0700 secrets/ directory."""
    if profile.passfile is not None:
        return profile.passfile.parent / LOCAL_SECRET_NAME
    from studyhub.local.cluster import LocalCluster

    return LocalCluster().secrets_dir / LOCAL_SECRET_NAME


def _read_private_file(path: Path) -> str:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"token secret file {path} does not exist") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"token secret file {path} is readable by others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); run: chmod 600 {path}"
        )
    return path.read_text().strip()


def load_token_secret(profile: Profile) -> str:
    """The signing secret (see the module doc for where it comes from)."""
    source: str
    if os.environ.get(SECRET_ENV):
        value, source = os.environ[SECRET_ENV].strip(), f"env {SECRET_ENV}"
    elif os.environ.get(SECRET_FILE_ENV):
        path = Path(os.environ[SECRET_FILE_ENV])
        value, source = _read_private_file(path), f"file {path}"
    elif profile.is_local:
        path = local_secret_path(profile)
        if not path.exists():
            from studyhub.local.proc import write_private

            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(path, secrets.token_urlsafe(48) + "\n")
        value, source = _read_private_file(path), f"file {path}"
    else:
        raise ConfigError(
            f"no API token secret for profile {profile.name}: set {SECRET_FILE_ENV} to a 0600 "
            f"file holding at least {MIN_SECRET_CHARS} random characters (or {SECRET_ENV})"
        )
    if len(value) < MIN_SECRET_CHARS:
        raise ConfigError(f"the API token secret from {source} is shorter than "
                          f"{MIN_SECRET_CHARS} characters")
    return value


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
    from studyhub.api.errors import ApiError

    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        return request.app.state.tokens.verify(credentials.credentials)
    except TokenError as exc:
        raise ApiError(401, str(exc),
                       headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
