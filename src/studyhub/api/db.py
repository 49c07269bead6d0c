"""The API's two async engines (SQLAlchemy 2 + asyncpg) and how reads and writes use them.

- **writer**: the primary, through the transaction pooler (PgBouncer) when it is used;
- **readers**: one per read endpoint of the profile (streaming replicas), used only while its
  monitor says its lag is in bounds (:mod:`studyhub.api.replica`); a failure there is answered
  by the primary instead; when the primary is down, by a replica within the staleness bound.

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

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic, Hashable, TypeVar

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
                pool: str = "app", replica: str | None = None) -> AsyncEngine:
    """An async engine for ``role`` (app/pooler/replica) of ``profile``.

    ``pool``: "app" (sized for request traffic), "single" (one connection, for probes) or
    "none" (connect per use); ``replica``: which read endpoint (role replica)."""
    ep = profile.endpoint(role, replica=replica) if role == "replica" else profile.endpoint(role)
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


@dataclass
class Reader:
    """One read endpoint: its request pool, its probe connection and its monitor."""

    name: str
    engine: AsyncEngine
    reads: AsyncEngine  # the same pool, AUTOCOMMIT (one statement per read)
    probe: AsyncEngine
    monitor: ReplicaMonitor


@dataclass(frozen=True)
class Served(Generic[T]):
    """A read's result, where it ran (a replica's name or "primary") and, when the primary was
    down and a replica answered, an upper bound on how stale that answer is."""

    result: T
    where: str
    stale_s: float | None = None


class Databases:
    """The engines, the replica monitors and the router, for one API process."""

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
        self.readers: dict[str, Reader] = {}
        if self.topology.replica:
            for ep in self.topology.readers:
                engine = make_engine(profile, "replica", settings, replica=ep.name,
                                     application_name="studyhub-api")
                probe = make_engine(profile, "replica", settings, pool="single",
                                    replica=ep.name, application_name="studyhub-api-probe")
                monitor = ReplicaMonitor(
                    self._primary_wal_lsn,
                    self._replica_position(probe),
                    max_lag_s=settings.max_replica_lag_s,
                    interval_s=settings.replica_probe_interval_s,
                    timeout_s=settings.replica_probe_timeout_s,
                    name=ep.name, region=ep.region,
                )
                self.readers[ep.name] = Reader(
                    ep.name, engine, engine.execution_options(isolation_level="AUTOCOMMIT"),
                    probe, monitor)
        self.router = ReadRouter([r.monitor for r in self.readers.values()],
                                 fallback_window_s=settings.read_your_writes_fallback_s,
                                 preferred_region=settings.preferred_region,
                                 max_stale_read_s=settings.max_stale_read_s)

    @property
    def monitor(self) -> ReplicaMonitor | None:
        """The first replica's monitor (None without replicas)."""
        return self.router.monitor

    # ------------------------------------------------------------------ probes
    async def _primary_wal_lsn(self) -> str:
        async with self.probe_writer.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return (await conn.execute(sa.text(load("get_current_wal_lsn")))).scalar_one()

    @staticmethod
    def _replica_position(probe: AsyncEngine) -> Callable[[], Awaitable[Any]]:
        async def position() -> Any:
            async with probe.connect() as conn:
                conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                return (await conn.execute(sa.text(load("get_replica_replay_position")))
                        ).mappings().one()
        return position

    # --------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        monitors = self.router.monitors
        if monitors:
            # route from the first request on
            await asyncio.gather(*(m.probe_once() for m in monitors))
            for m in monitors:
                m.start()

    async def close(self) -> None:
        for m in self.router.monitors:
            await m.stop()
        if self.router.monitors:
            c = self.router.counters
            log.info("reads routed by this worker: replicas=%d (%s) primary=%d "
                     "(read_your_writes=%d failed_on_replica=%d) stale=%d unavailable=%d "
                     "marks_ignored=%d", c.replica,
                     ", ".join(f"{m.name}={m.reads}" for m in self.router.monitors),
                     c.primary, c.pinned, c.fallbacks, c.stale, c.unavailable, c.marks_ignored)
        engines = [self.writer, self.probe_writer, self.primary_direct]
        for r in self.readers.values():
            engines += [r.engine, r.probe]
        for engine in engines:
            if engine is not None:
                await engine.dispose()

    # ------------------------------------------------------------ reads/writes
    async def _read_on(self, reader: Reader, work: Work[T]) -> T:
        reader.monitor.outstanding += 1
        try:
            async with reader.reads.connect() as conn:
                result = await work(conn)
        finally:
            reader.monitor.outstanding -= 1
        reader.monitor.reads += 1
        self.router.counters.replica += 1
        return result

    def _replica_failed(self, reader: Reader, exc: BaseException) -> None:
        self.router.counters.fallbacks += 1
        log.warning("read on replica %s failed, answered elsewhere: %s", reader.name,
                    first_line(exc))
        if not isinstance(exc, DBAPIError) or exc.connection_invalidated or \
                _is_connection_error(exc):
            reader.monitor.report_failure(exc)

    async def read(self, key: Hashable | None, work: Work[T], *, primary: bool = False,
                   read_after: ReadAfter | None = None) -> Served[T]:
        """Run ``work`` (read-only, one or more SELECTs) where the router says for ``key`` and
        the client's verified read mark ``read_after`` (on the primary when ``primary``); a
        failure on a replica is retried on the primary; when the primary is down, a replica
        within the staleness bound answers (else DatabaseUnavailable)."""
        if not primary:
            monitor = self.router.pick(key, read_after)
            if monitor is not None:
                reader = self.readers[monitor.name]
                try:
                    return Served(await self._read_on(reader, work), reader.name)
                except REPLICA_READ_ERRORS as exc:
                    self._replica_failed(reader, exc)
        if not self.router.primary_down():
            try:
                async with self.writer_reads.connect() as conn:
                    result = await work(conn)
                self.router.counters.primary += 1
                return Served(result, "primary")
            except REPLICA_READ_ERRORS as exc:
                if not (_is_connection_error(exc) or not isinstance(exc, DBAPIError)):
                    raise
                reason = first_line(exc)
                for m in self.router.monitors:
                    m.wake()  # measure again now: the primary may be down
        else:
            reason = "the primary cannot be reached"
        return await self._read_stale(key, work, read_after, reason)

    async def _read_stale(self, key: Hashable | None, work: Work[T],
                          read_after: ReadAfter | None, reason: str) -> Served[T]:
        """The primary is down: the least stale replica within the bound that has replayed
        this client's writes, or DatabaseUnavailable."""
        tried: set[str] = set()
        while True:
            picked = self.router.pick_stale(key, read_after, exclude=tried)
            if picked is None:
                self.router.counters.unavailable += 1
                raise DatabaseUnavailable(reason)
            monitor, stale_s = picked
            reader = self.readers[monitor.name]
            tried.add(reader.name)
            try:
                result = await self._read_on(reader, work)
            except REPLICA_READ_ERRORS as exc:
                self._replica_failed(reader, exc)
                continue
            self.router.counters.stale += 1
            return Served(result, reader.name, stale_s)

    async def write(self, key: Hashable | None, work: Work[T], *,
                    key_of: Callable[[T], Hashable] | None = None) -> tuple[T, Commit]:
        """Run ``work`` in one transaction on the primary; then remember the commit's LSN for
        ``key``'s read-your-writes (``key_of(result)`` when the key is only known after the
        write, as for a new account) and return it with the result, for the client's read
        mark. The primary down: DatabaseUnavailable (503 with Retry-After)."""
        try:
            async with self.writer.begin() as conn:
                result = await work(conn)
        except REPLICA_READ_ERRORS as exc:
            if _is_connection_error(exc) or not isinstance(exc, DBAPIError):
                for m in self.router.monitors:
                    m.wake()
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
