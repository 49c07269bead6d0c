"""The API's two async engines (SQLAlchemy 2 + asyncpg) and how reads and writes use them.

- **writer**: the primary, through the transaction pooler (PgBouncer) when it is used;
- **reader**: the streaming replica, used only while the monitor says its lag is in bounds
  (:mod:`studyhub.api.replica`); any failure there is answered by the primary instead.

No password ever enters a URL: asyncpg gets the passfile path (local profile) or the password
as a keyword argument (remote profiles), and SQLAlchemy hides statement parameters in errors.

Through PgBouncer's transaction pooling, consecutive transactions of one client connection run
on different server connections, so a server-side prepared statement made in one transaction is
missing (or belongs to someone else) in the next. With asyncpg ``statement_cache_size=0`` and
SQLAlchemy's ``prepared_statement_cache_size=0`` the asyncpg dialect prepares every statement as
the *unnamed* statement and asyncpg re-parses it at execution, so nothing named outlives a
transaction on the server (docs/api.md shows what happens without).
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Hashable, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from studyhub.api.read_marks import ReadAfter
from studyhub.api.replica import ReadRouter, ReplicaMonitor, first_line, parse_lsn
from studyhub.ops.queries import load
from studyhub.profiles import Endpoint, Profile
from studyhub.serving import ApiSettings, Topology, choose_topology

log = logging.getLogger("studyhub.api.db")

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[T]]

# What a failed read on the replica may raise before the primary answers instead.
REPLICA_READ_ERRORS: tuple[type[BaseException], ...] = (SQLAlchemyError, OSError, TimeoutError)


@dataclass(frozen=True)
class Commit:
    """A committed write: whose it was (``key``) and the primary's WAL position after it
    (``lsn``; None when there is no replica to wait for, or when it could not be read)."""

    key: Hashable | None
    lsn: int | None


class DatabaseUnavailable(Exception):
    """The primary (or the pooler in front of it) could not serve the request."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _ssl_argument(ep: Endpoint) -> Any:
    if ep.sslmode in ("verify-ca", "verify-full") and ep.sslrootcert:
        ctx = ssl.create_default_context(cafile=ep.sslrootcert)
        ctx.check_hostname = ep.sslmode == "verify-full"
        return ctx
    return ep.sslmode


def asyncpg_connect_args(profile: Profile, ep: Endpoint, settings: ApiSettings,
                         application_name: str) -> dict[str, Any]:
    """asyncpg.connect() keywords for ``ep``: no password in any URL, statement caches off
    when ``ep`` is a transaction pooler."""
    args: dict[str, Any] = {
        "ssl": _ssl_argument(ep),
        "timeout": settings.connect_timeout_s,
        "command_timeout": settings.command_timeout_s,
        "server_settings": {"application_name": application_name},
    }
    if ep.passfile:
        args["passfile"] = str(ep.passfile)
    password = profile.password_for(ep.user)
    if password is not None:
        args["password"] = password.get_secret_value()
    if ep.via_pooler:
        args["statement_cache_size"] = 0  # asyncpg's own cache of named statements
        args["prepared_statement_cache_size"] = 0  # SQLAlchemy asyncpg dialect's cache
    return args


def make_engine(profile: Profile, role: str, settings: ApiSettings, *, application_name: str,
                pool: str = "app") -> AsyncEngine:
    """An async engine for ``role`` (app/pooler/replica) of ``profile``.

    ``pool``: "app" (sized for request traffic), "single" (one connection, for probes) or
    "none" (connect per use)."""
    ep = profile.endpoint(role)
    url = sa.URL.create("postgresql+asyncpg", username=ep.user, host=ep.host, port=ep.port,
                        database=ep.database)
    kw: dict[str, Any] = {
        "connect_args": asyncpg_connect_args(profile, ep, settings, application_name),
        "hide_parameters": True,  # statement parameters are personal data: never in errors
    }
    if pool == "none":
        kw["poolclass"] = NullPool
    elif pool == "single":
        kw.update(pool_size=1, max_overflow=0, pool_timeout=settings.pool_timeout_s)
    else:
        overflow = settings.pooler_max_overflow if ep.via_pooler else settings.direct_max_overflow
        size = (settings.reader_pool_size() if role == "replica"
                else settings.writer_pool_size(ep.via_pooler))
        kw.update(pool_size=size, max_overflow=overflow, pool_timeout=settings.pool_timeout_s,
                  pool_recycle=1800)
    return create_async_engine(url, **kw)


