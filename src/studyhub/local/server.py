"""The embedded PostgreSQL servers: a project-owned primary, an optional streaming replica and
PgBouncer, under one home directory (``LocalCluster``): initdb, start, stop, status, the
replica's base backup and slot, the pooler, destroy.

Where things live and the state file: ``studyhub.local.state``; what the servers are configured
with: ``studyhub.local.config``; running their programs and processes: ``studyhub.local.proc``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from studyhub.audit import audited
from studyhub.errors import LocalClusterError
from studyhub.local import config, proc
from studyhub.local.proc import Progress, _noop
from studyhub.local.state import (
    APP_DATABASE,
    APP_ROLE,
    OPS_ROLE,
    REPLICA_APP_NAME,
    REPLICA_SLOT,
    REPLICATION_ROLE,
    SUPERUSER,
    LocalHome,
    LocalState,
    local_profile,
    pick_free_port,
    port_is_free,
)
from studyhub.ops.queries import load
from studyhub.profile_model import Profile


@dataclass
class NodeStatus:
    name: str
    port: int | None
    running: bool
    pid: int | None = None
    detail: str | None = None


@dataclass
class ClusterStatus:
    home: str
    initialized: bool
    database: str
    primary: NodeStatus
    replica: NodeStatus | None = None
    replica_streaming: bool | None = None
    replica_lag_bytes: int | None = None
    pooler: NodeStatus | None = None
    server_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)



class LocalCluster(LocalHome):
    """Start, stop and inspect the project-owned clusters under one home directory (its paths
    and state file: ``LocalHome``)."""

    def profile(self, explicit: bool = False) -> Profile:
        """How to reach this cluster (``studyhub.local.local_profile``)."""
        return local_profile(self.home, explicit=explicit)

    def admin_connect(self, dbname: str = "postgres", port: int | None = None) -> psycopg.Connection:
        port = port or self.load_state().primary_port
        return psycopg.connect(
            host="127.0.0.1",
            port=port,
            dbname=dbname,
            user=SUPERUSER,
            passfile=str(self.passfile),
            sslmode="disable",
            autocommit=True,
            connect_timeout=10,
            application_name="studyhub-local",
        )

    # ------------------------------------------------------------ directories
    def _prepare_dirs(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        blocked = proc.server_user_can_reach(self.home)
        if blocked is not None:
            raise LocalClusterError(
                f"the {proc.server_user().name} OS user cannot traverse {blocked} "
                f"(mode {blocked.stat().st_mode & 0o777:04o}), so it cannot reach {self.home}; "
                f"set STUDYHUB_HOME to a directory it can reach (e.g. under /var/tmp)"
            )
        os.chmod(self.home, 0o755)
        self.secrets_dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.secrets_dir, 0o700)
        for d in (self.server_dir, self.logs_dir, self.wal_archive_dir):
            d.mkdir(exist_ok=True)
            proc.chown_to_server(d)
        os.chmod(self.server_dir, 0o700)
        os.chmod(self.wal_archive_dir, 0o700)
        os.chmod(self.logs_dir, 0o755)

    # ------------------------------------------------------------------- conf

    def _write_conf(self, datadir: Path, port: int, *, replica: bool, archive: bool | None = None,
                    extra_lines: tuple[str, ...] = ()) -> None:
        """Write the configuration files of ``datadir`` (``config.write_conf_files``); a running
        server reloads them."""
        config.write_conf_files(self, datadir, port, replica=replica, archive=archive,
                                extra_lines=extra_lines)
        if self._postmaster_pid(datadir):
            self._reload(port)

    def _reload(self, port: int, timeout_s: float = 10.0) -> None:
        """Make a running server re-read its configuration (studyhub.conf, pg_hba.conf) and
        wait until new sessions see it, so a cluster made by an older version gets today's
        settings (e.g. LOG_PRIVACY_SETTINGS) from ``up`` without a restart. Settings that need
        a restart keep their old value until then (the server logs which)."""
        with self.admin_connect(port=port) as conn:
            before = conn.execute("SELECT pg_conf_load_time()").fetchone()[0]
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.admin_connect(port=port) as conn:  # a new session: the postmaster's time
                if conn.execute("SELECT pg_conf_load_time()").fetchone()[0] > before:
                    return
            time.sleep(0.05)
        raise LocalClusterError(f"the server on port {port} did not reload its configuration "
                                f"within {timeout_s:.0f} s")

    # -------------------------------------------------------------- processes
    # (``proc``'s functions on this cluster's directories; the cluster backend's forks use them)
    def _postmaster_pid(self, datadir: Path) -> int | None:
        return proc.postmaster_pid(datadir)

    def _start_postgres(self, datadir: Path, name: str, progress: Progress) -> None:
        proc.start_postgres(datadir, self.logs_dir / f"{name}.log", name, progress)

    def _last_log_error(self, log: Path) -> str:
        return proc.last_log_error(log)

    def _stop_postgres(self, datadir: Path) -> bool:
        return proc.stop_postgres(datadir)

    def _pooler_pid(self) -> int | None:
        return proc.pgbouncer_pid(self.pgbouncer_pidfile)

    # ---------------------------------------------------------------- primary
    def _ensure_port(self, state: LocalState, attr: str, running: bool) -> int:
        port = getattr(state, attr)
        others = {state.primary_port, state.replica_port, state.pooler_port} - {port, None}
        if port is None or (not running and not port_is_free(port)):
            port = pick_free_port(exclude=others)  # type: ignore[arg-type]
            setattr(state, attr, port)
            self.save_state(state)
        return port

    def _init_primary(self, passwords: dict[str, str], progress: Progress) -> None:
        if self.primary_dir.exists() and not (self.primary_dir / "PG_VERSION").exists():
            shutil.rmtree(self.primary_dir)  # an initdb that did not finish
        if self.primary_dir.exists():
            return
        progress("initdb (PostgreSQL 15, data checksums on)")
        self.primary_dir.mkdir(mode=0o700)
        proc.chown_to_server(self.primary_dir)
        pwfile = self.server_dir / "initdb.pw"
        proc.write_private(pwfile, passwords[SUPERUSER] + "\n", server_owned=True)
        try:
            proc.run_server_cmd(
                [str(proc.pg_program("initdb")), "-D", str(self.primary_dir), "-U", SUPERUSER,
                 f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                 "--locale=C.UTF-8", "--data-checksums"],
                what="initdb",
            )
        except LocalClusterError:
            shutil.rmtree(self.primary_dir, ignore_errors=True)
            raise
        finally:
            pwfile.unlink(missing_ok=True)

    def _bootstrap_sql(self, passwords: dict[str, str]) -> None:
        """Roles, database and extensions; idempotent. Passwords go over the wire pre-hashed
        (SCRAM verifiers), so no plain password can reach a server log."""
        with self.admin_connect() as conn:
            config.create_roles(conn, passwords)
            if not conn.execute(load("get_databases_like"), {"names": [APP_DATABASE]}).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(APP_DATABASE), sql.Identifier(APP_ROLE)
                    )
                )
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        with self.admin_connect(APP_DATABASE) as conn:
            config.create_extensions(conn)
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(APP_DATABASE), sql.Identifier(OPS_ROLE)
                )
            )

    def create_database(self, name: str, owner: str = APP_ROLE) -> None:
        """Create another database owned by the app role (tests, scratch restores)."""
        with self.admin_connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(owner)
                )
            )
        with self.admin_connect(name) as conn:
            config.create_extensions(conn)

    def drop_database(self, name: str) -> None:
        with self.admin_connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _start_primary_with_port_retry(self, state: LocalState, progress: Progress) -> None:
        for attempt in range(3):
            port = self._ensure_port(
                state, "primary_port", running=bool(self._postmaster_pid(self.primary_dir))
            )
            self._write_conf(self.primary_dir, port, replica=False)
            try:
                self._start_postgres(self.primary_dir, "primary", progress)
                return
            except LocalClusterError as exc:
                if "could not bind" in str(exc) or "in use" in str(exc):
                    if attempt < 2:  # another process took the port between check and bind
                        state.primary_port = None
                        continue
                raise

    # ---------------------------------------------------------------- replica
    def _ensure_replica(self, state: LocalState, progress: Progress) -> None:
        if self.replica_dir.exists() and not (self.replica_dir / "PG_VERSION").exists():
            shutil.rmtree(self.replica_dir)
        if not self.replica_dir.exists():
            with self.admin_connect() as conn:  # a slot left by a replica deleted before
                conn.execute(load("do_drop_inactive_replication_slot"),
                             {"slot_name": REPLICA_SLOT})
            progress("pg_basebackup for the streaming replica")
            self.replica_dir.mkdir(mode=0o700)
            proc.chown_to_server(self.replica_dir)
            try:
                proc.run_server_cmd(
                    [str(proc.pg_program("pg_basebackup")), "-h", "127.0.0.1", "-p",
                     str(state.primary_port), "-U", REPLICATION_ROLE, "-D", str(self.replica_dir),
                     "-X", "stream", "-c", "fast", "-C", "-S", REPLICA_SLOT, "--no-password"],
                    env={"PGPASSFILE": str(self.replicator_passfile)},
                    what="pg_basebackup",
                    timeout=1800,
                )
            except LocalClusterError:
                shutil.rmtree(self.replica_dir, ignore_errors=True)
                raise
            signal_file = self.replica_dir / "standby.signal"
            signal_file.touch()
            proc.chown_to_server(signal_file)
            auto = self.replica_dir / "postgresql.auto.conf"
            if auto.exists():
                auto.write_text("# primary_conninfo lives in studyhub.conf\n")
        running = bool(self._postmaster_pid(self.replica_dir))
        port = self._ensure_port(state, "replica_port", running=running)
        self._write_conf(self.replica_dir, port, replica=True)
        self._start_postgres(self.replica_dir, "replica", progress)
        state.has_replica = True
        self.save_state(state)
        progress("waiting for the replica to stream")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._replication_state() == "streaming":
                return
            time.sleep(0.1)
        raise LocalClusterError(
            "the replica started but is not streaming after 60 s "
            f"({self._last_log_error(self.logs_dir / 'replica.log')})"
        )

    def _replication_state(self) -> str | None:
        with self.admin_connect() as conn:
            row = conn.execute(load("get_standby_stream_state"),
                               {"application_name": REPLICA_APP_NAME}).fetchone()
        return row[0] if row else None

    # ----------------------------------------------------------------- pooler

    def _ensure_pooler(self, state: LocalState, progress: Progress) -> None:
        running = self._pooler_pid() is not None
        port = self._ensure_port(state, "pooler_port", running=running)
        state.pooler_port = port
        text = config.pgbouncer_conf(self, state)
        if not running:
            proc.write_private(self.pgbouncer_ini, text, server_owned=True)
            self.pgbouncer_pidfile.unlink(missing_ok=True)
            progress("starting pgbouncer (transaction pooling)")
            proc.run_server_cmd(
                [str(proc.pgbouncer_program()), "-d", "-q", str(self.pgbouncer_ini)],
                what="pgbouncer",
            )
        state.has_pooler = True
        self.save_state(state)
        self._wait_for_pooler(port)

    def _wait_for_pooler(self, port: int) -> None:
        deadline = time.monotonic() + 20
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with psycopg.connect(
                    **self.profile().endpoint("pooler").conninfo(),
                    connect_timeout=5,
                    prepare_threshold=None,
                ) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last = exc
                time.sleep(0.1)
        raise LocalClusterError(f"pgbouncer is not answering on port {port}: {last}")

    def pooler_admin_connect(self) -> psycopg.Connection:
        """PgBouncer's admin console (SHOW …, RELOAD) as the superuser (its admin_users)."""
        return psycopg.connect(
            host="127.0.0.1", port=self.load_state().pooler_port, dbname="pgbouncer",
            user=SUPERUSER, passfile=str(self.passfile), sslmode="disable", autocommit=True,
            connect_timeout=10, prepare_threshold=None,
        )

    def reload_pooler(self) -> bool:
        """Rewrite pgbouncer.ini from the state; a running PgBouncer reloads it (RELOAD on its
        admin console, which answers once the new file is in effect). False if not running."""
        state = self.load_state()
        proc.write_private(self.pgbouncer_ini, config.pgbouncer_conf(self, state),
                           server_owned=True)
        if self._pooler_pid() is None:
            return False
        with self.pooler_admin_connect() as conn:
            conn.execute("RELOAD")
        return True

    def _stop_pooler(self) -> bool:
        pid = self._pooler_pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.process_exe_name(pid) == "pgbouncer":
            time.sleep(0.05)
        return True

    # ------------------------------------------------------------- public API
    def _node_dir(self, node: str) -> Path:
        dirs = {"primary": self.primary_dir, "replica": self.replica_dir}
        if node not in dirs:
            raise LocalClusterError(f"unknown node {node!r}: primary or replica")
        return dirs[node]

    def stop_node(self, node: str) -> bool:
        """Stop the primary or the replica (fast shutdown), leaving everything else running and
        its port recorded. False if it was not running."""
        return self._stop_postgres(self._node_dir(node))

    def start_node(self, node: str, progress: Progress = _noop) -> None:
        """Start a stopped primary or replica again, on its recorded port and configuration."""
        self._start_postgres(self._node_dir(node), node, progress)

    def stop_pooler(self) -> bool:
        """Stop PgBouncer (its port and configuration stay). False if it was not running."""
        return self._stop_pooler()

    def start_pooler(self) -> None:
        """Start a stopped PgBouncer with its recorded port and configuration; wait until it
        answers."""
        if self._pooler_pid() is None:
            self.pgbouncer_pidfile.unlink(missing_ok=True)
            proc.run_server_cmd(
                [str(proc.pgbouncer_program()), "-d", "-q", str(self.pgbouncer_ini)],
                what="pgbouncer",
            )
        self._wait_for_pooler(self.load_state().pooler_port)

    def pooler_pid(self) -> int | None:
        """PID of the running PgBouncer, or None."""
        return self._pooler_pid()

    def up(self, *, replica: bool = False, pooler: bool = False,
           progress: Progress = _noop) -> ClusterStatus:
        """Create (first time) and start the primary, and the replica/pooler when asked for or
        when they exist already. Safe to repeat; recovers from a crash."""
        proc.pg_bindir()  # clear error early when the server is not installed
        if pooler:
            proc.pgbouncer_program()
        self._prepare_dirs()
        state = self.load_state()
        if state.created_at is None:
            state.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
            self.save_state(state)
        passwords = config.passwords(self)
        config.write_server_secrets(self, passwords)
        self._init_primary(passwords, progress)
        self._start_primary_with_port_retry(state, progress)
        if not state.bootstrapped:
            progress("creating roles and the studyhub database")
            self._bootstrap_sql(passwords)
            state.bootstrapped = True
            self.save_state(state)
        if replica or state.has_replica:
            self._ensure_replica(state, progress)
        if pooler or state.has_pooler:
            self._ensure_pooler(state, progress)
        return self.status()

    def fork_dirs(self) -> list[Path]:
        """Data directories of point-in-time forks (``studyhub cluster fork``)."""
        if not self.forks_dir.is_dir():
            return []
        return sorted(p for p in self.forks_dir.iterdir() if (p / "PG_VERSION").exists())

    def down(self) -> ClusterStatus:
        """Stop forks, pooler, replica and primary (fast shutdown). Data stays."""
        for fork in self.fork_dirs():
            self._stop_postgres(fork)
        self._stop_pooler()
        self._stop_postgres(self.replica_dir)
        self._stop_postgres(self.primary_dir)
        return self.status()

    def remove_replica(self) -> None:
        self._stop_postgres(self.replica_dir)
        shutil.rmtree(self.replica_dir, ignore_errors=True)
        state = self.load_state()
        state.has_replica = False
        self.save_state(state)
        if self._postmaster_pid(self.primary_dir):
            with self.admin_connect() as conn:
                conn.execute(load("do_drop_inactive_replication_slot"),
                             {"slot_name": REPLICA_SLOT})

    def destroy_plan(self) -> list[Path]:
        """What ``destroy`` removes (the audit log stays)."""
        names = ("primary", "replica", "forks", "basebackups", "wal-archive", "server", "logs",
                 "secrets", "state.json")
        return [self.home / n for n in names if (self.home / n).exists()]

    def destroy(self) -> list[Path]:
        """Stop everything and delete what ``destroy_plan`` lists; audited as local.destroy
        (also when it fails part way)."""
        with audited("local.destroy", "local", home=str(self.home)) as audit:
            self.down()
            removed = self.destroy_plan()
            for path in removed:
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()
            audit["removed"] = [p.name for p in removed]
        return removed

    def status(self) -> ClusterStatus:
        state = self.load_state()
        primary_pid = self._postmaster_pid(self.primary_dir)
        result = ClusterStatus(
            home=str(self.home),
            initialized=self.initialized,
            database=APP_DATABASE,
            primary=NodeStatus("primary", state.primary_port, primary_pid is not None, primary_pid),
        )
        if primary_pid:
            try:
                with self.admin_connect() as conn:
                    result.server_version = conn.execute("SHOW server_version").fetchone()[0]
                    if state.has_replica:
                        row = conn.execute(load("get_standby_stream_state"),
                                           {"application_name": REPLICA_APP_NAME}).fetchone()
                        result.replica_streaming = bool(row and row[0] == "streaming")
                        result.replica_lag_bytes = int(row[1]) if row and row[1] is not None else None
            except psycopg.Error as exc:
                result.primary.detail = f"not answering: {str(exc).splitlines()[0]}"
        if state.has_replica:
            pid = self._postmaster_pid(self.replica_dir)
            result.replica = NodeStatus("replica", state.replica_port, pid is not None, pid)
        if state.has_pooler:
            pid = self._pooler_pid()
            result.pooler = NodeStatus("pooler", state.pooler_port, pid is not None, pid)
        return result
