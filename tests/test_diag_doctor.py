"""diag doctor, locks, replication: real conditions created, then detected."""

from __future__ import annotations

from psycopg import sql

from tests.conftest import connect_as
from tests.diag_helpers import (
    Background,
    as_json,
    is_running,
    is_waiting_for_lock,
    remote_profile_env,
    wait_for,
)


def _checks(result) -> dict[str, dict]:
    return {c["name"]: c for c in as_json(result)["checks"]}


def test_doctor_on_a_healthy_migrated_database_reports_ok_for_schema_checks(migrated, cli):
    res = cli("diag", "doctor", "--json")
    report = as_json(res)
    assert set(report) >= {"profile", "database", "status", "exit_code", "checks"}
    checks = {c["name"]: c for c in report["checks"]}
    assert {"connections", "idle_in_transaction", "long_queries", "blocked_queries",
            "replication_lag", "replication_slots", "xid_wraparound", "sequences",
            "invalid_indexes", "duplicate_indexes", "unused_indexes",
            "foreign_keys_without_index", "cache_hit", "vacuum", "pg_stat_statements",
            "slow_queries"} <= set(checks)
    for c in checks.values():
        assert set(c) >= {"name", "status", "value", "threshold", "fix"}
    # our schema indexes every foreign key and has no redundant index
    assert checks["foreign_keys_without_index"]["status"] == "ok"
    assert checks["duplicate_indexes"]["status"] == "ok"
    assert checks["pg_stat_statements"]["status"] == "ok"
    assert res.exit_code == report["exit_code"] == {"ok": 0, "warn": 1, "critical": 2}[report["status"]]


def test_lock_blocking_is_detected_as_a_tree_and_by_doctor(profile, fresh_db, cli):
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int)")
        c.execute("INSERT INTO accounts VALUES (1, 100)")
    holder = connect_as(profile, "app", fresh_db, autocommit=False)
    holder.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    waiter = Background(profile, "UPDATE accounts SET balance = 0 WHERE id = 1",
                        database=fresh_db)
    try:
        wait_for(lambda: is_waiting_for_lock(profile, waiter.pid), what="the waiter to block")
        tree = as_json(cli("diag", "locks", "--json"))["roots"]
        root = next(r for r in tree if r["pid"] == holder.info.backend_pid)
        assert root["waiting"] is False
        child = next(c for c in root["children"] if c["pid"] == waiter.pid)
        assert child["waiting"] and child["waiting_mode"] == "ShareLock"
        assert child["blocked_by"] == [holder.info.backend_pid]
        text = cli("diag", "locks")
        assert "root blocker" in text.stdout and str(waiter.pid) in text.stdout

        res = cli("diag", "doctor", "--check", "blocked_queries", "--set",
                  "blocked_queries.warn_s=0", "--json")
        check = _checks(res)["blocked_queries"]
        assert check["status"] == "warn" and res.exit_code == 1
        assert any(i["pid"] == waiter.pid and i["blocked_by"] == [holder.info.backend_pid]
                   for i in check["items"])
    finally:
        holder.rollback()
        holder.close()
        waiter.close()


def test_long_query_and_idle_in_transaction_are_detected(profile, fresh_db, cli):
    sleeper = Background(profile, "SELECT pg_sleep(30) /* long report */", database=fresh_db)
    idle = connect_as(profile, "app", fresh_db, autocommit=False)
    idle.execute("SELECT 1")  # transaction open, then nothing
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        res = cli("diag", "doctor", "--check", "long_queries", "--check", "idle_in_transaction",
                  "--set", "long_queries.warn_s=0", "--set", "idle_in_transaction.warn_s=0",
                  "--set", "idle_in_transaction.critical_s=0", "--json")
        checks = _checks(res)
        assert checks["long_queries"]["status"] == "warn"
        assert sleeper.pid in [i["pid"] for i in checks["long_queries"]["items"]]
        assert checks["idle_in_transaction"]["status"] == "critical"
        assert idle.info.backend_pid in [i["pid"] for i in checks["idle_in_transaction"]["items"]]
        assert res.exit_code == 2  # the worst status wins

        listed = as_json(cli("emergency", "queries", "--older-than", "0s", "-d", fresh_db, "--json"))
        assert {sleeper.pid, idle.info.backend_pid} <= {q["pid"] for q in listed}
    finally:
        idle.rollback()
        idle.close()
        sleeper.close()


