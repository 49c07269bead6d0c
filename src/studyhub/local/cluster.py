"""The embedded PostgreSQL: a project-owned primary, optional streaming replica and PgBouncer.

Layout under ``$STUDYHUB_HOME`` (default ``.studyhub/``)::

    state.json          ports and components (no secrets)
    secrets/pgpass      0600 libpq passfile for every local role (the invoking user's)
    server/             0700, owned by the server user: replicator passfile, pgbouncer config
    primary/ replica/   data directories
    wal-archive/        0700, owned by the server user: the primary's archived WAL (for PITR)
    basebackups/ forks/ base backups and point-in-time forks (``studyhub cluster``)
    logs/               server and pooler logs
    audit.log           audit lines of destructive commands (kept by ``local destroy``)

Every server listens on 127.0.0.1 only, on ports picked from a free range and recorded; Unix
sockets are off. Authentication is SCRAM with random passwords that live only in the 0600
passfiles above.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import psycopg
from psycopg import sql

from studyhub.errors import LocalClusterError
from studyhub.local import proc
from studyhub.paths import studyhub_home
from studyhub.profiles import Profile

APP_DATABASE = "studyhub"
SUPERUSER = "postgres"
APP_ROLE = "studyhub_app"
OPS_ROLE = "studyhub_ops"
REPLICATION_ROLE = "studyhub_replicator"
REPLICA_SLOT = "studyhub_replica"
REPLICA_APP_NAME = "studyhub_replica"
DEFAULT_PORT_RANGE = (54320, 54999)
STATE_VERSION = 1

Progress = Callable[[str], None]


def _noop(_: str) -> None:
    pass


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


@dataclass
class LocalState:
    version: int = STATE_VERSION
    primary_port: int | None = None
    replica_port: int | None = None
    pooler_port: int | None = None
    has_replica: bool = False
    has_pooler: bool = False
    bootstrapped: bool = False
    created_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# What the server writes into its log: the error itself and events, never the values a statement
# carried (an email in a unique violation's DETAIL, a failing row, bound parameters, statement
# texts with literals). These settings reach every server `local up` starts or finds running
# (primary, replica, forks); docs/local.md lists what each one keeps out.
LOG_PRIVACY_SETTINGS: dict[str, str] = {
    # No DETAIL (key values, failing rows, deadlock reports' query texts, parse trees of
    # debug_print_*), HINT, QUERY or CONTEXT (bound parameters of a failed statement).
    "log_error_verbosity": "terse",
    # No STATEMENT line after an error, a FATAL (a terminated query) or a LOG message.
    "log_min_error_statement": "panic",
    # No statement texts: none logged by kind, by duration, by sample, by transaction.
    "log_statement": "none",
    "log_min_duration_statement": "-1",
    "log_min_duration_sample": "-1",
    "log_transaction_sample_rate": "0",
    # And should one of those be turned on for a session: no bound parameter values with it.
    "log_parameter_max_length": "0",
    "log_parameter_max_length_on_error": "0",
    "log_replication_commands": "off",
}


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def port_range() -> tuple[int, int]:
    raw = os.environ.get("STUDYHUB_PORT_RANGE")
    if not raw:
        return DEFAULT_PORT_RANGE
    try:
        lo, hi = (int(x) for x in raw.split("-", 1))
    except ValueError:
        raise LocalClusterError(
            f"STUDYHUB_PORT_RANGE={raw!r} is not of the form LOW-HIGH (e.g. 54320-54999)"
        ) from None
    if not (1024 <= lo <= hi <= 65535):
        raise LocalClusterError(f"STUDYHUB_PORT_RANGE={raw!r} must lie within 1024-65535")
    return lo, hi


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now. Like PostgreSQL and PgBouncer we set
    SO_REUSEADDR, so connections of a just-stopped server lingering in TIME_WAIT do not make
    its port look taken (a restart keeps its port); a live listener still does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_free_port(exclude: set[int] = frozenset()) -> int:  # type: ignore[assignment]
    lo, hi = port_range()
    span = hi - lo + 1
    start = (os.getpid() * 7919 + int(time.monotonic() * 1000)) % span  # spread parallel runs
    for i in range(span):
        port = lo + (start + i) % span
        if port not in exclude and port_is_free(port):
            return port
    raise LocalClusterError(
        f"no free TCP port in {lo}-{hi} on 127.0.0.1; free one or set STUDYHUB_PORT_RANGE"
    )


class LocalCluster:
    """Start, stop and inspect the project-owned clusters under one home directory."""

    def __init__(self, home: Path | None = None) -> None:
        self.home = (home or studyhub_home()).absolute()
        self.state_file = self.home / "state.json"
        self.secrets_dir = self.home / "secrets"
        self.passfile = self.secrets_dir / "pgpass"
        self.server_dir = self.home / "server"
        self.logs_dir = self.home / "logs"
        self.primary_dir = self.home / "primary"
        self.replica_dir = self.home / "replica"
        self.wal_archive_dir = self.home / "wal-archive"
        self.basebackups_dir = self.home / "basebackups"
        self.forks_dir = self.home / "forks"
        self.replicator_passfile = self.server_dir / "replicator.pgpass"
        self.pgbouncer_ini = self.server_dir / "pgbouncer.ini"
        self.pgbouncer_userlist = self.server_dir / "userlist.txt"
        self.pgbouncer_pidfile = self.server_dir / "pgbouncer.pid"
        self.audit_log = self.home / "audit.log"

    # ------------------------------------------------------------------ state
    def load_state(self) -> LocalState:
        if not self.state_file.exists():
            return LocalState()
        data = json.loads(self.state_file.read_text())
        known = {k: v for k, v in data.items() if k in LocalState.__dataclass_fields__}
        return LocalState(**known)

    def save_state(self, state: LocalState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @property
    def initialized(self) -> bool:
        return (self.primary_dir / "PG_VERSION").exists() and self.load_state().bootstrapped

    # --------------------------------------------------------------- profile
    def profile(self, explicit: bool = False) -> Profile:
        state = self.load_state()
        if not state.primary_port:
            from studyhub.errors import ConfigError

            raise ConfigError(
                f"the local cluster under {self.home} is not set up; run: studyhub local up"
            )
        return Profile(
            name="local",
            kind="local",
            host="127.0.0.1",
            port=state.primary_port,
            database=APP_DATABASE,
            sslmode="disable",
            users={"app": APP_ROLE, "ops": OPS_ROLE, "admin": SUPERUSER},
            password_sources={r: f"passfile {self.passfile}" for r in ("app", "ops", "admin")},
            passfile=self.passfile,
            pooler_port=state.pooler_port if state.has_pooler else None,
            replica_host="127.0.0.1" if state.has_replica else None,
            replica_port=state.replica_port if state.has_replica else None,
            explicit=explicit,
        )

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

    def _passwords(self) -> dict[str, str]:
        """Role → password, read from our passfile (created on first use)."""
        found: dict[str, str] = {}
        if self.passfile.exists():
            for line in self.passfile.read_text().splitlines():
                parts = line.split(":")
                if len(parts) == 5:
                    found[parts[3]] = parts[4]
        changed = False
        for role in (SUPERUSER, APP_ROLE, OPS_ROLE, REPLICATION_ROLE):
            if role not in found:
                found[role] = secrets.token_urlsafe(24)  # url-safe: no ':' or '\\' to escape
                changed = True
        if changed or not self.passfile.exists():
            proc.write_private(
                self.passfile, "".join(f"127.0.0.1:*:*:{r}:{p}\n" for r, p in found.items())
            )
        return found

    def _write_server_secrets(self, passwords: dict[str, str]) -> None:
        proc.write_private(
            self.replicator_passfile,
            f"127.0.0.1:*:*:{REPLICATION_ROLE}:{passwords[REPLICATION_ROLE]}\n",
            server_owned=True,
        )
        userlist = "".join(
            f'"{role}" "{passwords[role]}"\n' for role in (APP_ROLE, OPS_ROLE, SUPERUSER)
        )
        proc.write_private(self.pgbouncer_userlist, userlist, server_owned=True)

    # ------------------------------------------------------------------- conf
    def _archive_conf(self) -> list[str]:
        """Continuous archiving into wal-archive/ (point-in-time recovery, ``cluster fork``).
        An archived segment is never overwritten: a second copy of an identical file counts as
        archived (as after a crash), a different one fails; copies are synced, then renamed."""
        d = shlex.quote(str(self.wal_archive_dir))
        command = (
            f"if test -f {d}/%f; then cmp -s %p {d}/%f; "
            f"else cp %p {d}/%f.part && sync {d}/%f.part && mv {d}/%f.part {d}/%f; fi"
        )
        return ["archive_mode = on", f"archive_command = {conf_quote(command)}"]

    def _server_conf(self, port: int, *, replica: bool, archive: bool | None = None,
                     extra_lines: tuple[str, ...] = ()) -> str:
        """studyhub.conf for a server on ``port``; the primary archives WAL (``archive`` defaults
        to ``not replica``), others (replica, forks) never write into its archive."""
        lines = [
            "# written by studyhub local; edits are overwritten",
            "listen_addresses = '127.0.0.1'",
            f"port = {port}",
            "unix_socket_directories = ''",
            "shared_preload_libraries = 'pg_stat_statements'",
            "pg_stat_statements.track = 'top'",
            "pg_stat_statements.max = 5000",
            "compute_query_id = 'on'",
            "track_io_timing = on",
            "track_activity_query_size = 4096",
            "wal_level = 'replica'",
            "max_wal_senders = 10",
            "max_replication_slots = 10",
            "wal_keep_size = '256MB'",
            "hot_standby = on",
            "hot_standby_feedback = on",
            "max_connections = 100",
            "shared_buffers = '256MB'",
            "maintenance_work_mem = '256MB'",
            "max_wal_size = '4GB'",
            "checkpoint_timeout = '15min'",
            "ssl = on",
            "ssl_cert_file = 'server.crt'",
            "ssl_key_file = 'server.key'",
            "log_line_prefix = '%m [%p] %q%u@%d '",
            "log_timezone = 'UTC'",
            "timezone = 'UTC'",
            "# no personal data in the server log (LOG_PRIVACY_SETTINGS)",
            *(f"{name} = {conf_quote(value)}" for name, value in LOG_PRIVACY_SETTINGS.items()),
        ]
        if replica:
            lines += [
                f"primary_conninfo = 'host=127.0.0.1 port={self.load_state().primary_port} "
                f"user={REPLICATION_ROLE} passfile={self.replicator_passfile} "
                f"application_name={REPLICA_APP_NAME}'",
                f"primary_slot_name = '{REPLICA_SLOT}'",
            ]
        archive = (not replica) if archive is None else archive
        lines += self._archive_conf() if archive else ["archive_mode = off"]
        lines += self.load_state().extra.get("conf_lines", [])
        lines += extra_lines
        return "\n".join(lines) + "\n"

    def _ensure_certificate(self, datadir: Path) -> None:
        """A self-signed server certificate, so SSL code paths (sslmode=require/verify-ca) can
        be exercised against the local cluster; clients find it at secrets/server.crt."""
        crt, key = datadir / "server.crt", datadir / "server.key"
        if datadir != self.primary_dir:  # replicas serve the primary's certificate
            for name in ("server.crt", "server.key"):
                if not (datadir / name).exists():
                    shutil.copy2(self.primary_dir / name, datadir / name)
                    proc.chown_to_server(datadir / name)
            return
        if not (crt.exists() and key.exists()):
            proc.run_server_cmd(
                ["openssl", "req", "-new", "-x509", "-days", "3650", "-nodes", "-newkey",
                 "rsa:2048", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                 "-keyout", str(key), "-out", str(crt)],
                what="openssl (server certificate)",
            )
            os.chmod(key, 0o600)
        shutil.copyfile(crt, self.secrets_dir / "server.crt")

    def _write_conf(self, datadir: Path, port: int, *, replica: bool, archive: bool | None = None,
                    extra_lines: tuple[str, ...] = ()) -> None:
        self._ensure_certificate(datadir)
        conf = datadir / "studyhub.conf"
        conf.write_text(self._server_conf(port, replica=replica, archive=archive,
                                          extra_lines=extra_lines))
        proc.chown_to_server(conf)
        main = datadir / "postgresql.conf"
        text = main.read_text()
        if "include_if_exists = 'studyhub.conf'" not in text:
            main.write_text(text + "\ninclude_if_exists = 'studyhub.conf'\n")
        hba = datadir / "pg_hba.conf"
        hba.write_text(
            "# written by studyhub local\n"
            "# TYPE  DATABASE     USER                 ADDRESS        METHOD\n"
            f"host    replication  {REPLICATION_ROLE}  127.0.0.1/32   scram-sha-256\n"
            "host    all          all                  127.0.0.1/32   scram-sha-256\n"
        )
        proc.chown_to_server(hba)
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
    def _postmaster_pid(self, datadir: Path) -> int | None:
        """PID of a live postmaster serving ``datadir``; clears a stale postmaster.pid."""
        pidfile = datadir / "postmaster.pid"
        try:
            first = pidfile.read_text().splitlines()[0]
            pid = int(first)
        except (FileNotFoundError, IndexError, ValueError):
            return None
        if proc.process_exe_name(pid) == "postgres" and proc.process_cwd(pid) == datadir.resolve():
            return pid
        return None

    def _clear_crash_leftovers(self, datadir: Path, progress: Progress) -> None:
        """After a crash: kill orphaned backends of a dead postmaster, drop its stale pid file."""
        pidfile = datadir / "postmaster.pid"
        orphans = [p for p in proc.pids_with_cwd(datadir) if proc.process_exe_name(p) == "postgres"]
        if orphans:
            progress(f"killing {len(orphans)} orphaned server process(es) of a crashed postmaster")
            for pid in orphans:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(
                proc.process_cwd(p) is not None for p in orphans
            ):
                time.sleep(0.05)
        if pidfile.exists():
            progress(f"removing stale {pidfile.name}")
            pidfile.unlink()

    def _start_postgres(self, datadir: Path, name: str, progress: Progress) -> None:
        if self._postmaster_pid(datadir):
            return
        self._clear_crash_leftovers(datadir, progress)
        log = self.logs_dir / f"{name}.log"
        progress(f"starting {name}")
        result = proc.run_server_cmd(
            [str(proc.pg_program("pg_ctl")), "-D", str(datadir), "-l", str(log), "-w",
             "-t", "120", "start"],
            check=False,
            timeout=180,
        )
        if result.returncode != 0 or not self._postmaster_pid(datadir):
            raise LocalClusterError(f"{name} did not start: {self._last_log_error(log)}")

    def _last_log_error(self, log: Path) -> str:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            return "no log written"
        for line in reversed(lines[-50:]):
            if "FATAL" in line or "ERROR" in line or "PANIC" in line:
                return line.split(" ", 3)[-1] + f" (see {log})"
        return (lines[-1] if lines else "no log output") + f" (see {log})"

    def _stop_postgres(self, datadir: Path) -> bool:
        if not self._postmaster_pid(datadir):
            return False
        proc.run_server_cmd(
            [str(proc.pg_program("pg_ctl")), "-D", str(datadir), "-m", "fast", "-w", "-t",
             "60", "stop"],
            timeout=90,
        )
        return True

    def _pooler_pid(self) -> int | None:
        try:
            pid = int(self.pgbouncer_pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if proc.process_exe_name(pid) == "pgbouncer" else None

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

            def verifier(role: str) -> str:
                return conn.pgconn.encrypt_password(
                    passwords[role].encode(), role.encode(), b"scram-sha-256"
                ).decode()

            existing = {r for (r,) in conn.execute("SELECT rolname FROM pg_roles")}
            specs = {
                APP_ROLE: "LOGIN",
                OPS_ROLE: "LOGIN",
                REPLICATION_ROLE: "LOGIN REPLICATION",
            }
            for role, attrs in specs.items():
                verb = "ALTER" if role in existing else "CREATE"
                conn.execute(
                    sql.SQL(f"{verb} ROLE {{}} {attrs} PASSWORD {{}}").format(
                        sql.Identifier(role), sql.Literal(verifier(role))
                    )
                )
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(SUPERUSER), sql.Literal(verifier(SUPERUSER))
                )
            )
            conn.execute(
                sql.SQL("GRANT pg_monitor, pg_signal_backend TO {}").format(
                    sql.Identifier(OPS_ROLE)
                )
            )
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (APP_DATABASE,)
            ).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(APP_DATABASE), sql.Identifier(APP_ROLE)
                    )
                )
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        with self.admin_connect(APP_DATABASE) as conn:
            self._create_extensions(conn)
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
            self._create_extensions(conn)

    @staticmethod
    def _create_extensions(conn: psycopg.Connection) -> None:
        """pg_stat_statements and hypopg in one database; the ops role may reset the statement
        statistics there (``diag slow-queries --reset``), as on a managed cluster's admin."""
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) TO {}")
            .format(sql.Identifier(OPS_ROLE))
        )

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
            with self.admin_connect() as conn:
                row = conn.execute(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = %s",
                    (REPLICA_SLOT,),
                ).fetchone()
                if row is not None and not row[0]:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (REPLICA_SLOT,))
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
            row = conn.execute(
                "SELECT state FROM pg_stat_replication WHERE application_name = %s",
                (REPLICA_APP_NAME,),
            ).fetchone()
        return row[0] if row else None

    # ----------------------------------------------------------------- pooler
    def _pgbouncer_conf(self, state: LocalState) -> str:
        # Named pools (``studyhub cluster pool add``, like DigitalOcean's connection pools) come
        # before the catch-all entry that routes every other database to the primary.
        pools = "".join(
            f"{name} = host=127.0.0.1 port={state.primary_port} dbname={p['database']}"
            + (f" user={p['user']}" if p.get("user") else "")
            + f" pool_size={p['size']} pool_mode={p['mode']}\n"
            for name, p in sorted(state.extra.get("pools", {}).items())
        )
        return (
            "; written by studyhub local; edits are overwritten\n"
            "[databases]\n"
            + pools
            + f"* = host=127.0.0.1 port={state.primary_port}\n"
            "[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {state.pooler_port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {self.pgbouncer_userlist}\n"
            "pool_mode = transaction\n"
            "max_client_conn = 2000\n"
            "default_pool_size = 20\n"
            "reserve_pool_size = 5\n"
            "max_db_connections = 60\n"
            "server_reset_query =\n"
            f"admin_users = {SUPERUSER}\n"
            f"stats_users = {OPS_ROLE}\n"
            "ignore_startup_parameters = extra_float_digits,options,statement_timeout\n"
            f"pidfile = {self.pgbouncer_pidfile}\n"
            f"logfile = {self.logs_dir / 'pgbouncer.log'}\n"
            "application_name_add_host = 0\n"
        )

    def _ensure_pooler(self, state: LocalState, progress: Progress) -> None:
        running = self._pooler_pid() is not None
        port = self._ensure_port(state, "pooler_port", running=running)
        state.pooler_port = port
        text = self._pgbouncer_conf(state)
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
        proc.write_private(self.pgbouncer_ini, self._pgbouncer_conf(state), server_owned=True)
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
        passwords = self._passwords()
        self._write_server_secrets(passwords)
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
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND NOT active",
                    (REPLICA_SLOT,),
                )

    def destroy_plan(self) -> list[Path]:
        """What ``destroy`` removes (the audit log stays)."""
        names = ("primary", "replica", "forks", "basebackups", "wal-archive", "server", "logs",
                 "secrets", "state.json")
        return [self.home / n for n in names if (self.home / n).exists()]

    def destroy(self) -> list[Path]:
        self.down()
        removed = self.destroy_plan()
        for path in removed:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
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
                        row = conn.execute(
                            "SELECT state, pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)"
                            " FROM pg_stat_replication WHERE application_name = %s",
                            (REPLICA_APP_NAME,),
                        ).fetchone()
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
