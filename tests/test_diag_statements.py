"""slow-queries (history across resets, privileges), explain, missing extensions."""

from __future__ import annotations

import pytest

from studyhub.ops import migrate
from tests.conftest import connect_as
from tests.diag_helpers import as_json


@pytest.fixture
def app_db(profile, fresh_db):
    migrate.upgrade(profile, database=fresh_db)  # ops.statement_snapshots
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE widgets (id int PRIMARY KEY, colour text)")
        c.execute("INSERT INTO widgets SELECT g, 'red' FROM generate_series(1, 100) g")
    return fresh_db


def _run(profile, db, times: int) -> None:
    with connect_as(profile, "app", db) as c:
        for i in range(times):
            c.execute("SELECT count(*) FROM widgets WHERE colour = %s /* widget-count */",
                      (f"c{i}",))


def _widget(report) -> dict | None:
    return next((s for s in report["statements"] if "widget-count" in s["query"]), None)


def test_slow_queries_report_and_history_survive_a_reset(profile, app_db, cli):
    first = as_json(cli("diag", "slow-queries", "-d", app_db, "--json"))  # baseline snapshot
    assert first["snapshot_saved"] is True and _widget(first) is None
    _run(profile, app_db, 5)
    report = as_json(cli("diag", "slow-queries", "-d", app_db, "--json", "--sort", "calls"))
    w = _widget(report)
    assert w["calls"] == 5 and w["role"] == "studyhub_app" and 0 < w["share_pct"] <= 100
    assert w["cache_hit_pct"] is not None and "$1" in w["query"]  # normalized: no values

    res = cli("diag", "slow-queries", "-d", app_db, "--reset")
    assert res.exit_code == 1 and "--yes" in res.stderr  # needs confirmation
    res = cli("diag", "slow-queries", "-d", app_db, "--reset", "--yes")
    assert res.exit_code == 0, res.stderr
    _run(profile, app_db, 2)
    now = as_json(cli("diag", "slow-queries", "-d", app_db, "--json"))
    assert _widget(now)["calls"] == 2  # pg_stat_statements itself forgot the first five
    history = as_json(cli("diag", "slow-queries", "-d", app_db, "--json", "--since", "1h"))
    assert _widget(history)["calls"] == 7 and "from stored snapshots" in history["window"]
    with connect_as(profile, "ops", app_db) as c:
        stored = c.execute("SELECT count(DISTINCT captured_at) FROM ops.statement_snapshots"
                           ).fetchone()[0]
    assert stored >= 4


def test_reset_without_the_privilege_names_the_grant(profile, app_db, cli):
    admin = connect_as(profile, "admin", app_db)
    admin.execute("REVOKE EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) "
                  "FROM studyhub_ops")
    try:
        res = cli("diag", "slow-queries", "-d", app_db, "--reset", "--yes")
        assert res.exit_code == 1
        assert ("GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) TO "
                "studyhub_ops") in res.stderr
    finally:
        admin.execute("GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) "
                      "TO studyhub_ops")
        admin.close()


@pytest.fixture
def bare_db(cluster):
    """A database without pg_stat_statements or hypopg."""
    name = "t_bare_" + __import__("uuid").uuid4().hex[:8]
    with cluster.admin_connect() as c:
        c.execute(f'CREATE DATABASE "{name}" OWNER studyhub_app')
    yield name
    cluster.drop_database(name)


def test_missing_extensions_are_named_with_the_statement_to_enable_them(cluster, bare_db, cli):
    res = cli("diag", "slow-queries", "-d", bare_db)
    assert res.exit_code == 1
    assert f"in database {bare_db} run: CREATE EXTENSION pg_stat_statements;" in res.stderr
    res = cli("diag", "advise", "-d", bare_db)
    assert res.exit_code == 1 and "CREATE EXTENSION pg_stat_statements;" in res.stderr
    doctor = as_json(cli("diag", "doctor", "-d", bare_db, "--check", "pg_stat_statements",
                         "--json"))
    assert doctor["checks"][0]["status"] == "warn"
    assert "CREATE EXTENSION pg_stat_statements;" in doctor["checks"][0]["fix"]
    with cluster.admin_connect(bare_db) as c:
        c.execute("CREATE EXTENSION pg_stat_statements")
    res = cli("diag", "advise", "-d", bare_db)
    assert res.exit_code == 1 and "run: CREATE EXTENSION hypopg;" in res.stderr


