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


def local_passwords(cluster) -> dict[str, str]:
    """Role → password of the session cluster (from its passfile)."""
    return {line.split(":")[3]: line.split(":")[4]
            for line in cluster.passfile.read_text().splitlines()}


def remote_profile_env(monkeypatch, cluster, name: str, *, database: str,
                       ops_user: str = "studyhub_ops", ops_password: str | None = None,
                       tmp_path=None) -> None:
    """Point profile ``name`` (staging or production) at the session cluster over TLS
    (sslmode=require), as a remote profile: its protection rules apply as in real life."""
    pw = local_passwords(cluster)
    prefix = f"STUDYHUB_{name.upper()}_"
    env = {
        "HOST": "127.0.0.1", "PORT": str(cluster.profile().port), "DATABASE": database,
        "PASSWORD": pw["studyhub_app"], "OPS_USER": ops_user,
        "OPS_PASSWORD": ops_password or pw["studyhub_ops"], "POOLER_PORT": "",
    }
    for key, value in env.items():
        if value == "":
            monkeypatch.delenv(prefix + key, raising=False)
        else:
            monkeypatch.setenv(prefix + key, value)
    if tmp_path is not None:
        monkeypatch.setenv("STUDYHUB_CONFIG", str(tmp_path / "absent.toml"))
        monkeypatch.setenv("STUDYHUB_SECRETS_FILE", str(tmp_path / "absent-secrets.toml"))


class TemporaryRole:
    """A login role created for one test (CONNECT on ``database`` plus ``grants``), dropped
    after: e.g. an ops user an administrator set up without pg_monitor."""

    def __init__(self, profile, database: str, *, grants: tuple[str, ...] = ()) -> None:
        import secrets

        self.profile, self.database, self.grants = profile, database, grants
        self.name = f"t_ops_{secrets.token_hex(4)}"
        self.password = secrets.token_urlsafe(16)

    def __enter__(self) -> "TemporaryRole":
        from psycopg import sql

        with connect_as(self.profile, "admin", self.database) as c:
            c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(self.name), sql.Literal(self.password)))
            c.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(self.database), sql.Identifier(self.name)))
            for g in self.grants:
                c.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(g),
                                                          sql.Identifier(self.name)))
        return self

    def __exit__(self, *exc) -> None:
        from psycopg import sql

        with connect_as(self.profile, "admin", self.database) as c:
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE usename = %s", (self.name,))
            c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(self.name)))
            c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(self.name)))
