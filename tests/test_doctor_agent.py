"""The doctor's checks for an always-on setup, against the real local cluster: the agent's
heartbeat, WAL archiving (a failing archive_command made real with ALTER SYSTEM, restored after),
replicas that were set up but are gone; all as the ops role, and what they say without it."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from psycopg import sql

from studyhub.ops import health
from tests.conftest import connect_as
from tests.diag_helpers import TemporaryRole, as_json, wait_for


def _check(profile, name: str, **overrides) -> health.Check:
    """One check as the ops role (pg_monitor), with thresholds overridden."""
    limits = health.thresholds(overrides, use_config=False)
    with connect_as(profile, "ops") as conn:
        [check] = health.run_doctor(conn, profile, limits=limits, only=[name]).checks
    return check


def _check_without_grants(profile, name: str) -> health.Check:
    """One check as a role an administrator made with CONNECT only (no pg_monitor, no ops.*)."""
    with TemporaryRole(profile, profile.database) as role:
        ep = profile.endpoint("ops").conninfo()
        with psycopg.connect(**{**ep, "user": role.name, "password": role.password},
                             autocommit=True) as conn:
            [check] = health.run_doctor(conn, profile, only=[name]).checks
    return check


# ----------------------------------------------------------------------- agent heartbeat
@pytest.fixture
def no_heartbeats(migrated) -> Iterator[None]:
    """No agent has beaten for the profile (rows other tests left are put back after)."""
    with connect_as(migrated, "ops") as conn:
        saved = conn.execute("DELETE FROM ops.agent_heartbeats WHERE profile = %s "
                             "RETURNING agent, profile, host, pid, started_at, beat_at",
                             (migrated.name,)).fetchall()
    yield
    with connect_as(migrated, "ops") as conn:
        conn.execute("DELETE FROM ops.agent_heartbeats WHERE profile = %s", (migrated.name,))
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO ops.agent_heartbeats VALUES (%s, %s, %s, %s, %s, %s)",
                            saved)


def _beat(profile, agent: str, age: str) -> None:
    """As the ops role (what the agent writes with): a heartbeat ``age`` old."""
    with connect_as(profile, "ops") as conn:
        conn.execute(
            "INSERT INTO ops.agent_heartbeats (agent, profile, host, pid, started_at, beat_at) "
            "VALUES (%s, %s, 'ops-host', 4242, now() - interval '1 day', now() - %s::interval) "
            "ON CONFLICT (agent, profile) DO UPDATE SET beat_at = EXCLUDED.beat_at",
            (agent, profile.name, age))


def test_no_agent_ever_is_ok_and_not_expected(migrated, no_heartbeats, cli):
    res = cli("diag", "doctor", "--check", "agent_heartbeat", "--json")
    [check] = as_json(res)["checks"]
    assert check["status"] == "ok" and check["value"] == "no agent has run"
    assert "none is expected" in check["detail"]
    assert res.exit_code == 0


def test_fresh_heartbeat_is_ok_and_a_stale_one_critical_with_the_fix(migrated, no_heartbeats):
    _beat(migrated, "ops-1", "2 seconds")
    check = _check(migrated, "agent_heartbeat")
    assert check.status == "ok" and "ops-1@ops-host" in check.value
    assert check.items[0]["age_s"] < 60 and check.fix is None

    _beat(migrated, "ops-1", "10 minutes")  # stopped beating 10 minutes ago
    check = _check(migrated, "agent_heartbeat")
    assert check.status == "critical"
    assert check.items[0]["status"] == "critical" and check.items[0]["age_s"] >= 600
    assert "studyhub agent run" in check.fix and "systemctl status studyhub-agent" in check.fix
    assert "ops-1" in check.detail

    _beat(migrated, "ops-1", "90 seconds")  # between the default thresholds (60 s / 300 s)
    assert _check(migrated, "agent_heartbeat").status == "warn"


def test_one_stale_agent_of_two_makes_the_check_critical(migrated, no_heartbeats):
    _beat(migrated, "ops-1", "1 second")
    _beat(migrated, "ops-2", "1 hour")
    check = _check(migrated, "agent_heartbeat")
    assert check.status == "critical"
    assert {i["agent"]: i["status"] for i in check.items} == {"ops-1": "ok", "ops-2": "critical"}
    assert "ops-2" in check.detail and "ops-1" not in check.detail


def test_heartbeats_of_another_profile_do_not_count(migrated, no_heartbeats):
    with connect_as(migrated, "ops") as conn:
        conn.execute("INSERT INTO ops.agent_heartbeats VALUES ('ops-9', 'staging', 'h', 1, "
                     "now(), now() - interval '1 hour')")
    try:
        assert _check(migrated, "agent_heartbeat").value == "no agent has run"
    finally:
        with connect_as(migrated, "ops") as conn:
            conn.execute("DELETE FROM ops.agent_heartbeats WHERE agent = 'ops-9'")


def test_heartbeat_check_says_what_is_missing_without_the_grant(migrated, no_heartbeats):
    _beat(migrated, "ops-1", "10 minutes")
    check = _check_without_grants(migrated, "agent_heartbeat")
    assert check.status == "warn" and check.value == "cannot tell"
    assert "GRANT SELECT ON ops.agent_heartbeats" in check.fix


# ------------------------------------------------------------------------- WAL archiving
# The test machine's own disk is not what these tests are about: its free space is not judged
# unless a test says so.
ANY_DISK = {"wal_archive.warn_free_pct": 0, "wal_archive.critical_free_pct": 0}


def _admin(profile):
    return connect_as(profile, "admin", "postgres")


def _switch_wal(profile) -> None:
    """Write something, then close the segment: the archiver is handed a new one."""
    with _admin(profile) as conn:
        conn.execute("CREATE TEMP TABLE filler AS SELECT g FROM generate_series(1, 1000) g")
        conn.execute("SELECT pg_switch_wal()")


@pytest.fixture
def failing_archive(migrated) -> Iterator[None]:
    """archive_command fails (ALTER SYSTEM on the session's primary), put back afterwards and
    the waiting segments archived again before the next test."""
    with _admin(migrated) as conn:
        conn.execute("ALTER SYSTEM SET archive_command = '/bin/false'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        with _admin(migrated) as conn:
            conn.execute("ALTER SYSTEM RESET archive_command")
            conn.execute("SELECT pg_reload_conf()")
        _switch_wal(migrated)
        wait_for(lambda: _check(migrated, "wal_archive", **ANY_DISK).status == "ok", timeout=120,
                 what="the archiver to catch up once archive_command works again")


def test_wal_archive_is_ok_while_archiving_works(migrated):
    _switch_wal(migrated)
    check = wait_for(lambda: (c := _check(migrated, "wal_archive", **ANY_DISK)).items[0][
        "ready_segments"] == 0 and c, timeout=60, what="the segment to be archived")
    assert check.status == "ok" and check.value.startswith("archiving")
    assert check.items[0]["archive_mode"] == "on" and check.items[0]["archived_count"] > 0
    # the local cluster's archive directory: its file system's free space is part of the check
    assert check.items[0]["archive_dir"].endswith("wal-archive")
    assert 0 < check.items[0]["archive_free_pct"] <= 100
    # the archive's file system as full as the thresholds say: critical, with the fix for space
    full = _check(migrated, "wal_archive", **{"wal_archive.critical_free_pct": 100,
                                              "wal_archive.warn_free_pct": 100})
    assert full.status == "critical" and not full.items[0]["failing"]
    assert "full" in full.detail and "basebackup --keep" in full.fix


def test_failing_archive_command_is_critical(migrated, failing_archive, cli):
    _switch_wal(migrated)
    check = wait_for(lambda: (c := _check(migrated, "wal_archive", **ANY_DISK)).status
                     == "critical" and c, timeout=60, what="archive_command to fail")
    item = check.items[0]
    assert item["failing"] and item["failed_count"] > 0 and item["ready_segments"] >= 1
    assert item["last_failed_wal"] in check.detail and "archive_command fails" in check.detail
    assert check.value.startswith("FAILING")
    assert "archive command failed" in check.fix
    res = cli("diag", "doctor", "--check", "wal_archive", "--json")
    assert res.exit_code == 2 and as_json(res)["checks"][0]["status"] == "critical"


@pytest.fixture
def slow_archive(migrated) -> Iterator[None]:
    """archive_command still archives, but each segment takes 10 s more (the archiver is busy,
    nothing fails): put back afterwards, once the waiting segments are archived."""
    with _admin(migrated) as conn:
        original = conn.execute("SHOW archive_command").fetchone()[0]
        conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(
            sql.Literal(f"sleep 10 && {original}")))
        conn.execute("SELECT pg_reload_conf()")
    try:
        yield
    finally:
        with _admin(migrated) as conn:
            conn.execute("ALTER SYSTEM RESET archive_command")
            conn.execute("SELECT pg_reload_conf()")
        wait_for(lambda: _check(migrated, "wal_archive", **ANY_DISK).items[0]["ready_segments"]
                 == 0, timeout=120, what="the slow archiver to finish")


def test_segments_waiting_longer_than_the_lag_threshold_warn(migrated, slow_archive):
    _switch_wal(migrated)
    lagging = {**ANY_DISK, "wal_archive.warn_lag_s": 0}  # any wait is too long
    check = wait_for(lambda: (c := _check(migrated, "wal_archive", **lagging)).items[0][
        "ready_segments"] >= 1 and c, timeout=60, what="a segment waiting for the archiver")
    assert check.status == "warn" and not check.items[0]["failing"]
    assert "segment(s) waiting (oldest" in check.value and "falls behind" in check.fix
    # the same wait within the default thresholds (5 min) is fine
    assert _check(migrated, "wal_archive", **ANY_DISK).status == "ok"


def test_wal_archive_check_needs_pg_monitor_and_says_so(migrated):
    check = _check_without_grants(migrated, "wal_archive")
    assert check.status == "warn" and check.value == "could not check"
    assert "pg_ls_archive_statusdir" in check.detail and "pg_monitor" in check.fix


# ------------------------------------------------------------------------------ replicas
def test_a_replica_whose_slot_has_no_consumer_is_gone(migrated, cli):
    slot = f"gone_{uuid.uuid4().hex[:8]}"
    with _admin(migrated) as conn:
        conn.execute("SELECT pg_create_physical_replication_slot(%s)", (slot,))
    try:
        check = _check(migrated, "replicas")
        assert check.status == "critical" and slot in check.value
        [item] = [i for i in check.items if i["slot"] == slot]
        assert item["status"] == "critical" and "gone" in item["problem"]
        assert "pg_drop_replication_slot" in check.fix
        res = cli("diag", "doctor", "--check", "replicas", "--json")
        assert res.exit_code == 2
    finally:
        with _admin(migrated) as conn:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
    assert all(i["slot"] != slot for i in _check(migrated, "replicas").items)


def test_a_streaming_replica_is_ok(with_replica):
    profile = with_replica.profile()
    check = wait_for(lambda: (c := _check(profile, "replicas")).status == "ok" and c.items
                     and c, what="the replica to stream")
    assert any(i["state"] == "streaming" and i["slot"] for i in check.items)


def test_replicas_check_without_pg_monitor_says_what_is_missing(migrated):
    check = _check_without_grants(migrated, "replicas")
    assert check.status == "warn" and check.value == "not visible"
    assert "pg_monitor" in (check.fix or "") + (check.detail or "")


# ------------------------------------------------------- capture (the agent's job) + staleness
@pytest.fixture
def history_db(fresh_db, profile) -> str:
    from studyhub.ops import migrate

    migrate.upgrade(profile, database=fresh_db)
    return fresh_db


def test_capture_snapshots_stores_one_of_each_as_the_ops_role(profile, history_db):
    from studyhub.ops import capture, space, statements

    with connect_as(profile, "ops", history_db) as conn:  # the agent's own connection
        result = capture.capture_snapshots(profile, conn)
        assert result.ok and result.notes == [] and result.database == history_db
        assert statements.latest_snapshot_at(conn) == result.captured_at
        assert space.latest_size_snapshot_at(conn) == result.captured_at
        fresh = capture.history_freshness(conn)
        assert not fresh.stale and fresh.note is None


def test_the_dashboard_says_when_history_is_stale_and_stops_once_captured(
        monkeypatch, tmp_path, profile, history_db):
    import httpx

    from studyhub.ops import capture
    from studyhub.serving import DashboardSettings
    from tests.dashboard_helpers import DashboardServer

    monkeypatch.setenv("STUDYHUB_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("STUDYHUB_SECRETS_FILE", str(tmp_path / "absent-secrets.toml"))

    def notices(http: httpx.Client) -> dict[str, str | None]:
        found = {}
        for page in ("queries", "space"):
            res = http.get(f"/p/local/{page}")
            assert res.status_code == 200, res.text  # works with or without history
            m = re.search(r'<p class="flash \w+ history-freshness"[^>]*>([^<]*)</p>', res.text)
            found[page] = m.group(1) if m else None
        return found

    settings = DashboardSettings(database=history_db, history_stale_after_s=900)
    with DashboardServer(settings) as server, httpx.Client(base_url=server.url,
                                                           timeout=30) as http:
        before = notices(http)  # nothing captured yet
        assert all("no history captured yet" in n and "studyhub agent" in n
                   for n in before.values()), before

        an_hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
        assert capture.capture_snapshots(profile, database=history_db, now=an_hour_ago).ok
        stale = notices(http)  # an agent captured, then stopped
        assert all(n.startswith("history is stale") and "is `studyhub agent` running?" in n
                   for n in stale.values()), stale

        assert capture.capture_snapshots(profile, database=history_db).ok  # it runs again
        assert notices(http) == {"queries": None, "space": None}
