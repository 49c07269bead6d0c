"""emergency: cancel / terminate with safety rules, kill-all that spares replication, blocking
new connections with a guaranteed undo, audit lines without query text."""

from __future__ import annotations

import json

import psycopg
import pytest

from studyhub.ops import activity, emergency
from tests.conftest import connect_as
from tests.diag_helpers import Background, alive, as_json, audit_lines, is_running, wait_for


def test_cancel_stops_the_query_keeps_the_session_and_audits_a_fingerprint(profile, fresh_db, cli):
    sleeper = Background(profile, "SELECT pg_sleep(60) /* secret-report-42 */", database=fresh_db)
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        before = len(audit_lines("emergency.cancel"))
        res = cli("emergency", "cancel", sleeper.pid, "-d", fresh_db, "--yes", "--json")
        assert res.exit_code == 0, res.stderr
        outcome = as_json(res)[0]
        assert outcome == {**outcome, "pid": sleeper.pid, "ok": True, "result": "cancelled"}
        sleeper.join()
        assert isinstance(sleeper.error, psycopg.errors.QueryCanceled)
        assert alive(sleeper.conn)  # cancel keeps the session
        lines = audit_lines("emergency.cancel")[before:]
        assert len(lines) == 1 and lines[0]["pid"] == sleeper.pid
        assert lines[0]["fingerprint"].startswith(("qid:", "sha:"))
        raw = json.dumps(lines[0])
        assert "pg_sleep" not in raw and "secret-report-42" not in raw
    finally:
        sleeper.close()


def test_terminate_ends_the_session(profile, fresh_db, cli):
    idle = connect_as(profile, "app", fresh_db, autocommit=False)
    idle.execute("SELECT 1")
    pid = idle.info.backend_pid
    res = cli("emergency", "terminate", pid, "-d", fresh_db, "--yes")
    assert res.exit_code == 0, res.stderr
    assert f"ok terminate {pid}: terminated" in res.stdout
    assert not alive(idle)
    idle.close()


def test_bad_targets_are_refused_with_nothing_signalled(with_replica, profile, fresh_db, cli):
    other = connect_as(profile, "app")  # connected to the profile's database, not fresh_db
    try:
        res = cli("emergency", "cancel", 999999, "--yes")
        assert res.exit_code == 1 and "no backend with PID 999999" in res.stderr
        with connect_as(profile, "ops", fresh_db) as conn:
            with pytest.raises(emergency.RefusedError, match="own session"):
                emergency.plan_signal(conn, [conn.info.backend_pid])
            walsender = next(s.pid for s in activity.sessions(conn) if s.is_walsender)
        res = cli("emergency", "terminate", walsender, "-d", fresh_db, "--yes")
        assert res.exit_code == 1 and "replication connection (walsender)" in res.stderr
        res = cli("emergency", "terminate", other.info.backend_pid, "-d", fresh_db, "--yes")
        assert res.exit_code == 1 and "--other-databases" in res.stderr
        assert alive(other)
        # a mixed list is refused whole: the valid PID is not touched either
        mixed = connect_as(profile, "app", fresh_db)
        res = cli("emergency", "terminate", mixed.info.backend_pid, walsender, "-d", fresh_db,
                  "--yes")
        assert res.exit_code == 1 and alive(mixed)
        mixed.close()
        assert with_replica.status().replica_streaming
    finally:
        other.close()


def test_without_pg_signal_backend_the_commands_say_so_and_stop(profile, fresh_db, cli):
    victim = connect_as(profile, "app", fresh_db)
    admin = connect_as(profile, "admin", "postgres")
    admin.execute("REVOKE pg_signal_backend FROM studyhub_ops")
    try:
        res = cli("emergency", "terminate", victim.info.backend_pid, "-d", fresh_db, "--yes")
        assert res.exit_code == 1
        assert "not a member of pg_signal_backend" in res.stderr
        assert "GRANT pg_signal_backend TO studyhub_ops" in res.stderr
        res = cli("emergency", "kill-all", "-d", fresh_db, "--yes")
        assert res.exit_code == 1 and "pg_signal_backend" in res.stderr
        assert alive(victim)
    finally:
        admin.execute("GRANT pg_signal_backend TO studyhub_ops")
        admin.close()
        victim.close()


