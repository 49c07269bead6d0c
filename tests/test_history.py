"""Incident history (ops.history): sampling a real blocking chain as the ops role, no literals
stored, replaying a past moment (``top --at``, ``diag locks --at``, the dashboard's slider),
summarising an incident (``diag history``), and pruning by age and by size."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from studyhub.ops import history, migrate
from studyhub.ops.history import HistorySettings
from tests.conftest import connect_as
from tests.diag_helpers import Background, as_json, is_waiting_for_lock, wait_for

SECRET = "x-secret-42"
HISTORY_TABLES = ("ops.activity_snapshots", "ops.activity_samples", "ops.statement_fingerprints")


@pytest.fixture
def hist_db(profile, fresh_db):
    """A migrated database with pg_stat_statements (as the app's database has)."""
    migrate.upgrade(profile, database=fresh_db)
    with connect_as(profile, "admin", fresh_db) as c:
        c.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t VALUES (1, 'a')")
    return fresh_db


class Chain:
    """Session 1 holds a row lock (idle in transaction); session 2 waits for its transaction
    (UPDATE of the same row), session 3 for the table (ALTER TABLE: an access exclusive lock,
    behind both). Every statement carries SECRET as a literal."""

    def __init__(self, profile, db) -> None:
        self.profile = profile
        # the utility statement once to completion: PostgreSQL 15's pg_stat_statements then
        # holds its text verbatim, literal included (the sampler must not copy it)
        with connect_as(profile, "app", db) as c:
            c.execute(f"ALTER TABLE t ALTER v SET DEFAULT '{SECRET}'")
        self.holder = connect_as(profile, "app", db, autocommit=False)
        self.holder.execute("SET application_name = 'holder-app'")
        self.holder.execute(f"UPDATE t SET v = '{SECRET}' WHERE id = 1")
        self.row_waiter = Background(profile, f"UPDATE t SET v = '{SECRET}' WHERE id = 1",
                                     database=db, setup=["SET application_name = 'row-waiter'"])
        wait_for(lambda: is_waiting_for_lock(profile, self.row_waiter.pid), what="session 2")
        self.ddl_waiter = Background(profile, f"ALTER TABLE t ALTER v SET DEFAULT '{SECRET}'",
                                     database=db, setup=["SET application_name = 'ddl-waiter'"])
        wait_for(lambda: is_waiting_for_lock(profile, self.ddl_waiter.pid), what="session 3")
        self.holder_pid = self.holder.info.backend_pid

    def close(self) -> None:
        if self.holder.closed:
            return
        self.holder.rollback()
        self.holder.close()
        self.row_waiter.close()
        self.ddl_waiter.close()


@pytest.fixture
def chain(profile, hist_db):
    c = Chain(profile, hist_db)
    yield c
    c.close()


def _no_secret_stored(profile, db) -> None:
    with connect_as(profile, "admin", db) as c:
        for table in HISTORY_TABLES:
            hits = c.execute(f"SELECT count(*) FROM {table} x WHERE x::text LIKE %s",
                             (f"%{SECRET}%",)).fetchone()[0]
            assert hits == 0, f"{SECRET} stored in {table}"


def test_a_sample_stores_the_blocking_chain_as_the_ops_role_without_literals(profile, hist_db,
                                                                            chain):
    with connect_as(profile, "admin", hist_db) as c:  # the secret is there to be copied
        assert c.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s",
                         (f"%{SECRET}%",)).fetchone()[0] >= 3
        assert c.execute("SELECT count(*) FROM pg_stat_statements WHERE query LIKE %s",
                         (f"%{SECRET}%",)).fetchone()[0] >= 1
    with connect_as(profile, "ops", hist_db, autocommit=False) as conn:
        assert conn.info.user == "studyhub_ops"
        result = history.take_sample(conn)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert result.waiting == 2 and result.blocked_chains == 1
    assert result.sessions >= 3 and result.by_state["idle in transaction"] >= 1
    assert result.longest_transaction_s is not None and result.longest_transaction_s > 0
    with connect_as(profile, "admin", hist_db) as c:
        rows = {r[0]: r[1:] for r in c.execute(
            "SELECT pid, blocked_by, lock_type, lock_object, held_mode, held_object, queryid, "
            "application FROM ops.activity_samples WHERE taken_at = %s",
            (result.taken_at,)).fetchall()}
        texts = dict(c.execute("SELECT queryid, query FROM ops.statement_fingerprints"
                               ).fetchall())
    row_waiter, ddl_waiter = rows[chain.row_waiter.pid], rows[chain.ddl_waiter.pid]
    assert row_waiter[0] == [chain.holder_pid]
    assert row_waiter[1] == "transactionid"
    assert chain.holder_pid in ddl_waiter[0] and ddl_waiter[1:3] == ("relation", "t")
    assert rows[chain.holder_pid][3:5] == ("RowExclusiveLock", "t")
    assert rows[chain.holder_pid][6] == "holder-app"
    # the UPDATE's text as pg_stat_statements normalised it; the ALTER's (not normalised) not
    assert texts[row_waiter[5]] == "UPDATE t SET v = $1 WHERE id = $2"
    assert texts.get(ddl_waiter[5]) is None
    _no_secret_stored(profile, hist_db)


def test_the_chain_replays_afterwards_as_a_moment(profile, hist_db, chain):
    with connect_as(profile, "ops", hist_db) as conn:
        taken = history.take_sample(conn).taken_at
    chain.close()  # the incident is over
    with connect_as(profile, "ops", hist_db) as conn:
        m = history.moment(conn, taken + timedelta(seconds=3))
        [root] = m.tree
        assert (m.taken_at, m.gap_s) == (taken, 3.0)
        assert root.pid == chain.holder_pid and not root.waiting
        assert root.count() == 3  # session 3 behind both: once under each
        assert {c.pid for c in root.children} == {chain.row_waiter.pid, chain.ddl_waiter.pid}
        assert m.connections_by_state["idle in transaction"] >= 1
        with pytest.raises(history.StudyhubError, match="no activity snapshot within 15 min"):
            history.moment(conn, taken - timedelta(minutes=1))
