"""Helpers for the diagnostics tests: real sessions doing real things in the background."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import psycopg

from studyhub.audit import read_audit
from tests.conftest import connect_as


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy (returns its value); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Background:
    """Run one statement on its own connection in a thread (e.g. one that will block)."""

    def __init__(self, profile, statement: str, *, role: str = "app", database: str | None = None,
                 setup: list[str] | None = None, autocommit: bool = True) -> None:
        self.conn = connect_as(profile, role, database, autocommit=autocommit)
        for s in setup or []:
            self.conn.execute(s)
        self.pid = self.conn.info.backend_pid
        self.error: BaseException | None = None
        self.statement = statement
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.conn.execute(self.statement)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            self.error = exc

    def join(self, timeout: float = 20) -> None:
        self.thread.join(timeout)

    def close(self) -> None:
        try:
            self.conn.cancel()
        except Exception:  # noqa: BLE001
            pass
        self.join(10)
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001
            pass


def backend_state(profile, pid: int) -> tuple | None:
    with connect_as(profile, "admin") as c:
        return c.execute("SELECT state, wait_event_type, cardinality(pg_blocking_pids(pid)) "
                         "FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()


def is_waiting_for_lock(profile, pid: int) -> bool:
    row = backend_state(profile, pid)
    return bool(row and row[2] > 0)


def is_running(profile, pid: int, fragment: str) -> bool:
    with connect_as(profile, "admin") as c:
        row = c.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s",
                        (pid,)).fetchone()
    return bool(row and row[0] == "active" and fragment in row[1])


def as_json(result) -> Any:
    assert result.stdout.strip(), result.stderr
    return json.loads(result.stdout)


def audit_lines(action_prefix: str) -> list[dict]:
    return [a for a in read_audit() if a["action"].startswith(action_prefix)]


def alive(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
        return True
    except psycopg.OperationalError:
        return False
