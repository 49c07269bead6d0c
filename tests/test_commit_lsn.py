"""The read-your-writes mark: the WAL position the API records after a write must be at or past
the commit, also when synchronous_commit is off (COMMIT returns before its record is written,
so the written position, pg_current_wal_lsn(), is usually still below it)."""

from __future__ import annotations

from studyhub.ops.queries import load
from tests.conftest import connect_as


def test_commit_position_covers_an_asynchronous_commit(profile, fresh_db):
    mark_sql = load("get_commit_wal_lsn")
    with connect_as(profile, "app", fresh_db) as conn:
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("SET synchronous_commit = off")
        for i in range(20):
            conn.execute("INSERT INTO t VALUES (%s)", (i,))  # autocommit: one commit each
            commit_end = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]
            covered = conn.execute(f"SELECT ({mark_sql})::pg_lsn >= %s::pg_lsn",
                                   (commit_end,)).fetchone()[0]
            assert covered, f"commit {i}: the mark is below the commit record"
