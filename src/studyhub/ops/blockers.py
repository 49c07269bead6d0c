"""Who blocks a session: the sessions holding the locks a backend waits for.

``studyhub migrate up`` watches its own backend with :class:`BlockerWatcher` while migrations
run, so that a lock timeout comes with the PIDs (and applications, transaction ages) that
caused it. The query is ``ops/sql/get_lock_blockers.sql`` (pg_blocking_pids + pg_locks +
pg_stat_activity).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psycopg

from studyhub.connect import ConnectError, connect
from studyhub.ops.queries import load
from studyhub.profiles import Profile


@dataclass
class Blocker:
    pid: int
    user_name: str | None
    application_name: str | None
    client_addr: str | None
    state: str | None
    xact_age_s: float | None
    waiting_for: str | None  # the relation (or lock type) the watched backend waited for
    waiting_mode: str | None  # the mode it asked for
    held_modes: str | None  # what the blocker holds on it
    query: str | None  # first 120 characters, for the operator's screen only (never audited)


def blockers_of(conn: psycopg.Connection, pid: int) -> list[Blocker]:
    rows = conn.execute(load("get_lock_blockers"), {"pid": pid}).fetchall()
    return [Blocker(*r) for r in rows]


def watcher_connection(profile, database: str | None, application_name: str
                       ) -> psycopg.Connection:
    """An autocommit connection for watching locks: the ops role (pg_monitor sees every
    session), else the app role."""
    last: Exception | None = None
    for role in ("ops", "app"):
        try:
            return connect(profile, role, database=database, autocommit=True,
                           application_name=application_name)
        except ConnectError as exc:
            last = exc
    raise last  # type: ignore[misc]


class BlockerWatcher:
    """Poll the blockers of backend ``pid`` from a second connection until stopped; keeps the
    latest sighting of each blocking PID. Connects as the ops role (pg_monitor sees every
    session) and falls back to the app role where the ops role has no password."""

    def __init__(self, profile: Profile, database: str | None, pid: int,
                 interval_s: float = 0.05) -> None:
        self.profile, self.database, self.pid = profile, database, pid
        self.interval_s = interval_s
        self.seen: dict[int, Blocker] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: str | None = None

    def _connect(self) -> psycopg.Connection:
        return watcher_connection(self.profile, self.database, "studyhub migrate (lock watcher)")

    def _loop(self) -> None:
        try:
            with self._connect() as conn:
                while not self._stop.is_set():
                    for b in blockers_of(conn, self.pid):
                        self.seen[b.pid] = b
                    self._stop.wait(self.interval_s)
        except Exception as exc:  # the watcher must never break the migration
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    def __enter__(self) -> "BlockerWatcher":
        self._thread = threading.Thread(target=self._loop, name="studyhub-lock-watcher",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def blockers(self) -> list[Blocker]:
        return sorted(self.seen.values(), key=lambda b: -(b.xact_age_s or 0))