def test_explain_runs_one_statement_and_always_rolls_back(profile, app_db, cli):
    res = cli("diag", "explain", "-d", app_db, "--analyze", "DELETE FROM widgets", "--yes")
    assert res.exit_code == 0, res.stderr
    assert "Delete on widgets" in res.stdout and "Execution Time" in res.stdout
    with connect_as(profile, "app", app_db) as c:
        assert c.execute("SELECT count(*) FROM widgets").fetchone()[0] == 100
    res = cli("diag", "explain", "-d", app_db, "SELECT 1; DROP TABLE widgets")
    assert res.exit_code == 1 and "give exactly one" in res.stderr
    res = cli("diag", "explain", "-d", app_db, "SELECT ';' AS semicolon -- ; comment")
    assert res.exit_code == 0, res.stderr
    res = cli("diag", "explain", "-d", app_db, "--analyze", "--timeout", "200ms",
              "SELECT pg_sleep(5)")
    assert res.exit_code == 1 and "statement_timeout" in res.stderr
    res = cli("diag", "explain", "-d", app_db, "--json",
              "SELECT * FROM widgets WHERE colour = $1")
    out = as_json(res)
    assert out["generic"] is True and out["plan"][0]["Plan"]["Node Type"] == "Seq Scan"
    with connect_as(profile, "app", app_db) as c:
        assert c.execute("SELECT count(*) FROM widgets").fetchone()[0] == 100


def test_explain_analyze_of_anything_but_a_plain_select_needs_confirmation(
        cluster, profile, app_db, cli, monkeypatch, tmp_path):
    from tests.diag_helpers import audit_lines, remote_profile_env

    with connect_as(profile, "app", app_db) as c:
        c.execute("CREATE SEQUENCE widget_numbers")
    before = len(audit_lines("diag.explain"))
    for stmt, why in (("DELETE FROM widgets", "DELETE is not a plain SELECT"),
                      ("WITH d AS (DELETE FROM widgets RETURNING id) SELECT count(*) FROM d",
                       "data-modifying WITH (DELETE)"),
                      ("SELECT * FROM widgets FOR UPDATE", "FOR UPDATE/SHARE"),
                      ("SELECT nextval('widget_numbers')", "volatile function(s) nextval")):
        res = cli("diag", "explain", "-d", app_db, "--analyze", stmt)
        assert res.exit_code == 1 and "--yes" in res.stderr, stmt
        assert why in res.stderr, (stmt, res.stderr)
    with connect_as(profile, "app", app_db) as c:  # nothing ran: the sequence never advanced
        assert c.execute("SELECT last_value, is_called FROM widget_numbers").fetchone() == (1, False)
    assert len(audit_lines("diag.explain")) == before
    # a plain SELECT (even calling random()) needs nothing; without --analyze nothing is run
    res = cli("diag", "explain", "-d", app_db, "--analyze",
              "SELECT count(*) FROM widgets WHERE random() < 2")
    assert res.exit_code == 0 and "Execution Time" in res.stdout, res.stderr
    res = cli("diag", "explain", "-d", app_db, "DELETE FROM widgets")
    assert res.exit_code == 0 and "Delete on widgets" in res.stdout, res.stderr
    # production must be named, even with --yes
    remote_profile_env(monkeypatch, cluster, "production", database=app_db, tmp_path=tmp_path)
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    res = cli("diag", "explain", "--analyze", "--yes", "DELETE FROM widgets")
    assert res.exit_code == 1 and "--profile production" in res.stderr
    res = cli("diag", "explain", "--analyze", "--yes", "-p", "production", "DELETE FROM widgets")
    assert res.exit_code == 0 and "Delete on widgets" in res.stdout, res.stderr
    assert [a["statement_kind"] for a in audit_lines("diag.explain")[before:]] == ["DELETE"]
    with connect_as(profile, "app", app_db) as c:
        assert c.execute("SELECT count(*) FROM widgets").fetchone()[0] == 100
