"""How the embedded servers are configured: ``studyhub.conf`` (included by postgresql.conf, with
the settings that keep personal data out of the server log), ``pg_hba.conf``, the self-signed
TLS certificate, the roles' passwords and passfiles, and PgBouncer's configuration.

Every server listens on 127.0.0.1 only; Unix sockets are off. Authentication is SCRAM with
random passwords that live only in 0600 passfiles (``secrets/pgpass`` for the invoking user,
``server/`` for the server user's replicator passfile and PgBouncer's userlist).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
from pathlib import Path

import psycopg
from psycopg import sql

from studyhub.local import proc
from studyhub.local.state import (
    APP_ROLE,
    OPS_ROLE,
    REPLICATION_ROLE,
    SUPERUSER,
    LocalHome,
    LocalState,
    replica_slot,
)
from studyhub.ops.queries import load

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

HBA_CONF = (
    "# written by studyhub local\n"
    "# TYPE  DATABASE     USER                 ADDRESS        METHOD\n"
    f"host    replication  {REPLICATION_ROLE}  127.0.0.1/32   scram-sha-256\n"
    "host    all          all                  127.0.0.1/32   scram-sha-256\n"
)


def conf_quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# ------------------------------------------------------------------ passwords
def passwords(home: LocalHome) -> dict[str, str]:
    """Role → password, read from our passfile (created on first use)."""
    found: dict[str, str] = {}
    if home.passfile.exists():
        for line in home.passfile.read_text().splitlines():
            parts = line.split(":")
            if len(parts) == 5:
                found[parts[3]] = parts[4]
    changed = False
    for role in (SUPERUSER, APP_ROLE, OPS_ROLE, REPLICATION_ROLE):
        if role not in found:
            found[role] = secrets.token_urlsafe(24)  # url-safe: no ':' or '\\' to escape
            changed = True
    if changed or not home.passfile.exists():
        proc.write_private(
            home.passfile, "".join(f"127.0.0.1:*:*:{r}:{p}\n" for r, p in found.items())
        )
    return found


def write_server_secrets(home: LocalHome, passwords: dict[str, str]) -> None:
    """The server user's copies: the replicator's passfile and PgBouncer's userlist."""
    proc.write_private(
        home.replicator_passfile,
        f"127.0.0.1:*:*:{REPLICATION_ROLE}:{passwords[REPLICATION_ROLE]}\n",
        server_owned=True,
    )
    userlist = "".join(
        f'"{role}" "{passwords[role]}"\n' for role in (APP_ROLE, OPS_ROLE, SUPERUSER)
    )
    proc.write_private(home.pgbouncer_userlist, userlist, server_owned=True)


# ---------------------------------------------------------------------- roles
def create_roles(conn: psycopg.Connection, passwords: dict[str, str]) -> None:
    """Create (or reset the passwords of) the app, ops and replication roles and the
    superuser's; the ops role gets pg_monitor and pg_signal_backend. Passwords go over the wire
    pre-hashed (SCRAM verifiers), so no plain password can reach a server log."""

    def verifier(role: str) -> str:
        return conn.pgconn.encrypt_password(
            passwords[role].encode(), role.encode(), b"scram-sha-256"
        ).decode()

    existing = {r for (r,) in conn.execute(load("get_role_names"))}
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


def create_extensions(conn: psycopg.Connection) -> None:
    """pg_stat_statements and hypopg in one database; the ops role may reset the statement
    statistics there (``diag slow-queries --reset``), as on a managed cluster's admin."""
    conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    conn.execute("CREATE EXTENSION IF NOT EXISTS hypopg")
    conn.execute(
        sql.SQL("GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) TO {}")
        .format(sql.Identifier(OPS_ROLE))
    )


