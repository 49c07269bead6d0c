"""The lock watcher of a measured migration: a thread on a second connection (the ops role,
pg_monitor; the app role where the ops role has no password) polling
``get_migration_lock_watch`` every ``interval_s`` for the sessions waiting behind the
migration's backend (pg_blocking_pids, pg_locks.waitstart) and the table locks it holds. Each
wait remembers ``seq``, the migration statement running when it was first seen.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

from studyhub.connect import first_line
from studyhub.ops.blockers import watcher_connection
from studyhub.ops.queries import load
from studyhub.profiles import Profile


def mode_name(pg_mode: str) -> str:
    """pg_locks' 'ShareUpdateExclusiveLock' → 'SHARE UPDATE EXCLUSIVE'."""
    return " ".join(w.upper() for w in re.findall(r"[A-Z][a-z]+", pg_mode.replace("Lock", "")))



# PostgreSQL's table lock conflicts, by mode (strength order of statements.LOCK_MODES)
_CONFLICTS = {
    "ACCESS SHARE": {"ACCESS EXCLUSIVE"},
    "ROW SHARE": {"EXCLUSIVE", "ACCESS EXCLUSIVE"},
    "ROW EXCLUSIVE": {"SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"},
    "SHARE UPDATE EXCLUSIVE": {"SHARE UPDATE EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE",
                               "EXCLUSIVE", "ACCESS EXCLUSIVE"},
    "SHARE": {"ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE",
              "ACCESS EXCLUSIVE"},
    "SHARE ROW EXCLUSIVE": {"ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
                            "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"},
    "EXCLUSIVE": {"ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE", "SHARE",
                  "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE"},
}


def conflicts(requested: str, held: str) -> bool:
    if requested == "ACCESS EXCLUSIVE":
        return True
    return held in _CONFLICTS.get(requested, set())


@dataclass
class Wait:
    pid: int
    mode: str
    obj: str
    wait_started: float | None
    waited_s: float
    seq: int | None


class LockWatcher:
    def __init__(self, profile: Profile, database: str | None, interval_s: float) -> None:
        self.profile, self.database, self.interval_s = profile, database, interval_s
        self.pid: int | None = None
        self.current_seq: int | None = None
        self.episodes: list[Wait] = []
        self._active: dict[int, Wait] = {}
        # each uninterrupted sighting of a lock it holds: [relation, mode, first, last, seq]
        self.held: list[list[Any]] = []
        self._holding: dict[tuple[str, str], list[Any]] = {}
        self.error: str | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="studyhub-rehearse-watcher")

    def _connect(self):
        return watcher_connection(self.profile, self.database,
                                  "studyhub migrate rehearse (lock watcher)")

    def _loop(self) -> None:
        try:
            with self._connect() as conn:
                self._ready.set()
                query = load("get_migration_lock_watch")
                while not self._stop.is_set():
                    if self.pid is not None:
                        self._observe(conn.execute(query, {"pid": self.pid}).fetchall())
                    self._stop.wait(self.interval_s)
        except Exception as exc:  # the watcher must never break the migration
            self.error = first_line(exc)
        finally:
            self._ready.set()

    def _observe(self, rows) -> None:
        now = time.monotonic()
        seq = self.current_seq
        seen: set[int] = set()
        holding: set[tuple[str, str]] = set()
        for kind, pid, mode, obj, waited_s, wait_started in rows:
            if kind == "held":
                key = (obj, mode_name(mode))
                holding.add(key)
                entry = self._holding.get(key)
                if entry is None:
                    entry = self._holding[key] = [obj, key[1], now, now, seq]
                    self.held.append(entry)
                entry[3] = now
                continue
            seen.add(pid)
            ep = self._active.get(pid)
            if ep is not None and ep.wait_started is not None and wait_started is not None \
                    and abs(ep.wait_started - wait_started) > 1e-6:
                ep = None  # the same session, a new wait
            if ep is None:
                ep = Wait(pid, mode_name(mode), obj, wait_started, 0.0, seq)
                self._active[pid] = ep
                self.episodes.append(ep)
            if ep.wait_started is None:
                ep.wait_started = wait_started
            ep.waited_s = max(ep.waited_s, waited_s or self.interval_s)
        for pid in list(self._active):
            if pid not in seen:
                del self._active[pid]
        for key in list(self._holding):
            if key not in holding:  # released (a later sighting is a new hold)
                del self._holding[key]

    def __enter__(self) -> "LockWatcher":
        self._thread.start()
        self._ready.wait(timeout=15)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
