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


# --------------------------------------------------------------- explain: one statement only
# Texts PostgreSQL's parser reads as several statements where a hand-written splitter saw one
# ($ is legal inside identifiers; E'' strings escape quotes with a backslash): the commit ends
# the rolled-back transaction, and what follows would run for real.
HIDDEN_COMMIT = (
    "select 1 as x$a$; commit; drop table widgets; select 1 as y$a$",  # the security issue's
    r"select E'\'' as a; commit; drop table widgets; select ''",
)


def _widgets(profile, db) -> int | None:
    with connect_as(profile, "app", db) as c:
        if c.execute("SELECT to_regclass('widgets')").fetchone()[0] is None:
            return None
        return c.execute("SELECT count(*) FROM widgets").fetchone()[0]


@pytest.mark.parametrize("text", HIDDEN_COMMIT, ids=["dollar-in-identifier", "E-string"])
def test_explain_refuses_a_commit_hidden_in_the_text_and_runs_nothing(profile, app_db, cli, text):
    res = cli("diag", "explain", "-d", app_db, text)
    assert res.exit_code == 1, res.stdout
    assert "refusing 4 statements (SELECT, COMMIT, DROP TABLE, SELECT): give exactly one" \
        in res.stderr
    assert "Traceback" not in res.stderr
    assert _widgets(profile, app_db) == 100  # the table is still there


def test_explain_analyze_judges_every_statement_and_a_hidden_delete_gets_no_way_through(
        profile, app_db, cli):
    from studyhub.ops import explain as ops_explain
    from tests.diag_helpers import audit_lines

    hidden = "select 1 as x$a$; commit; delete from widgets; select 1 as y$a$"
    before = len(audit_lines("diag.explain"))
    for extra in ((), ("--yes",)):  # refused outright: no confirmation to give or bypass
        res = cli("diag", "explain", "-d", app_db, "--analyze", *extra, hidden)
        assert res.exit_code == 1 and "give exactly one" in res.stderr, res.stderr
        assert "--analyze runs it for real" not in res.stderr  # no prompt was reached
    assert _widgets(profile, app_db) == 100
    assert len(audit_lines("diag.explain")) == before
    # analyze_effects itself judges every statement the parser finds, not only the first
    with connect_as(profile, "app", app_db) as c:
        effects = ops_explain.analyze_effects(c, hidden)
    assert not effects.plain_select
    assert any(r.startswith("DELETE is not a plain SELECT") for r in effects.reasons)
    assert effects.kind == "SELECT; COMMIT; DELETE; SELECT"


def test_one_statement_with_semicolon_comments_dollars_and_escapes_is_explained(
        profile, app_db, cli):
    for text in ("SELECT count(*) AS n$a$ FROM widgets /* $a$; */ ;",  # $ in an identifier
                 r"SELECT count(*) FROM widgets WHERE colour <> E'it\'s; red'; -- done",
                 "/* leading; */ SELECT count(*) FROM widgets WHERE colour = 'rød' ;  "):
        res = cli("diag", "explain", "-d", app_db, "--json", text)
        assert res.exit_code == 0, (text, res.stderr)
        out = as_json(res)
        assert out["plan"][0]["Plan"]["Node Type"] == "Aggregate", text
        assert not out["statement"].endswith(";")
    res = cli("diag", "explain", "-d", app_db, "--analyze", "--json",
              "SELECT count(*) AS n$a$ FROM widgets /* $a$; */;")
    assert res.exit_code == 0 and as_json(res)["actual_ms"] is not None, res.stderr


def test_explain_refuses_what_explain_cannot_take_before_confirming_or_auditing(
        profile, app_db, cli):
    from tests.diag_helpers import audit_lines

    before = len(audit_lines("diag.explain"))
    for text, kind in (("commit", "COMMIT"), ("drop table widgets", "DROP TABLE"),
                       ("vacuum widgets", "VACUUM"), ("truncate widgets", "TRUNCATE")):
        for args in ((), ("--analyze", "--yes")):
            res = cli("diag", "explain", "-d", app_db, *args, text)
            assert res.exit_code == 1, (text, args)
            assert f"EXPLAIN cannot take {kind}: give one SELECT, VALUES, TABLE, INSERT" \
                in res.stderr, (text, res.stderr)
    res = cli("diag", "explain", "-d", app_db, "EXPLAIN ANALYZE DELETE FROM widgets")
    assert res.exit_code == 1 and "without EXPLAIN" in res.stderr
    res = cli("diag", "explain", "-d", app_db, "SELEC 1")
    assert res.exit_code == 1 and "PostgreSQL's parser cannot read that SQL: syntax error at " \
        'or near "SELEC"' in res.stderr
    res = cli("diag", "explain", "-d", app_db, "  -- nothing\n ; ")
    assert res.exit_code == 1 and "no SQL statement given" in res.stderr
    assert _widgets(profile, app_db) == 100
    assert len(audit_lines("diag.explain")) == before  # nothing was confirmed or audited


def test_a_failed_reset_is_audited(profile, app_db, cli):
    from tests.diag_helpers import audit_lines

    before = len(audit_lines("diag.slow_queries.reset"))
    admin = connect_as(profile, "admin", app_db)
    admin.execute("REVOKE EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) "
                  "FROM studyhub_ops")
    try:
        res = cli("diag", "slow-queries", "-d", app_db, "--reset", "--yes")
        assert res.exit_code == 1
    finally:
        admin.execute("GRANT EXECUTE ON FUNCTION pg_stat_statements_reset(oid, oid, bigint) "
                      "TO studyhub_ops")
        admin.close()
    (line,) = audit_lines("diag.slow_queries.reset")[before:]
    assert line["outcome"] == "failed" and line["database"] == app_db
    assert "may not reset pg_stat_statements" in line["error"]
    res = cli("diag", "slow-queries", "-d", app_db, "--reset", "--yes")
    assert res.exit_code == 0, res.stderr
    line = audit_lines("diag.slow_queries.reset")[-1]
    assert line["outcome"] == "ok" and line["snapshot_saved"] is True


def test_a_confirmed_explain_analyze_that_fails_is_audited(profile, app_db, cli):
    """Confirmed, the DELETE runs for real; it outlives its statement_timeout, so it is rolled
    back and the line says it failed (the error's type only: no literals of the statement)."""
    from tests.diag_helpers import audit_lines

    before = len(audit_lines("diag.explain"))
    res = cli("diag", "explain", "-d", app_db, "--analyze", "--yes", "--timeout", "200ms",
              "DELETE FROM widgets WHERE pg_sleep(0.5) IS NOT NULL AND colour = 'red'")
    assert res.exit_code == 1 and "statement_timeout" in res.stderr
    (line,) = audit_lines("diag.explain")[before:]
    assert (line["action"], line["statement_kind"], line["outcome"], line["error"]) == \
        ("diag.explain.analyze", "DELETE", "failed", "StudyhubError")
    assert "red" not in str(line)
    with connect_as(profile, "app", app_db) as c:
        assert c.execute("SELECT count(*) FROM widgets").fetchone()[0] == 100
