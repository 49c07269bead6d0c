"""The embedded cluster: lifecycle, idempotence, crash recovery, replica, pooler, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from studyhub.errors import LocalClusterError
from studyhub.local import LOG_PRIVACY_SETTINGS, LocalCluster, proc
from tests.conftest import connect_as, make_home


@pytest.fixture
def own_cluster():
    """A second cluster with its own home, for tests that stop or crash it."""
    home = make_home("studyhub-own-")
    c = LocalCluster(home)
    yield c
    try:
        c.destroy()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_up_status_down(own_cluster: LocalCluster):
    st = own_cluster.up()
    assert st.primary.running and st.initialized
    assert st.server_version.startswith("15.")
    with connect_as(own_cluster.profile(), "admin") as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN "
            "('shared_preload_libraries','track_io_timing','wal_level','listen_addresses')"
        ).fetchall())
        exts = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
    assert settings == {
        "shared_preload_libraries": "pg_stat_statements",
        "track_io_timing": "on",
        "wal_level": "replica",
        "listen_addresses": "127.0.0.1",
    }
    assert {"pg_stat_statements", "hypopg"} <= exts
    down = own_cluster.down()
    assert not down.primary.running
    with pytest.raises(psycopg.OperationalError):
        connect_as(own_cluster.profile(), connect_timeout=2)


def test_up_twice_is_harmless(own_cluster: LocalCluster):
    first = own_cluster.up()
    second = own_cluster.up()
    assert second.primary.pid == first.primary.pid
    assert second.primary.port == first.primary.port


def test_up_after_crash_recovers(own_cluster: LocalCluster):
    own_cluster.up()
    with connect_as(own_cluster.profile()) as conn:
        conn.execute("CREATE TABLE crash_probe (n int)")
        conn.execute("INSERT INTO crash_probe VALUES (42)")
        holder = connect_as(own_cluster.profile())  # a backend that outlives its postmaster
        holder.execute("SELECT 1")
    pid = own_cluster.status().primary.pid
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while proc.process_exe_name(pid) == "postgres" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (own_cluster.primary_dir / "postmaster.pid").exists()  # stale lock file left behind
    assert not own_cluster.status().primary.running

    st = own_cluster.up()
    assert st.primary.running and st.primary.pid != pid
    with connect_as(own_cluster.profile()) as conn:
        assert conn.execute("SELECT n FROM crash_probe").fetchone()[0] == 42
    holder.close()


def test_replica_streams_and_serves_reads(migrated, with_replica: LocalCluster):
    prof = with_replica.profile()
    st = with_replica.status()
    assert st.replica.running and st.replica_streaming
    with connect_as(prof, "admin", "postgres") as conn:
        state, slot = conn.execute(
            "SELECT r.state, s.slot_name FROM pg_stat_replication r "
            "JOIN pg_replication_slots s ON s.active_pid = r.pid"
        ).fetchone()
    assert (state, slot) == ("streaming", "studyhub_replica")
    marker = f"probe-{time.time_ns()}"
    with connect_as(prof) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS replica_probe (v text)")
        conn.execute("INSERT INTO replica_probe VALUES (%s)", (marker,))
        lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
    with connect_as(prof, "replica") as rconn:
        assert rconn.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True
        deadline = time.monotonic() + 10
        while rconn.execute(
            "SELECT pg_last_wal_replay_lsn() < %s::pg_lsn", (lsn,)
        ).fetchone()[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rconn.execute("SELECT v FROM replica_probe WHERE v = %s", (marker,)).fetchone()
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            rconn.execute("INSERT INTO replica_probe VALUES ('x')")


def test_pooler_answers_in_transaction_mode(migrated, with_pooler: LocalCluster):
    prof = with_pooler.profile()
    ep = prof.endpoint("pooler")
    assert ep.port != prof.port
    with psycopg.connect(**ep.conninfo(), prepare_threshold=None, autocommit=True) as conn:
        user, server_port = conn.execute("SELECT current_user, inet_server_port()").fetchone()
    assert user == "studyhub_app" and server_port == prof.port  # a proxy in front of the primary
    # The ops role may read PgBouncer's own stats console.
    admin = prof.endpoint("ops", "pgbouncer")
    with psycopg.connect(host=admin.host, port=ep.port, dbname="pgbouncer", user=admin.user,
                         passfile=str(admin.passfile), autocommit=True) as conn:
        cur = conn.cursor()
        cur.execute("SHOW POOLS")
        cols = [d.name for d in cur.description]
        pools = [dict(zip(cols, row)) for row in cur.fetchall()]
        modes = {p["pool_mode"] for p in pools if p["database"] != "pgbouncer"}
    assert modes == {"transaction"}


def test_status_json_and_url(cli, cluster):
    res = cli("local", "status", "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    assert data["primary"]["running"] is True
    assert data["primary"]["port"] == cluster.load_state().primary_port
    res = cli("local", "url", "--role", "ops")
    url = res.stdout.strip()
    assert url.startswith(f"postgresql://studyhub_ops@127.0.0.1:{data['primary']['port']}/studyhub")
    password = _passwords(cluster)["studyhub_ops"]
    assert password not in url
    with psycopg.connect(url) as conn:  # usable as printed (the passfile is named in it)
        assert conn.execute("SELECT current_user").fetchone()[0] == "studyhub_ops"


def test_url_rejects_unknown_role(cli, cluster):
    res = cli("local", "url", "--role", "root")
    assert res.exit_code != 0
    assert "unknown role 'root'" in res.stderr


def test_missing_server_binaries_is_one_clear_error(own_cluster, monkeypatch):
    monkeypatch.setenv("STUDYHUB_PG_BINDIR", "/nonexistent/bin")
    with pytest.raises(LocalClusterError, match="server programs not found"):
        own_cluster.up()
    assert not own_cluster.primary_dir.exists()


def test_exhausted_port_range_is_one_clear_error(own_cluster, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        monkeypatch.setenv("STUDYHUB_PORT_RANGE", f"{busy}-{busy}")
        with pytest.raises(LocalClusterError, match=f"no free TCP port in {busy}-{busy}"):
            own_cluster.up()


@pytest.mark.needs(os.geteuid() == 0, "needs a separate server user (root only)")
def test_unreachable_home_is_explained(monkeypatch):
    parent = make_home("studyhub-closed-")
    try:
        os.chmod(parent, 0o700)
        c = LocalCluster(parent / "home")
        with pytest.raises(LocalClusterError, match="cannot traverse"):
            c.up()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_destroy_needs_confirmation_and_keeps_audit(cli, own_cluster, monkeypatch):
    own_cluster.up()
    monkeypatch.setenv("STUDYHUB_HOME", str(own_cluster.home))
    res = cli("local", "destroy")
    assert res.exit_code != 0 and "needs confirmation" in res.stderr
    assert own_cluster.status().primary.running  # nothing changed
    res = cli("local", "destroy", "--dry-run")
    assert res.exit_code == 0 and "would remove" in res.stdout
    assert own_cluster.primary_dir.exists()
    res = cli("local", "destroy", "--yes")
    assert res.exit_code == 0
    assert not own_cluster.primary_dir.exists()
    audit = [json.loads(line) for line in own_cluster.audit_log.read_text().splitlines()]
    assert audit[-1]["action"] == "local.destroy"


def test_a_destroy_that_fails_part_way_is_audited(own_cluster, monkeypatch, tmp_path):
    """LocalCluster.destroy writes its own audit line, so a destroy that fails is on record
    too (whoever called it), with the error named."""
    monkeypatch.setenv("STUDYHUB_HOME", str(own_cluster.home))
    own_cluster.home.mkdir(parents=True, exist_ok=True)
    (own_cluster.home / "primary").mkdir()
    elsewhere = tmp_path / "logs-elsewhere"
    elsewhere.mkdir()
    own_cluster.logs_dir.symlink_to(elsewhere)  # rmtree refuses a symlink: destroy fails there
    try:
        with pytest.raises(OSError):
            own_cluster.destroy()
        audit = json.loads(own_cluster.audit_log.read_text().splitlines()[-1])
        assert (audit["action"], audit["outcome"], audit["error"]) == \
            ("local.destroy", "failed", "OSError")
        assert audit["home"] == str(own_cluster.home)
        assert not (own_cluster.home / "primary").exists()  # what came before it is gone
        assert elsewhere.is_dir()  # and what the link points to was not followed
    finally:
        own_cluster.logs_dir.unlink()


def _passwords(cluster: LocalCluster) -> dict[str, str]:
    out = {}
    for line in cluster.passfile.read_text().splitlines():
        parts = line.split(":")
        out[parts[3]] = parts[4]
    return out


def test_a_port_in_time_wait_counts_as_free_but_a_listener_does_not():
    """A stopped server's port keeps TIME_WAIT connections for a minute; PostgreSQL can listen
    on it again (SO_REUSEADDR), so `up` must not move the server to another port."""
    from studyhub.local import port_is_free

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    assert not port_is_free(port)  # a live listener: taken
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first, as a backend does: TIME_WAIT on `port`
    time.sleep(0.05)
    client.close()
    listener.close()
    assert port_is_free(port)


def _log_settings(conn: psycopg.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                             (list(LOG_PRIVACY_SETTINGS),)).fetchall())


def _new_log_text(path, offset: int) -> str:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def test_server_log_gets_the_error_but_never_the_values(cluster: LocalCluster, fresh_db):
    """A unique violation (bound and literal key), a failing statement with a bound parameter
    (its session asking for parameters in error reports), a check violation: the server log
    names each error and holds none of the values."""
    prof = cluster.profile()
    token = uuid.uuid4().hex[:12]
    bound_key, literal_key = f"bound-{token}@example.org", f"literal-{token}@example.org"
    param, bad_row = f"param-{token}", f"forbidden-{token}"
    log = cluster.logs_dir / "primary.log"
    offset = log.stat().st_size
    with connect_as(prof, "app", fresh_db) as conn:
        conn.execute(f"CREATE TABLE people (email text UNIQUE CHECK (email <> '{bad_row}'))")
        conn.execute("INSERT INTO people VALUES (%s), (%s)", (bound_key, literal_key))
        with pytest.raises(psycopg.errors.UniqueViolation) as dup:
            conn.execute("INSERT INTO people VALUES (%s)", (bound_key,))
        assert bound_key in str(dup.value.diag.message_detail)  # the client still gets it
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("INSERT INTO people VALUES ({})").format(sql.Literal(literal_key)))
        conn.execute("SET log_parameter_max_length_on_error = -1")  # any session may ask
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0 WHERE %s::text IS NOT NULL", (param,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("INSERT INTO people VALUES (%s)", (bad_row,))
    text = _new_log_text(log, offset)
    assert 'duplicate key value violates unique constraint "people_email_key"' in text
    assert "division by zero" in text and 'violates check constraint "people_email_check"' in text
    for value in (bound_key, literal_key, param, token):
        assert value not in text, (value, text)


def test_up_gives_a_running_cluster_made_before_them_the_log_settings(own_cluster):
    """A primary and replica whose studyhub.conf predates the log settings get them from the
    next `local up`, without a restart."""
    own_cluster.up(replica=True)
    state = own_cluster.load_state()
    nodes = {"primary": (own_cluster.primary_dir, state.primary_port),
             "replica": (own_cluster.replica_dir, state.replica_port)}
    for datadir, port in nodes.values():  # as an older version wrote it
        conf = datadir / "studyhub.conf"
        conf.write_text("".join(line for line in conf.read_text().splitlines(keepends=True)
                                if line.split(" = ")[0] not in LOG_PRIVACY_SETTINGS))
        own_cluster._reload(port)
        with own_cluster.admin_connect(port=port) as conn:
            assert _log_settings(conn)["log_error_verbosity"] == "default"
    before = own_cluster.status()

    st = own_cluster.up()  # no restart:
    assert (st.primary.pid, st.replica.pid) == (before.primary.pid, before.replica.pid)
    for datadir, port in nodes.values():
        with own_cluster.admin_connect(port=port) as conn:
            assert _log_settings(conn) == LOG_PRIVACY_SETTINGS