class Databases:
    """The engines, the replica monitor and the router, for one API process."""

    def __init__(self, profile: Profile, settings: ApiSettings,
                 topology: Topology | None = None) -> None:
        self.profile = profile
        self.settings = settings
        self.topology = topology or choose_topology(profile, settings)
        writer_role = "pooler" if self.topology.writer == "pooler" else "app"
        self.writer = make_engine(profile, writer_role, settings,
                                  application_name="studyhub-api")
        # Reads without BEGIN/ROLLBACK: one statement each, same pool.
        self.writer_reads = self.writer.execution_options(isolation_level="AUTOCOMMIT")
        self.probe_writer = make_engine(profile, writer_role, settings, pool="single",
                                        application_name="studyhub-api-probe")
        # Health only: the primary's own port, to tell "pooler down" from "primary down".
        self.primary_direct = (
            make_engine(profile, "app", settings, pool="none",
                        application_name="studyhub-api-health")
            if writer_role == "pooler" else None
        )
        self.reader: AsyncEngine | None = None
        self.reader_reads: AsyncEngine | None = None
        self.probe_reader: AsyncEngine | None = None
        monitor: ReplicaMonitor | None = None
        if self.topology.replica:
            self.reader = make_engine(profile, "replica", settings,
                                      application_name="studyhub-api")
            self.reader_reads = self.reader.execution_options(isolation_level="AUTOCOMMIT")
            self.probe_reader = make_engine(profile, "replica", settings, pool="single",
                                            application_name="studyhub-api-probe")
            monitor = ReplicaMonitor(
                self._primary_wal_lsn,
                self._replica_position,
                max_lag_s=settings.max_replica_lag_s,
                interval_s=settings.replica_probe_interval_s,
                timeout_s=settings.replica_probe_timeout_s,
            )
        self.monitor = monitor
        self.router = ReadRouter(monitor, fallback_window_s=settings.read_your_writes_fallback_s)

    # ------------------------------------------------------------------ probes
    async def _primary_wal_lsn(self) -> str:
        async with self.probe_writer.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return (await conn.execute(sa.text(load("get_current_wal_lsn")))).scalar_one()

    async def _replica_position(self) -> Any:
        assert self.probe_reader is not None
        async with self.probe_reader.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return (await conn.execute(sa.text(load("get_replica_replay_position")))).mappings().one()

    # --------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        if self.monitor is not None:
            await self.monitor.probe_once()  # route from the first request on
            self.monitor.start()

    async def close(self) -> None:
        if self.monitor is not None:
            await self.monitor.stop()
            c = self.router.counters
            log.info("reads routed by this worker: replica=%d primary=%d (read_your_writes=%d "
                     "failed_on_replica=%d) marks_ignored=%d", c.replica, c.primary, c.pinned,
                     c.fallbacks, c.marks_ignored)
        for engine in (self.writer, self.probe_writer, self.primary_direct, self.reader,
                       self.probe_reader):
            if engine is not None:
                await engine.dispose()

    # ------------------------------------------------------------ reads/writes
    async def read(self, key: Hashable | None, work: Work[T], *, primary: bool = False,
                   read_after: ReadAfter | None = None) -> tuple[T, str]:
        """Run ``work`` (read-only, one or more SELECTs) where the router says for ``key`` and
        the client's verified read mark ``read_after`` (on the primary when ``primary``); a
        failure on the replica is retried on the primary. Returns the result and where it ran."""
        if not primary and self.router.choose(key, read_after) == "replica":
            assert self.reader_reads is not None and self.monitor is not None
            try:
                async with self.reader_reads.connect() as conn:
                    result = await work(conn)
                self.router.counters.replica += 1
                return result, "replica"
            except REPLICA_READ_ERRORS as exc:
                self.router.counters.fallbacks += 1
                log.warning("read on the replica failed, answered by the primary: %s",
                            first_line(exc))
                if not isinstance(exc, DBAPIError) or exc.connection_invalidated or \
                        _is_connection_error(exc):
                    self.monitor.report_failure(exc)
        try:
            async with self.writer_reads.connect() as conn:
                result = await work(conn)
        except REPLICA_READ_ERRORS as exc:
            if _is_connection_error(exc) or not isinstance(exc, DBAPIError):
                raise DatabaseUnavailable(first_line(exc)) from None
            raise
        self.router.counters.primary += 1
        return result, "primary"

    async def write(self, key: Hashable | None, work: Work[T], *,
                    key_of: Callable[[T], Hashable] | None = None) -> tuple[T, Commit]:
        """Run ``work`` in one transaction on the primary; then remember the commit's LSN for
        ``key``'s read-your-writes (``key_of(result)`` when the key is only known after the
        write, as for a new account) and return it with the result, for the client's read
        mark."""
        try:
            async with self.writer.begin() as conn:
                result = await work(conn)
        except REPLICA_READ_ERRORS as exc:
            if _is_connection_error(exc) or not isinstance(exc, DBAPIError):
                raise DatabaseUnavailable(first_line(exc)) from None
            raise
        if key is None and key_of is not None:
            key = key_of(result)
        lsn: int | None = None
        if self.router.enabled and key is not None:
            try:
                async with self.writer_reads.connect() as conn:
                    lsn = parse_lsn(
                        (await conn.execute(sa.text(load("get_commit_wal_lsn")))).scalar_one()
                    )
            except REPLICA_READ_ERRORS as exc:
                log.warning("could not read the commit LSN (%s); pinning reads to the primary "
                            "for %.0f s", first_line(exc), self.settings.read_your_writes_fallback_s)
                lsn = None
            self.router.note_write(key, lsn)
        return result, Commit(key, lsn)

    # ------------------------------------------------------------------ health
    async def check_writer(self) -> dict[str, Any]:
        return await _timed_select(self.probe_writer)

    async def check_primary_direct(self) -> dict[str, Any] | None:
        if self.primary_direct is None:
            return None
        return await _timed_select(self.primary_direct)


def _is_connection_error(exc: BaseException) -> bool:
    """A dropped/refused connection, a shutdown, a pool timeout: not a bug in our SQL."""
    if isinstance(exc, (OSError, TimeoutError, sa.exc.TimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc, (sa.exc.OperationalError,
                                                          sa.exc.InterfaceError)):
            return True
        driver = getattr(exc.orig, "driver_exception", None) or getattr(exc.orig, "__cause__", None)
        sqlstate = getattr(driver, "sqlstate", None) or ""
        # 08: connection exception; 57P: operator intervention (shutdown, crash); 53: resources
        return sqlstate.startswith(("08", "57P", "53"))
    return False


async def _timed_select(engine: AsyncEngine) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(sa.text("SELECT 1"))
    except REPLICA_READ_ERRORS as exc:
        return {"ok": False, "latency_ms": None, "error": first_line(exc)}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "error": None}
