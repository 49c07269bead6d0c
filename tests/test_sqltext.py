"""SQL text from a person or from pg_stat_statements: read by PostgreSQL's own parser (pglast)
and sent on the extended query protocol, where the server runs at most one statement — for
``diag explain``, the dashboard's EXPLAIN page (``explain_statement``) and ``diag advise``."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from studyhub.errors import RefusedError, StudyhubError
from studyhub.ops import advisor, explain
from studyhub.ops.sqltext import Statement, execute_extended, one_statement, parse_statements
from tests.conftest import connect_as

ATTACK = "select 1 as x$a$; commit; drop table victims; select 1 as y$a$"
ATTACK_WITH_PARAM = "select $1 as x$a$; commit; drop table victims; select 1 as y$a$"


@pytest.fixture
def victims(profile, fresh_db):
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE victims (id int PRIMARY KEY)")
        c.execute("INSERT INTO victims SELECT generate_series(1, 10)")
    return fresh_db


def _still_there(profile, db) -> bool:
    with connect_as(profile, "app", db) as c:
        return c.execute("SELECT to_regclass('victims') IS NOT NULL").fetchone()[0] and \
            c.execute("SELECT count(*) FROM victims").fetchone()[0] == 10


def test_statements_are_what_postgresqls_parser_reads_with_their_own_text():
    # non-ASCII before and inside statements: pglast's offsets are character indexes here
    found = parse_statements("/* ü */ select 'üüü' as a;select 'éé' as b ;\n"
                             " select 3 -- ö\n")
    assert [s.text for s in found] == ["select 'üüü' as a", "select 'éé' as b",
                                       "select 3 -- ö"]
    assert [s.kind for s in parse_statements(ATTACK)] == ["SELECT", "COMMIT", "DROP TABLE",
                                                         "SELECT"]
    assert one_statement("SELECT * FROM t WHERE a = $1;").has_placeholders
    assert not one_statement("SELECT '$1', a$1 FROM t").has_placeholders  # no parameter
    with pytest.raises(RefusedError, match="refusing 4 statements"):
        one_statement(ATTACK)
    with pytest.raises(StudyhubError, match="NUL"):  # libpq would cut the text there
        one_statement("select 1\x00; drop table victims")
    with pytest.raises(StudyhubError, match="unterminated quoted string"):
        one_statement("select 'abc")


def test_the_server_refuses_a_second_statement_sent_through_execute_extended(profile, victims):
    """Bypasses the parse check: the extended protocol alone stops a hidden commit. Fails if
    execute_extended (or explain and the generic plan) go back to the simple protocol."""
    with connect_as(profile, "app", victims, autocommit=False) as c:
        with pytest.raises(psycopg.errors.SyntaxError,
                           match="cannot insert multiple commands into a prepared statement"):
            execute_extended(c, sql.SQL("EXPLAIN ") + sql.SQL(ATTACK))
        c.rollback()
        # the generic plan's PREPARE … AS <text>, given a statement that skipped the parser
        unchecked = Statement(ATTACK_WITH_PARAM, one_statement("select $1").node, "SELECT")
        with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
            with c.transaction():
                explain.generic_plan(c, unchecked, sql.SQL("FORMAT JSON"))
        c.rollback()
    assert _still_there(profile, victims)


def test_explain_statement_sends_on_the_extended_protocol_even_without_the_parse_check(
        profile, victims, monkeypatch):
    def unchecked(text: str, *, analyze: bool = False) -> Statement:
        return Statement(text, one_statement("select 1").node, "SELECT")

    monkeypatch.setattr(explain, "explainable", unchecked)
    with connect_as(profile, "app", victims, autocommit=False) as c:
        with pytest.raises(StudyhubError, match="cannot insert multiple commands"):
            explain.explain_statement(c, ATTACK)
    assert _still_there(profile, victims)


@pytest.mark.parametrize("text", [ATTACK, ATTACK_WITH_PARAM])
def test_explain_statement_refuses_several_statements_as_the_dashboard_calls_it(
        profile, victims, text):
    """The dashboard's EXPLAIN page passes a pg_stat_statements text to explain_statement on
    an app-role connection outside autocommit."""
    with connect_as(profile, "app", victims, autocommit=False) as c:
        with pytest.raises(RefusedError, match="give exactly one"):
            explain.explain_statement(c, text, analyze=False, timeout="10s")
    assert _still_there(profile, victims)


def test_the_advisor_never_plans_a_text_with_several_statements(profile, victims):
    assert advisor.plannable(ATTACK_WITH_PARAM) is None
    assert advisor.plannable("SELECT id AS id$a$ FROM victims WHERE id = $1 /* $a$; */")
    with connect_as(profile, "app", victims, autocommit=False) as c:
        with pytest.raises(RefusedError, match="give exactly one"):
            advisor.plan(c, ATTACK_WITH_PARAM)
        c.rollback()
    assert _still_there(profile, victims)