# ------------------------------------------------------------- studyhub.conf
def archive_conf(home: LocalHome) -> list[str]:
    """Continuous archiving into wal-archive/ (point-in-time recovery, ``cluster fork``).
    An archived segment is never overwritten: a second copy of an identical file counts as
    archived (as after a crash), a different one fails; copies are synced, then renamed."""
    d = shlex.quote(str(home.wal_archive_dir))
    command = (
        f"if test -f {d}/%f; then cmp -s %p {d}/%f; "
        f"else cp %p {d}/%f.part && sync {d}/%f.part && mv {d}/%f.part {d}/%f; fi"
    )
    return ["archive_mode = on", f"archive_command = {conf_quote(command)}"]


def server_conf(home: LocalHome, port: int, *, replica: bool, archive: bool | None = None,
                extra_lines: tuple[str, ...] = (), replica_name: str = "replica") -> str:
    """studyhub.conf for a server on ``port``; the primary archives WAL (``archive`` defaults
    to ``not replica``), others (replicas, forks) never write into its archive. A replica
    streams through its own slot, named after it (``state.replica_slot``), which is also the
    application name the primary sees."""
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
            f"primary_conninfo = 'host=127.0.0.1 port={home.load_state().primary_port} "
            f"user={REPLICATION_ROLE} passfile={home.replicator_passfile} "
            f"application_name={replica_slot(replica_name)}'",
            f"primary_slot_name = '{replica_slot(replica_name)}'",
        ]
    archive = (not replica) if archive is None else archive
    lines += archive_conf(home) if archive else ["archive_mode = off"]
    lines += home.load_state().extra.get("conf_lines", [])
    lines += extra_lines
    return "\n".join(lines) + "\n"


def ensure_certificate(home: LocalHome, datadir: Path) -> None:
    """A self-signed server certificate, so SSL code paths (sslmode=require/verify-ca) can
    be exercised against the local cluster; clients find it at secrets/server.crt."""
    crt, key = datadir / "server.crt", datadir / "server.key"
    if datadir != home.primary_dir:  # replicas serve the primary's certificate
        for name in ("server.crt", "server.key"):
            if not (datadir / name).exists():
                shutil.copy2(home.primary_dir / name, datadir / name)
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
    shutil.copyfile(crt, home.secrets_dir / "server.crt")


def write_conf_files(home: LocalHome, datadir: Path, port: int, *, replica: bool,
                     archive: bool | None = None, extra_lines: tuple[str, ...] = (),
                     replica_name: str = "replica") -> None:
    """The certificate, studyhub.conf (and its include in postgresql.conf) and pg_hba.conf of
    one data directory; a running server still has to reload them."""
    ensure_certificate(home, datadir)
    conf = datadir / "studyhub.conf"
    conf.write_text(server_conf(home, port, replica=replica, archive=archive,
                                extra_lines=extra_lines, replica_name=replica_name))
    proc.chown_to_server(conf)
    main = datadir / "postgresql.conf"
    text = main.read_text()
    if "include_if_exists = 'studyhub.conf'" not in text:
        main.write_text(text + "\ninclude_if_exists = 'studyhub.conf'\n")
    hba = datadir / "pg_hba.conf"
    hba.write_text(HBA_CONF)
    proc.chown_to_server(hba)


# ------------------------------------------------------------------- pgbouncer
def pgbouncer_conf(home: LocalHome, state: LocalState) -> str:
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
        f"auth_file = {home.pgbouncer_userlist}\n"
        "pool_mode = transaction\n"
        "max_client_conn = 2000\n"
        "default_pool_size = 20\n"
        "reserve_pool_size = 5\n"
        "max_db_connections = 60\n"
        "server_reset_query =\n"
        f"admin_users = {SUPERUSER}\n"
        f"stats_users = {OPS_ROLE}\n"
        "ignore_startup_parameters = extra_float_digits,options,statement_timeout\n"
        f"pidfile = {home.pgbouncer_pidfile}\n"
        f"logfile = {home.logs_dir / 'pgbouncer.log'}\n"
        "application_name_add_host = 0\n"
    )