def test_thresholds_come_from_studyhub_toml_and_unknown_ones_are_refused(
        migrated, cli, tmp_path, monkeypatch):
    cfg = tmp_path / "studyhub.toml"
    cfg.write_text("[doctor.connections]\nwarn_pct = 0\ncritical_pct = 1000\n")
    monkeypatch.setenv("STUDYHUB_CONFIG", str(cfg))
    res = cli("diag", "doctor", "--check", "connections", "--json")
    check = _checks(res)["connections"]
    assert check["status"] == "warn" and "≥0%" in check["threshold"] and res.exit_code == 1
    # --set wins over the file
    res = cli("diag", "doctor", "--check", "connections", "--set", "connections.warn_pct=99",
              "--json")
    assert _checks(res)["connections"]["status"] == "ok" and res.exit_code == 0
    res = cli("diag", "doctor", "--set", "connections.warm_pct=5")
    assert res.exit_code == 1 and "unknown doctor threshold 'connections.warm_pct'" in res.stderr
    res = cli("diag", "doctor", "--check", "connections", "--set", "connections.warn_pct=0",
              "--no-fail")
    assert res.exit_code == 0 and "warn" in res.stdout


def test_replica_that_stops_replaying_is_detected(with_replica, profile, fresh_db, cli):
    import psycopg

    profile = with_replica.profile()
    admin_replica = psycopg.connect(**{**profile.endpoint("admin", "postgres").conninfo(),
                                       "port": profile.replica_port}, autocommit=True)
    admin_replica.execute("SELECT pg_wal_replay_pause()")
    try:
        with connect_as(profile, "app", fresh_db) as c:
            c.execute("CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad "
                      "FROM generate_series(1, 5000) g")

        def lagging():
            rep = as_json(cli("diag", "replication", "--json"))
            lag = max((r["replay_lag_bytes"] or 0) for r in rep["replicas"])
            return rep if lag > 100_000 else None

        rep = wait_for(lagging, what="replay lag to build up")
        assert rep["replica_self"]["replay_pause_state"] == "paused"
        assert rep["replica_self"]["receive_replay_gap_bytes"] > 0
        res = cli("diag", "doctor", "--check", "replication_lag", "--set",
                  "replication_lag.warn_bytes=100000", "--json")
        check = _checks(res)["replication_lag"]
        assert check["status"] == "warn" and res.exit_code == 1
        assert check["items"][0]["replay_lag_bytes"] > 100_000
    finally:
        admin_replica.execute("SELECT pg_wal_replay_resume()")
        admin_replica.close()
    wait_for(lambda: max((r["replay_lag_bytes"] or 0) for r in
                         as_json(cli("diag", "replication", "--json"))["replicas"]) < 100_000,
             what="the replica to catch up")


def test_unreachable_replica_is_a_note_not_a_failure(migrated):
    import dataclasses

    from studyhub.local import pick_free_port
    from studyhub.ops import replication

    nowhere = dataclasses.replace(migrated, replica_host="127.0.0.1",
                                  replica_port=pick_free_port())
    with connect_as(migrated, "ops") as conn:
        report = replication.replication_report(nowhere, conn)
    assert report.replica_self is None
    assert "unreachable" in report.replica_note and str(nowhere.replica_port) in report.replica_note


def test_sequence_close_to_its_column_limit_is_critical(profile, fresh_db, cli):
    from studyhub.ops import migrate

    migrate.upgrade(profile, database=fresh_db)  # d02: the ops role may read sequences
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE tickets (id serial PRIMARY KEY, title text)")  # int4 column
        c.execute("SELECT setval('tickets_id_seq', 2000000000)")  # 93% of 2^31 - 1
    res = cli("diag", "doctor", "-d", fresh_db, "--check", "sequences", "--json")
    check = as_json(res)["checks"][0]
    assert check["status"] == "critical" and res.exit_code == 2
    item = check["items"][0]
    assert item["sequence"] == "public.tickets_id_seq" and item["limit"] == 2147483647
    assert item["column"] == "tickets.id" and item["used_pct"] > 90


def test_cache_hit_is_not_judged_while_reads_could_all_be_first_touches():
    from studyhub.ops.health import judge_cache_hit

    kw = {"warn_pct": 99, "critical_pct": 90, "min_reads": 10_000}
    # the demo right after seeding: 84% hits, but fewer reads than the tables have blocks
    status, value, _, fix = judge_cache_hit(57_703, 10_476, 15_600, **kw)
    assert status == "ok" and value.startswith("n/a, cold cache") and fix is None
    # the same ratio with reads well past the tables' size is a cache that does not fit
    status, value, _, fix = judge_cache_hit(57_703 * 5, 10_476 * 5, 15_600, **kw)
    assert status == "critical" and value == "84.63%" and "shared_buffers" in fix
    assert judge_cache_hit(0, 0, 0, **{**kw, "min_reads": 0})[0] == "ok"  # no division by zero


def test_doctor_reports_a_cold_cache_on_a_small_fresh_database(profile, fresh_db, cli):
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE t AS SELECT g AS id, repeat('x', 200) AS pad "
                  "FROM generate_series(1, 2000) g")
        c.execute("SELECT count(*) FROM t").fetchone()
    res = cli("diag", "doctor", "--database", fresh_db, "--check", "cache_hit",
              "--set", "cache_hit.min_reads=0", "--json")
    check = _checks(res)["cache_hit"]
    assert check["status"] == "ok" and check["value"].startswith("n/a")


