"""diag connections (SSL use, PgBouncer pools) and one-line errors for bad input."""

from __future__ import annotations

import psycopg

from tests.diag_helpers import as_json


def test_connections_group_counts_ssl_and_show_pooler_pools(with_pooler, cli):
    profile = with_pooler.profile()
    ep = profile.endpoint("app")
    secure = psycopg.connect(**{**ep.conninfo(), "sslmode": "require"},
                             application_name="ssl-client")
    plain = psycopg.connect(**ep.conninfo(), application_name="plain-client")
    pooled = psycopg.connect(**profile.endpoint("pooler").conninfo(), prepare_threshold=None)
    try:
        pooled.execute("SELECT 1")
        report = as_json(cli("diag", "connections", "--by", "app", "--json"))
        groups = {g["key"]: g for g in report["groups"]}
        assert groups["ssl-client"]["ssl"] == 1 and groups["plain-client"]["ssl"] == 0
        assert groups["plain-client"]["idle"] == 1
        assert report["max_connections"] == 100
        assert report["pools"] is not None, report["pooler_note"]
        assert any(p["database"] == profile.database and p["mode"] == "transaction"
                   for p in report["pools"])
        text = cli("diag", "connections", "--by", "user")
        assert "SHOW POOLS" in text.stdout and "studyhub_app" in text.stdout
    finally:
        for c in (secure, plain, pooled):
            c.close()


def test_bad_input_gets_one_line_and_a_non_zero_exit(migrated, cli):
    for args, expected in (
        (("diag", "slow-queries", "--since", "5 fortnights"), "invalid duration"),
        (("diag", "slow-queries", "--sort", "speed"), "unknown sort 'speed'"),
        (("diag", "connections", "--by", "mood"), "cannot group by 'mood'"),
        (("diag", "doctor", "--check", "vibes"), "unknown check(s) vibes"),
        (("diag", "doctor", "--set", "nonsense"), "--set expects name=value"),
        (("emergency", "queries", "--older-than", "soon"), "invalid duration"),
        (("diag", "doctor", "-p", "nowhere"), "unknown profile 'nowhere'"),
    ):
        res = cli(*args)
        assert res.exit_code == 1, args
        assert expected in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
