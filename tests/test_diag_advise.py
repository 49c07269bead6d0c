"""diag advise: hypothetical indexes (hypopg) on generically planned $n statements."""

from __future__ import annotations

from tests.conftest import connect_as
from tests.diag_helpers import as_json


def test_advise_recommends_the_missing_index_only_and_apply_builds_it(profile, fresh_db, cli):
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE events (id bigint PRIMARY KEY, account_id int NOT NULL, "
                  "kind int NOT NULL, payload text)")
        c.execute("INSERT INTO events SELECT g, g % 2000, g % 5, md5(g::text) "
                  "FROM generate_series(1, 100000) g")
        c.execute("ANALYZE events")
        for i in range(20):  # the workload, sent with parameters: pg_stat_statements shows $1
            c.execute("SELECT id, payload FROM events WHERE account_id = %s", (i,))
            c.execute("SELECT payload FROM events WHERE id = %s", (i,))  # already indexed (pk)
    res = cli("diag", "advise", "-d", fresh_db, "--json")
    assert res.exit_code == 0, res.stderr
    report = as_json(res)
    recs = report["recommendations"]
    assert [(r["table"], r["columns"]) for r in recs] == [("events", ["account_id"])]
    rec = recs[0]
    assert rec["create_sql"] == ('CREATE INDEX CONCURRENTLY "ix_events_account_id" ON '
                                 '"public"."events" ("account_id");')
    assert rec["cost_after"] < rec["cost_before"] * 0.5
    by_id = {s["queryid"]: s for s in report["statements"]}
    assert rec["queryids"] and all("account_id = $1" in by_id[q]["query"]
                                   for q in rec["queryids"])
    pk = next(s for s in report["statements"] if "WHERE id = $1" in s["query"])
    assert pk["index"] is None and "not worth an index" in pk["note"]

    res = cli("diag", "advise", "-d", fresh_db, "--apply", "--yes")
    assert res.exit_code == 0, res.stderr
    assert "recommend CREATE INDEX CONCURRENTLY" in res.stdout and "built ix_events_account_id" in res.stdout
    with connect_as(profile, "app", fresh_db) as c:
        valid = c.execute("SELECT indisvalid AND indisready FROM pg_index WHERE indexrelid = "
                          "'ix_events_account_id'::regclass").fetchone()[0]
        assert valid
    again = as_json(cli("diag", "advise", "-d", fresh_db, "--json"))
    assert again["recommendations"] == []


def test_two_column_index_wins_only_when_it_cuts_much_more_and_absorbs_its_prefix(
        profile, fresh_db, cli):
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE posts (id bigint PRIMARY KEY, author_id int NOT NULL, "
                  "created_at timestamptz NOT NULL, body text)")
        c.execute("INSERT INTO posts SELECT g, g % 500, now() - g * interval '1 minute', "
                  "md5(g::text) FROM generate_series(1, 100000) g")
        c.execute("ANALYZE posts")
        for i in range(10):
            c.execute("SELECT id FROM posts WHERE author_id = %s ORDER BY created_at DESC "
                      "LIMIT 10", (i,))
            c.execute("SELECT count(*) FROM posts WHERE author_id = %s", (i,))
    report = as_json(cli("diag", "advise", "-d", fresh_db, "--json"))
    recs = [(r["table"], r["columns"]) for r in report["recommendations"]]
    # (author_id) alone would serve the count; (author_id, created_at) serves both, so only it
    assert recs == [("posts", ["author_id", "created_at"])]
    assert len(report["recommendations"][0]["queryids"]) == 2


def test_no_wider_index_once_one_column_makes_the_statement_cheap(profile, fresh_db, cli):
    """With few rows per author, (author_id) leaves the statement below the cost worth indexing;
    the wider (author_id, created_at) would shave a little more but cost every write."""
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE posts (id bigint PRIMARY KEY, author_id int NOT NULL, "
                  "created_at timestamptz NOT NULL, body text)")
        c.execute("INSERT INTO posts SELECT g, g % 20000, now() - g * interval '1 minute', "
                  "md5(g::text) FROM generate_series(1, 100000) g")
        c.execute("ANALYZE posts")
        for i in range(10):
            c.execute("SELECT id FROM posts WHERE author_id = %s ORDER BY created_at DESC "
                      "LIMIT 10", (i,))
    report = as_json(cli("diag", "advise", "-d", fresh_db, "--json"))
    recs = [(r["table"], r["columns"]) for r in report["recommendations"]]
    assert recs == [("posts", ["author_id"])]


def test_a_costly_one_off_statement_gets_no_index_and_apply_dry_run_builds_nothing(
        profile, fresh_db, cli):
    """A migration's backfill runs once: however costly, it is not worth an index that every
    write pays for forever (--min-calls, 10 by default)."""
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE reviews (id bigint PRIMARY KEY, legacy_id bigint, "
                  "reviewed_at timestamptz NOT NULL)")
        c.execute("INSERT INTO reviews SELECT g, g * 7, now() - g * interval '1 minute' "
                  "FROM generate_series(1, 100000) g")
        c.execute("ANALYZE reviews")
        c.execute("SELECT id, reviewed_at FROM reviews WHERE legacy_id = %s", (70,))
    report = as_json(cli("diag", "advise", "-d", fresh_db, "--json"))
    assert report["recommendations"] == [] and report["min_calls"] == 10
    one_off = next(s for s in report["statements"] if "legacy_id = $1" in s["query"])
    assert one_off["calls"] == 1 and "--min-calls" in one_off["note"]
    # the same statement is worth an index once it is asked for with --min-calls 1
    res = cli("diag", "advise", "-d", fresh_db, "--min-calls", "1", "--apply", "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert ('would run on local: CREATE INDEX CONCURRENTLY "ix_reviews_legacy_id"'
            in res.stdout)
    with connect_as(profile, "app", fresh_db) as c:  # --dry-run built nothing
        assert c.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'reviews'"
                         ).fetchone()[0] == 1


def test_advise_reads_statements_with_postgresqls_parser(profile, fresh_db, cli):
    """A $ inside an identifier is no dollar quote: this is one statement (a hand-written
    splitter saw two and skipped it). Texts with several statements are never planned
    (tests/test_sqltext.py)."""
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE events (id bigint PRIMARY KEY, account_id int NOT NULL, "
                  "payload text)")
        c.execute("INSERT INTO events SELECT g, g % 2000, md5(g::text) "
                  "FROM generate_series(1, 100000) g")
        c.execute("ANALYZE events")
        for i in range(12):
            c.execute("SELECT id AS id$a$, payload FROM events WHERE account_id = %s "
                      "/* $a$; */", (i,))
    report = as_json(cli("diag", "advise", "-d", fresh_db, "--json"))
    assert [(r["table"], r["columns"]) for r in report["recommendations"]] == \
        [("events", ["account_id"])]
