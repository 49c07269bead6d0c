"""Least privilege: without pg_monitor the read commands name the missing GRANT instead of
reporting all clear, and a role that may not use the ops schema still gets its report."""

from __future__ import annotations

from tests.diag_helpers import (
    Background,
    TemporaryRole,
    as_json,
    is_running,
    remote_profile_env,
    wait_for,
)


def _query_age(profile, pid: int) -> float:
    from tests.conftest import connect_as

    with connect_as(profile, "admin") as c:
        row = c.execute("SELECT extract(epoch FROM now() - query_start) FROM pg_stat_activity "
                        "WHERE pid = %s", (pid,)).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def test_without_pg_monitor_read_commands_name_the_grant_instead_of_all_clear(
        cluster, profile, fresh_db, cli, monkeypatch, tmp_path):
    sleeper = Background(profile, "SELECT pg_sleep(60)", database=fresh_db)
    try:
        wait_for(lambda: is_running(profile, sleeper.pid, "pg_sleep"), what="the sleeper")
        wait_for(lambda: _query_age(profile, sleeper.pid) > 1.2, what="the sleeper to age")
        # the real ops role (pg_monitor) sees it: the baseline the limited role must not hide
        remote_profile_env(monkeypatch, cluster, "staging", database=fresh_db, tmp_path=tmp_path)
        seen = as_json(cli("emergency", "queries", "-p", "staging", "--older-than", "1s",
                           "--json"))
        assert sleeper.pid in {s["pid"] for s in seen}
        doc = as_json(cli("diag", "doctor", "-p", "staging", "--check", "long_queries",
                          "--set", "long_queries.warn_s=1", "--json"))
        assert doc["checks"][0]["status"] == "warn"
        assert sleeper.pid in {i["pid"] for i in doc["checks"][0]["items"]}

        with TemporaryRole(profile, fresh_db) as role:  # CONNECT only
            remote_profile_env(monkeypatch, cluster, "staging", database=fresh_db,
                               ops_user=role.name, ops_password=role.password)
            grant = f"GRANT pg_monitor TO {role.name};"
            for args in (("emergency", "queries", "--older-than", "1s"),
                         ("diag", "slow-queries"), ("diag", "locks"), ("diag", "connections"),
                         ("diag", "replication"), ("top", "--once", "--json")):
                res = cli(*args, "-p", "staging")
                assert res.exit_code == 1, (args, res.stdout)
                assert grant in res.stderr and "all clear" in res.stderr, args
                assert "no query older than" not in res.stdout
            res = cli("diag", "doctor", "-p", "staging", "--check", "long_queries",
                      "--check", "xid_wraparound", "--set", "long_queries.warn_s=1", "--json")
            assert res.exit_code == 1
            checks = {c["name"]: c for c in as_json(res)["checks"]}
            assert checks["long_queries"]["status"] == "warn"
            assert checks["long_queries"]["fix"] == grant
            assert "pg_read_all_stats" in checks["long_queries"]["detail"]
            assert checks["xid_wraparound"]["status"] == "ok"  # the others still run
    finally:
        sleeper.close()


def test_slow_queries_as_a_role_without_the_ops_schema_still_reports(
        cluster, profile, fresh_db, cli, monkeypatch):
    from studyhub.ops import migrate
    from tests.conftest import connect_as

    migrate.upgrade(profile, database=fresh_db)  # ops.statement_snapshots exists
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("SELECT count(*) FROM students")
    with TemporaryRole(profile, fresh_db, grants=("pg_monitor",)) as role:
        remote_profile_env(monkeypatch, cluster, "staging", database=fresh_db,
                           ops_user=role.name, ops_password=role.password)
        res = cli("diag", "slow-queries", "-p", "staging", "--json")
        assert res.exit_code == 0, res.stderr
        report = as_json(res)
        assert report["snapshot_saved"] is False
        assert any(n.startswith("history not saved") for n in report["notes"])
        assert any("students" in s["query"] for s in report["statements"])
        res = cli("diag", "slow-queries", "-p", "staging", "--since", "1h")
        assert res.exit_code == 1 and "schema ops" in res.stderr
        assert "Traceback" not in res.stderr


def test_slow_queries_since_without_history_table_is_one_line(profile, cli):
    res = cli("diag", "slow-queries", "-d", "postgres", "--since", "1h")
    assert res.exit_code == 1
    assert "history needs ops.statement_snapshots; run studyhub migrate up" in res.stderr