def _replica_sees(profile, database: str, table: str) -> bool:
    import psycopg as pg

    try:
        with pg.connect(**{**profile.endpoint("app", database).conninfo(),
                           "port": profile.replica_port}, autocommit=True) as r:
            return bool(r.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except pg.errors.UndefinedTable:
        return False


def test_kill_all_spares_replication_ops_and_itself_and_ends_app_sessions(
        with_replica, fresh_db, cli):
    profile = with_replica.profile()
    idle = connect_as(profile, "app", fresh_db)
    in_xact = connect_as(profile, "app", fresh_db, autocommit=False)
    in_xact.execute("SELECT 1")
    busy = Background(profile, "SELECT pg_sleep(60)", database=fresh_db)
    watcher = connect_as(profile, "ops", fresh_db)  # another on-call engineer's session
    elsewhere = connect_as(profile, "app")  # a different database: not ours to kill
    app_pids = {idle.info.backend_pid, in_xact.info.backend_pid, busy.pid}
    try:
        wait_for(lambda: is_running(profile, busy.pid, "pg_sleep"), what="the busy session")
        plan = cli("emergency", "kill-all", "-d", fresh_db, "--dry-run", "--json")
        planned = as_json(plan)
        assert {t["pid"] for t in planned["targets"]} == app_pids
        spared = {s["target"]["pid"]: s["reason"] for s in planned["spared"]}
        assert any("walsender" in r or "replication slot" in r for r in spared.values())
        assert "ops role" in spared[watcher.info.backend_pid]
        assert all(alive(c) for c in (idle, in_xact))  # dry run changed nothing

        before = len(audit_lines("emergency.kill_all.terminate"))
        res = cli("emergency", "kill-all", "-d", fresh_db, "--yes", "--json")
        assert res.exit_code == 0, res.stderr
        outcomes = as_json(res)
        assert {o["pid"] for o in outcomes if o["ok"]} == app_pids
        busy.join()
        assert not alive(idle) and not alive(in_xact) and busy.error is not None
        assert alive(watcher) and alive(elsewhere)
        lines = audit_lines("emergency.kill_all.terminate")[before:]
        assert {a["pid"] for a in lines} == app_pids
        assert all("query" not in a for a in lines)

        # the replica still streams: the walsender is the same and new writes arrive
        assert with_replica.status().replica_streaming
        with connect_as(profile, "app", fresh_db) as c:
            c.execute("CREATE TABLE after_kill AS SELECT 1 AS n")
        wait_for(lambda: _replica_sees(profile, fresh_db, "after_kill"),
                 what="the replica to receive a write made after kill-all")
    finally:
        for c in (idle, in_xact, watcher, elsewhere):
            c.close()
        busy.close()


def _limit(profile, database):
    with connect_as(profile, "admin", "postgres") as c:
        return c.execute("SELECT datconnlimit FROM pg_database WHERE datname = %s",
                         (database,)).fetchone()[0]


def test_block_new_keeps_connections_out_during_the_window_and_restores_the_limit(
        profile, fresh_db, cli):
    with connect_as(profile, "admin", "postgres") as c:
        c.execute(f'ALTER DATABASE "{fresh_db}" CONNECTION LIMIT 40')
    victim = connect_as(profile, "app", fresh_db)
    res = cli("emergency", "kill-all", "-d", fresh_db, "--block-new", "--hold", "0s", "--yes")
    assert res.exit_code == 0, res.stderr
    assert "new connections to" in res.stderr and "allowed again" in res.stderr
    assert not alive(victim)
    victim.close()
    assert _limit(profile, fresh_db) == 40  # the previous limit, not "unlimited"
    assert emergency.read_block_state("local", fresh_db) is None
    connect_as(profile, "app", fresh_db).close()
    actions = [a["action"] for a in audit_lines("emergency.")][-4:]
    assert actions == ["emergency.block_new", "emergency.kill_all.terminate",
                       "emergency.kill_all", "emergency.unblock_new"]


def test_a_crashed_block_is_undone_with_unblock(profile, fresh_db, cli):
    owner = connect_as(profile, "app", fresh_db)
    state = emergency.block_new_connections(owner, "local", fresh_db)
    owner.close()  # the run "crashes": its session is gone, the limit stays
    assert state.previous_limit == -1 and _limit(profile, fresh_db) == 0
    with pytest.raises(psycopg.OperationalError, match="too many connections"):
        connect_as(profile, "app", fresh_db)
    res = cli("emergency", "unblock", "-d", fresh_db, "--dry-run")
    assert "would restore CONNECTION LIMIT -1" in res.stdout and _limit(profile, fresh_db) == 0
    res = cli("emergency", "unblock", "-d", fresh_db, "--yes")
    assert res.exit_code == 0, res.stderr
    assert _limit(profile, fresh_db) == -1
    connect_as(profile, "app", fresh_db).close()


def test_block_new_needs_a_hold_without_a_terminal(profile, fresh_db, cli):
    res = cli("emergency", "kill-all", "-d", fresh_db, "--block-new", "--yes")
    assert res.exit_code == 1 and "--hold" in res.stderr
    assert _limit(profile, fresh_db) == -1


def test_destructive_commands_need_confirmation(profile, fresh_db, cli):
    victim = connect_as(profile, "app", fresh_db)
    res = cli("emergency", "terminate", victim.info.backend_pid, "-d", fresh_db)
    assert res.exit_code == 1 and "--yes" in res.stderr
    res = cli("emergency", "kill-all", "-d", fresh_db)
    assert res.exit_code == 1 and "--yes" in res.stderr
    assert alive(victim)
    victim.close()


def test_unknown_database_is_refused_with_one_line_and_nothing_audited(profile, cli):
    before = len(audit_lines("emergency."))
    res = cli("emergency", "kill-all", "-d", "nosuchdb", "--yes")
    assert res.exit_code == 1 and "no database nosuchdb" in res.stderr
    res = cli("emergency", "kill-all", "-d", "nosuchdb", "--dry-run", "--json")
    assert res.exit_code == 1 and "no database nosuchdb" in res.stderr
    res = cli("emergency", "unblock", "-d", "nosuchdb", "--yes")
    assert res.exit_code == 1 and "no database nosuchdb" in res.stderr
    assert "Traceback" not in res.stderr
    assert len(audit_lines("emergency.")) == before


def test_queries_refuses_an_unknown_state(migrated, cli):
    res = cli("emergency", "queries", "--state", "bogus", "--older-than", "0s")
    assert res.exit_code == 1 and "unknown state(s) 'bogus'" in res.stderr
    assert "idle in transaction (aborted)" in res.stderr
    res = cli("emergency", "queries", "--state", "idle in transaction", "--older-than", "1h")
    assert res.exit_code == 0, res.stderr


def test_block_state_files_of_names_that_sanitize_alike_are_apart(monkeypatch, tmp_path):
    """"a/b" and "a_b" once shared one state file: unblocking one restored the other's limit.
    Each pair has its own file now, and a file written before (no digest) is still read for
    its own pair only."""
    from dataclasses import asdict

    monkeypatch.setenv("STUDYHUB_HOME", str(tmp_path))
    assert emergency.block_state_path("local", "a/b") != emergency.block_state_path("local", "a_b")
    legacy = tmp_path / "emergency" / "block-local-a_b.json"
    legacy.parent.mkdir(parents=True)
    state = emergency.BlockState("local", "a/b", 40, "2026-12-01T09:41:00+00:00", 1)
    legacy.write_text(json.dumps(asdict(state)))
    assert emergency.read_block_state("local", "a/b") == state
    assert emergency.read_block_state("local", "a_b") is None


def test_a_block_that_fails_is_audited(profile, fresh_db):
    """Blocking needs the database's owner: as the ops role it fails, changes nothing, leaves
    no state file, and the attempt is on record."""
    before = len(audit_lines("emergency.block_new"))
    with connect_as(profile, "ops", fresh_db) as not_owner:
        with pytest.raises(emergency.PrivilegeMissing, match="needs the database owner"):
            emergency.block_new_connections(not_owner, "local", fresh_db)
    assert _limit(profile, fresh_db) == -1
    assert emergency.read_block_state("local", fresh_db) is None
    (line,) = audit_lines("emergency.block_new")[before:]
    assert (line["outcome"], line["database"]) == ("failed", fresh_db)
    assert "needs the database owner" in line["error"]
