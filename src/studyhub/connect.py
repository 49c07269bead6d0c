"""Profile → connection. The only place that turns a profile into psycopg, SQLAlchemy or
subprocess connection settings.

Passwords travel in memory (psycopg keyword), in a child's environment (``PGPASSWORD``) or in a
0600 passfile (``PGPASSFILE``); never in argv, URLs we print, logs or exception messages.
"""

from __future__ import annotations

from typing import Any

import psycopg
import sqlalchemy as sa

from studyhub.environ import inherited_environ
from studyhub.errors import StudyhubError
from studyhub.profiles import Endpoint, Profile


class ConnectError(StudyhubError):
    """The database could not be reached or refused us."""


def describe_endpoint(profile: Profile, ep: Endpoint) -> str:
    via = " via pooler" if ep.via_pooler else ""
    return f"{profile.name} ({ep.user}@{ep.host}:{ep.port}/{ep.database}{via})"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _connect_kwargs(profile: Profile, role: str, database: str | None,
                    replica: str | None = None) -> tuple[Endpoint, dict[str, Any]]:
    ep = profile.endpoint(role, database, replica=replica)
    kwargs = ep.conninfo()
    pw = profile.password_for(ep.user)
    if pw is not None:
        kwargs["password"] = pw.get_secret_value()
    if ep.via_pooler:
        kwargs["prepare_threshold"] = None  # PgBouncer transaction mode: no server-side prepares
    return ep, kwargs


def connect(
    profile: Profile,
    role: str = "app",
    *,
    database: str | None = None,
    autocommit: bool = False,
    application_name: str = "studyhub",
    connect_timeout: int = 10,
    replica: str | None = None,
    **extra: Any,
) -> psycopg.Connection[Any]:
    """Open a psycopg connection for ``role`` on ``profile`` (role "replica": the read
    endpoint named ``replica``, default the first); errors become one clear line."""
    ep, kwargs = _connect_kwargs(profile, role, database, replica)
    kwargs.update(extra)
    try:
        return psycopg.connect(
            autocommit=autocommit,
            application_name=application_name,
            connect_timeout=connect_timeout,
            **kwargs,
        )
    except psycopg.OperationalError as exc:
        raise ConnectError(
            f"cannot connect to {describe_endpoint(profile, ep)}: {_clean(exc)}"
        ) from None


def _clean(exc: psycopg.Error) -> str:
    """The useful part of a libpq error, without the 'connection to server at ...' prefix."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "FATAL:" in ln:
            return ln.split("FATAL:", 1)[1].strip()
    msg = lines[-1] if lines else type(exc).__name__
    if "failed:" in msg:
        msg = msg.rsplit("failed:", 1)[1].strip()
    return msg


def subprocess_env(profile: Profile, role: str = "app", database: str | None = None, *,
                   replica: str | None = None) -> dict[str, str]:
    """Environment for a libpq program (psql, pg_dump, pg_restore ...): every connection setting
    as PG* variables, so nothing about the connection (let alone a password) is on argv."""
    ep = profile.endpoint(role, database, replica=replica)
    env = {
        "PGHOST": ep.host,
        "PGPORT": str(ep.port),
        "PGDATABASE": ep.database,
        "PGUSER": ep.user,
        "PGSSLMODE": ep.sslmode,
        "PGAPPNAME": "studyhub",
        "PGCONNECT_TIMEOUT": "10",
    }
    if ep.passfile:
        env["PGPASSFILE"] = str(ep.passfile)
    if ep.sslrootcert:
        env["PGSSLROOTCERT"] = ep.sslrootcert
    pw = profile.password_for(ep.user)
    if pw is not None:
        env["PGPASSWORD"] = pw.get_secret_value()
    return env


def child_env(profile: Profile, role: str = "app", database: str | None = None, *,
              replica: str | None = None) -> dict[str, str]:
    """The inherited environment without our settings or secrets (:mod:`studyhub.environ`),
    plus this profile's PG* settings for ``role`` (role replica: the read endpoint named
    ``replica``, default the first)."""
    base = inherited_environ()
    base.update(subprocess_env(profile, role, database, replica=replica))
    return base


def sqlalchemy_engine(
    profile: Profile, role: str = "app", *, database: str | None = None, **engine_kw: Any
) -> sa.Engine:
    """A synchronous SQLAlchemy engine (psycopg 3) whose password never enters the URL."""
    ep, kwargs = _connect_kwargs(profile, role, database)
    url = sa.URL.create("postgresql+psycopg", username=ep.user, host=ep.host, port=ep.port,
                        database=ep.database)
    connect_args = {k: v for k, v in kwargs.items() if k not in {"host", "port", "dbname", "user"}}
    connect_args.setdefault("application_name", "studyhub")
    return sa.create_engine(url, connect_args=connect_args, **engine_kw)