def test_doctor_flags_log_settings_that_copy_values_into_the_log(cluster, fresh_db, cli,
                                                                   monkeypatch):
    """ok on the cluster `local up` configures; per-database and per-role settings and a server
    setting (ALTER SYSTEM) that let values into the log are named with how to undo each, and on
    a DigitalOcean profile with the configuration API request."""
    def check(*args: str) -> tuple[dict, int]:
        res = cli("diag", "doctor", "-d", fresh_db, "--check", "server_log_values", "--json",
                  *args)
        return _checks(res)["server_log_values"], res.exit_code

    ok, code = check()
    assert (ok["status"], ok["items"], code) == ("ok", [], 0)

    profile = cluster.profile()
    with connect_as(profile, "admin", fresh_db) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET log_min_duration_statement = 0")
                     .format(sql.Identifier(fresh_db)))
        conn.execute(sql.SQL("ALTER ROLE studyhub_app IN DATABASE {} SET log_statement = 'all'")
                     .format(sql.Identifier(fresh_db)))
    flagged, code = check()
    assert (flagged["status"], code) == ("warn", 1)
    by_setting = {i["setting"]: i for i in flagged["items"]}
    assert set(by_setting) == {"log_min_duration_statement", "log_statement"}
    assert by_setting["log_statement"]["set_by"] == \
        f'ALTER ROLE "studyhub_app" IN DATABASE "{fresh_db}"'
    assert f'ALTER DATABASE "{fresh_db}" RESET log_min_duration_statement;' in flagged["fix"]
    assert f'ALTER ROLE "studyhub_app" IN DATABASE "{fresh_db}" RESET log_statement;' \
        in flagged["fix"]

    with connect_as(profile, "admin", fresh_db) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} RESET ALL").format(sql.Identifier(fresh_db)))
        conn.execute(sql.SQL("ALTER ROLE studyhub_app IN DATABASE {} RESET ALL")
                     .format(sql.Identifier(fresh_db)))

    # A primary whose studyhub.conf an older version wrote (no log settings): `local up` fixes it.
    conf = cluster.primary_dir / "studyhub.conf"
    conf.write_text("".join(line for line in conf.read_text().splitlines(keepends=True)
                            if not line.startswith(("log_error_verbosity", "log_min_error"))))
    cluster._reload(profile.port)
    try:
        flagged, code = check()
        assert [i["setting"] for i in flagged["items"]] == ["log_error_verbosity",
                                                            "log_min_error_statement"]
        assert flagged["fix"].startswith("run `studyhub local up`")
    finally:
        cluster.up()
    assert check()[0]["status"] == "ok"

    with connect_as(profile, "admin", fresh_db) as conn:
        conn.execute("ALTER SYSTEM SET log_error_verbosity = 'verbose'")
    cluster._reload(profile.port)
    try:
        flagged, code = check()
        assert [i["setting"] for i in flagged["items"]] == ["log_error_verbosity"]
        item = flagged["items"][0]
        assert item["value"] == "verbose" and item["safe"] == "terse"
        assert item["set_by"].endswith("postgresql.auto.conf") and "DETAIL" in item["why"]
        # ALTER SYSTEM wins over studyhub.conf: `local up` would not help, RESET does.
        assert flagged["fix"] == \
            "ALTER SYSTEM RESET log_error_verbosity; SELECT pg_reload_conf(); (as a superuser)"

        remote_profile_env(monkeypatch, cluster, "staging", database=fresh_db)
        monkeypatch.setenv("STUDYHUB_STAGING_DO_CLUSTER_ID", "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30")
        on_do, code = check("-p", "staging")
        assert code == 1 and 'PATCH /v2/databases/9cc10173-e9ea-4176-9dbc-a4cee4c4ff30/config ' \
            '{"config": {"log_error_verbosity": "TERSE"}}' in on_do["fix"]
    finally:
        with connect_as(profile, "admin", fresh_db) as conn:
            conn.execute("ALTER SYSTEM RESET log_error_verbosity")
        cluster._reload(profile.port)


def test_log_value_leaks_judges_postgresql_defaults_and_the_local_settings():
    from studyhub.local import LOG_PRIVACY_SETTINGS
    from studyhub.ops.health import log_value_leaks

    assert log_value_leaks(LOG_PRIVACY_SETTINGS) == []
    assert [n for n, _ in log_value_leaks({})] == ["log_error_verbosity",
                                                    "log_min_error_statement"]
    # Parameter values travel with logged statements only; under terse, error CONTEXT is gone.
    slow = {**LOG_PRIVACY_SETTINGS, "log_min_duration_statement": "250",
            "log_parameter_max_length": "-1", "log_parameter_max_length_on_error": "-1"}
    assert [n for n, _ in log_value_leaks(slow)] == ["log_min_duration_statement",
                                                      "log_parameter_max_length"]
    assert [n for n, _ in log_value_leaks({**LOG_PRIVACY_SETTINGS,
                                           "auto_explain.log_min_duration": "0"})] == \
        ["auto_explain.log_min_duration"]
