"""The embedded PostgreSQL servers: a project-owned primary, streaming read replicas
("replica", "replica2" …) and PgBouncer, under one home directory (``LocalCluster``): initdb,
start, stop, status, each replica's base backup and slot, the pooler, destroy.

One module on purpose (one class, ``LocalCluster``, whose primary, replicas and pooler share the
state file, the ports and the start/stop/reload machinery; split, each part would reach into the
others' private methods).

Where things live and the state file: ``studyhub.local.state``; what the servers are configured
with: ``studyhub.local.config``; running their programs and processes: ``studyhub.local.proc``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
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
    EXTRA_REPLICA_RE,
    MAX_REPLICAS,
    OPS_ROLE,
    REPLICATION_ROLE,
    SUPERUSER,
    LocalHome,
    LocalState,
    ReplicaNode,
    local_profile,
    pick_free_port,
    port_is_free,
    replica_slot,
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
    streaming: bool | None = None  # replicas: whether the primary sees it streaming
    lag_bytes: int | None = None  # replicas: WAL bytes not replayed yet


@dataclass
class ClusterStatus:
    home: str
    initialized: bool
    database: str
    primary: NodeStatus
    replica: NodeStatus | None = None  # the first of ``replicas`` (and its streaming/lag)
    replica_streaming: bool | None = None
    replica_lag_bytes: int | None = None
    pooler: NodeStatus | None = None
    server_version: str | None = None
    replicas: list[NodeStatus] = field(default_factory=list)  # every read replica, in order

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
                    extra_lines: tuple[str, ...] = (), replica_name: str = "replica") -> None:
        """Write the configuration files of ``datadir`` (``config.write_conf_files``); a running
        server reloads them."""
        config.write_conf_files(self, datadir, port, replica=replica, archive=archive,
                                extra_lines=extra_lines, replica_name=replica_name)
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
        others = state.taken_ports() - {port}
        if port is None or (not running and not port_is_free(port)):
            port = pick_free_port(exclude=others)
            setattr(state, attr, port)
            self.save_state(state)
        return port

    def _ensure_replica_port(self, state: LocalState, name: str, running: bool) -> int:
        if name == "replica":
            return self._ensure_port(state, "replica_port", running)
        port = state.extra_replicas.get(name)
        if port is None or (not running and not port_is_free(port)):
            port = pick_free_port(exclude=state.taken_ports() - {port})
            state.extra_replicas[name] = port
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

    # --------------------------------------------------------------- replicas
    def _ensure_replica(self, state: LocalState, progress: Progress,
                        name: str = "replica") -> None:
        """Make (pg_basebackup through its own slot, first time) and start the read replica
        ``name``, record it in the state and wait until the primary sees it streaming."""
        datadir = self.replica_node_dir(name)
        slot = replica_slot(name)
        if datadir.exists() and not (datadir / "PG_VERSION").exists():
            shutil.rmtree(datadir)
        if not datadir.exists():
            with self.admin_connect() as conn:  # a slot left by a replica deleted before
                conn.execute(load("do_drop_inactive_replication_slot"), {"slot_name": slot})
            progress(f"pg_basebackup for the streaming replica {name}")
            if name != "replica":
                self.replicas_dir.mkdir(mode=0o755, exist_ok=True)
                proc.chown_to_server(self.replicas_dir)
            datadir.mkdir(mode=0o700)
            proc.chown_to_server(datadir)
            try:
                proc.run_server_cmd(
                    [str(proc.pg_program("pg_basebackup")), "-h", "127.0.0.1", "-p",
                     str(state.primary_port), "-U", REPLICATION_ROLE, "-D", str(datadir),
                     "-X", "stream", "-c", "fast", "-C", "-S", slot, "--no-password"],
                    env={"PGPASSFILE": str(self.replicator_passfile)},
                    what="pg_basebackup",
                    timeout=1800,
                )
            except LocalClusterError:
                shutil.rmtree(datadir, ignore_errors=True)
                raise
            signal_file = datadir / "standby.signal"
            signal_file.touch()
            proc.chown_to_server(signal_file)
            auto = datadir / "postgresql.auto.conf"
            if auto.exists():
                auto.write_text("# primary_conninfo lives in studyhub.conf\n")
        running = bool(self._postmaster_pid(datadir))
        port = self._ensure_replica_port(state, name, running=running)
        self._write_conf(datadir, port, replica=True, replica_name=name)
        self._start_postgres(datadir, name, progress)
        if name == "replica":
            state.has_replica = True
        else:
            state.extra_replicas[name] = port
        self.save_state(state)
        progress(f"waiting for the replica {name} to stream")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._replication_state(slot) == "streaming":
                return
            time.sleep(0.1)
        raise LocalClusterError(
            f"the replica {name} started but is not streaming after 60 s "
            f"({self._last_log_error(self.logs_dir / f'{name}.log')})"
        )

    def _replication_state(self, application_name: str = replica_slot("replica")) -> str | None:
        with self.admin_connect() as conn:
            row = conn.execute(load("get_standby_stream_state"),
                               {"application_name": application_name}).fetchone()
        return row[0] if row else None

    def add_replica(self, name: str | None = None, progress: Progress = _noop) -> ReplicaNode:
        """Add one more streaming read replica (the next free name: "replica", then
        "replica2" …, or ``name`` when given) and wait until it streams. The primary must be
        running."""
        state = self.load_state()
        chosen = name or state.next_replica_name()
        self.check_new_replica_name(chosen, state)
        if not self._postmaster_pid(self.primary_dir):
            raise LocalClusterError("the local primary is not running; start it: "
                                    "studyhub local up")
        self._ensure_replica(state, progress, chosen)
        return next(n for n in self.replica_nodes() if n.name == chosen)

    def check_new_replica_name(self, name: str, state: LocalState | None = None) -> None:
        """Refuse a name a new local replica cannot have (one clear line)."""
        state = state or self.load_state()
        if name in state.replica_names():
            raise LocalClusterError(f"the local cluster already has a replica named {name!r}")
        if name != "replica" and not EXTRA_REPLICA_RE.fullmatch(name):
            raise LocalClusterError(
                f"invalid local replica name {name!r}: 'replica', 'replica2', 'replica3' …")
        if len(state.replica_names()) >= MAX_REPLICAS:
            raise LocalClusterError(f"the local cluster has {MAX_REPLICAS} replicas, its limit "
                                    f"(max_wal_senders and max_replication_slots are 10)")

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
        names = ["primary", *self.load_state().replica_names()]
        if node == "replica" and node not in names:
            return self.replica_dir  # (stopping a removed replica: nothing runs there)
        if node not in names:
            raise LocalClusterError(f"unknown node {node!r}: {', '.join(names)}")
        return self.primary_dir if node == "primary" else self.replica_node_dir(node)

    def stop_node(self, node: str) -> bool:
        """Stop the primary or a replica (by name: "replica", "replica2" …; fast shutdown),
        leaving everything else running and its port recorded. False if it was not
        running."""
        return self._stop_postgres(self._node_dir(node))

    def start_node(self, node: str, progress: Progress = _noop) -> None:
        """Start a stopped primary or replica (by name) again, on its recorded port and
        configuration."""
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

    def up(self, *, replica: bool = False, pooler: bool = False, replicas: int | None = None,
           progress: Progress = _noop) -> ClusterStatus:
        """Create (first time) and start the primary, and the replicas/pooler when asked for or
        when they exist already. ``replicas=N`` makes sure N streaming replicas run (adding
        "replica", "replica2" … as needed; existing ones beyond N keep running: remove one with
        ``remove_replica``). Safe to repeat; recovers from a crash."""
        if replicas is not None and not 0 <= replicas <= MAX_REPLICAS:
            raise LocalClusterError(f"--replicas must be 0-{MAX_REPLICAS} (got {replicas})")
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
        wanted = max(replicas or 0, 1 if replica else 0)
        for name in state.replica_names():
            self._ensure_replica(state, progress, name)
        while len(state.replica_names()) < wanted:
            self._ensure_replica(state, progress, state.next_replica_name())
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
        for node in self.replica_nodes():
            self._stop_postgres(node.datadir)
        self._stop_postgres(self.replica_dir)
        self._stop_postgres(self.primary_dir)
        return self.status()

    def remove_replica(self, name: str = "replica") -> None:
        """Stop the replica ``name``, delete its data directory, forget it in the state and
        drop its replication slot on the primary (when the primary runs; else on the next
        add of a replica by that name)."""
        state = self.load_state()
        if name not in state.replica_names() and name != "replica":
            known = ", ".join(state.replica_names()) or "none"
            raise LocalClusterError(f"no local replica named {name!r} (replicas: {known})")
        datadir = self.replica_node_dir(name)
        self._stop_postgres(datadir)
        shutil.rmtree(datadir, ignore_errors=True)
        state = self.load_state()
        if name == "replica":
            state.has_replica = False
        else:
            state.extra_replicas.pop(name, None)
        self.save_state(state)
        if self._postmaster_pid(self.primary_dir):
            with self.admin_connect() as conn:
                conn.execute(load("do_drop_inactive_replication_slot"),
                             {"slot_name": replica_slot(name)})

    def destroy_plan(self) -> list[Path]:
        """What ``destroy`` removes (the audit log stays)."""
        names = ("primary", "replica", "replicas", "forks", "basebackups", "wal-archive", "server", "logs",
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
        streams: dict[str, tuple[bool, int | None]] = {}
        if primary_pid:
            try:
                with self.admin_connect() as conn:
                    result.server_version = conn.execute("SHOW server_version").fetchone()[0]
                    for node in self.replica_nodes(state):
                        row = conn.execute(load("get_standby_stream_state"),
                                           {"application_name": node.slot}).fetchone()
                        streams[node.name] = (bool(row and row[0] == "streaming"),
                                              int(row[1]) if row and row[1] is not None
                                              else None)
            except psycopg.Error as exc:
                result.primary.detail = f"not answering: {str(exc).splitlines()[0]}"
        for node in self.replica_nodes(state):
            pid = self._postmaster_pid(node.datadir)
            streaming, lag = streams.get(node.name, (None, None))
            result.replicas.append(NodeStatus(node.name, node.port, pid is not None, pid,
                                              streaming=streaming, lag_bytes=lag))
        if result.replicas:
            first = result.replicas[0]
            result.replica = first
            result.replica_streaming = first.streaming
            result.replica_lag_bytes = first.lag_bytes
        if state.has_pooler:
            pid = self._pooler_pid()
            result.pooler = NodeStatus("pooler", state.pooler_port, pid is not None, pid)
        return result
