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


def test_without_pg_stat_statements_the_chain_is_sampled_with_query_ids_only(profile, fresh_db):
    """A database where pg_stat_statements is not installed: the sample still stores who
    blocks whom, and no statement text at all."""
    migrate.upgrade(profile, database=fresh_db)
    with connect_as(profile, "app", fresh_db) as c:
        c.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        c.execute("INSERT INTO t VALUES (1, 'a')")
    with connect_as(profile, "admin", fresh_db) as c:
        c.execute("DROP EXTENSION IF EXISTS pg_stat_statements")
    holder = connect_as(profile, "app", fresh_db, autocommit=False)
    holder.execute(f"UPDATE t SET v = '{SECRET}' WHERE id = 1")
    holder_pid = holder.info.backend_pid
    waiter = Background(profile, f"UPDATE t SET v = '{SECRET}' WHERE id = 1", database=fresh_db)
    try:
        wait_for(lambda: is_waiting_for_lock(profile, waiter.pid), what="the waiter")
        with connect_as(profile, "ops", fresh_db) as conn:
            result = history.take_sample(conn)
            history.take_sample(conn)  # the second one knows to leave the view out
    finally:
        holder.rollback()
        holder.close()
        waiter.close()
    assert result.waiting == 1 and result.blocked_chains == 1
    with connect_as(profile, "admin", fresh_db) as c:
        blocked_by = c.execute("SELECT blocked_by FROM ops.activity_samples WHERE pid = %s "
                               "AND taken_at = %s", (waiter.pid, result.taken_at)).fetchone()[0]
        texts = c.execute("SELECT count(*) FROM ops.statement_fingerprints "
                          "WHERE query IS NOT NULL").fetchone()[0]
    assert blocked_by == [holder_pid] and texts == 0
    _no_secret_stored(profile, fresh_db)


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


def test_top_and_diag_locks_replay_the_chain_and_diag_history_names_the_root_blocker(
        profile, hist_db, chain, cli):
    with connect_as(profile, "ops", hist_db) as conn:
        first = history.take_sample(conn).taken_at
        wait_for(lambda: conn.execute("SELECT clock_timestamp() > %s + interval '1 second'",
                                      (first,)).fetchone()[0], what="a second to pass")
        second = history.take_sample(conn).taken_at
    chain.close()
    asked = (second + timedelta(seconds=2)).isoformat()

    top = as_json(cli("top", "--at", asked, "-d", hist_db, "--json", "--sort", "blocking"))
    assert top["taken_at"] == second.isoformat() and top["gap_s"] == 2.0
    by_pid = {s["pid"]: s for s in top["sessions"]}
    assert by_pid[chain.holder_pid]["blocking"] is True
    assert by_pid[chain.row_waiter.pid]["blocked_by"] == [chain.holder_pid]
    assert by_pid[chain.row_waiter.pid]["query"] == "UPDATE t SET v = $1 WHERE id = $2"
    assert {s["pid"] for s in top["sessions"][:2]} == {chain.holder_pid,  # blockers first
                                                       chain.row_waiter.pid}
    assert [r["pid"] for r in top["tree"]] == [chain.holder_pid]

    text = cli("top", "--at", asked, "-d", hist_db)
    assert text.exit_code == 0, text.stderr
    assert "snapshot of" in text.stdout and "2.0s before the asked" in text.stdout
    assert "root blocker" in text.stdout and "holder-app" in text.stdout
    assert "waits" in text.stdout and "on t" in text.stdout

    locks = cli("diag", "locks", "--at", asked, "-d", hist_db)
    assert locks.exit_code == 0, locks.stderr
    assert f"{chain.holder_pid} studyhub_app@{hist_db} holder-app" in locks.stdout
    assert "root blocker" in locks.stdout and "blocks 3" in locks.stdout
    assert as_json(cli("diag", "locks", "--at", asked, "-d", hist_db, "--json"))[
        "roots"][0]["pid"] == chain.holder_pid

    frm = (first - timedelta(seconds=1)).isoformat()
    to = (second + timedelta(seconds=1)).isoformat()
    summary = as_json(cli("diag", "history", "--from", frm, "--to", to, "-d", hist_db, "--json"))
    assert summary["snapshots"] == 2 and summary["peak_waiting"] == 2
    [root] = summary["root_blockers"]
    assert root["pid"] == chain.holder_pid and root["application"] == "holder-app"
    assert root["blocked_sessions"] == 2 and root["most_blocked_at_once"] == 2
    assert root["held_mode"] == "RowExclusiveLock" and root["held_object"] == "t"
    assert root["blocked_for_s"] > 0
    waits = {w["pid"]: w for w in summary["longest_waits"]}
    assert waits[chain.ddl_waiter.pid]["lock_object"] == "t"
    assert waits[chain.row_waiter.pid]["lock_type"] == "transactionid"
    assert waits[chain.row_waiter.pid]["root_blockers"] == [chain.holder_pid]
    assert any(e["wait_event_type"] == "Lock" for e in summary["wait_events"])
    text = cli("diag", "history", "--from", frm, "--to", to, "-d", hist_db)
    assert text.exit_code == 0 and "root blockers" in text.stdout
    assert f"{chain.holder_pid}" in text.stdout and "holder-app" in text.stdout
    _no_secret_stored(profile, hist_db)


@pytest.mark.parametrize("args, message", [
    (("top", "--at", "yesterday-ish"), "invalid --at time 'yesterday-ish'"),
    (("diag", "locks", "--at", "09:41 tomorrow"), "invalid --at time"),
    (("diag", "history", "--from", "2026-12-02 10:00", "--to", "2026-12-02 09:00"),
     "must be after --from"),
    (("diag", "history", "--from", "noon"), "invalid --from time 'noon'"),
])
def test_bad_times_get_one_line(migrated, cli, args, message):
    res = cli(*args)
    assert res.exit_code != 0 and message in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_moment_with_no_snapshot_near_it_says_what_the_history_holds(profile, hist_db, cli):
    res = cli("top", "--at", "2026-12-02 09:41", "-d", hist_db)
    assert res.exit_code == 1 and "no activity snapshot within 15 min before" in res.stderr
    assert "the history is empty" in res.stderr
    with connect_as(profile, "ops", hist_db) as conn:
        taken = history.take_sample(conn).taken_at
    res = cli("diag", "locks", "--at", (taken + timedelta(hours=1)).isoformat(), "-d", hist_db)
    assert res.exit_code == 1 and "the history holds" in res.stderr
    res = cli("diag", "history", "--from", "2020-01-01 00:00", "--to", "2020-01-02 00:00",
              "-d", hist_db)
    assert res.exit_code == 1 and "no activity snapshots between" in res.stderr


def test_the_sampler_refuses_a_role_without_the_grants_in_one_line(profile, hist_db):
    from tests.diag_helpers import TemporaryRole

    with TemporaryRole(profile, hist_db, grants=("pg_monitor",)) as role:
        ep = profile.endpoint("ops", hist_db)
        info = {**ep.conninfo(), "user": role.name, "password": role.password}
        with psycopg.connect(**info, autocommit=True) as conn:
            with pytest.raises(history.HistoryUnavailable, match="may not use the activity"):
                history.take_sample(conn)


# ------------------------------------------------------------------ retention
def _sample_at(profile, db, *times: datetime) -> None:
    with connect_as(profile, "ops", db) as conn:
        for t in times:
            history.take_sample(conn, now=t)


def _kept(profile, db) -> list[datetime]:
    with connect_as(profile, "ops", db) as conn:
        return [r[0] for r in conn.execute(
            "SELECT taken_at FROM ops.activity_snapshots ORDER BY 1").fetchall()]


def test_prune_deletes_by_age_with_samples_and_unused_fingerprints(profile, hist_db, chain):
    now = datetime.now(timezone.utc)
    old, kept = now - timedelta(days=20), now - timedelta(days=1)
    _sample_at(profile, hist_db, old, kept)
    with connect_as(profile, "admin", hist_db) as c:  # a fingerprint last seen long ago
        c.execute("INSERT INTO ops.statement_fingerprints VALUES (42, 'SELECT $1', %s, %s)",
                  (old, old))
    with connect_as(profile, "ops", hist_db) as conn:
        result = history.prune_history(conn, HistorySettings(retention_days=14), now=now)
        assert (result.deleted_by_age, result.deleted_by_size) == (1, 0)
        assert result.fingerprints_deleted == 1 and result.oldest_kept == kept
        assert conn.execute("SELECT count(*) FROM ops.activity_samples WHERE taken_at = %s",
                            (old,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM ops.statement_fingerprints").fetchone()[0] >= 1
    assert _kept(profile, hist_db) == [kept]


def test_prune_deletes_the_oldest_until_under_the_size_budget(profile, hist_db, chain):
    base = datetime.now(timezone.utc) - timedelta(hours=1)
    times = [base + timedelta(seconds=10 * i) for i in range(20)]
    _sample_at(profile, hist_db, *times)
    with connect_as(profile, "ops", hist_db) as conn:
        size = history.prune_history(conn, HistorySettings()).live_bytes_after
        budget_mib = size / 2 / 1024 / 1024
        result = history.prune_history(conn, HistorySettings(max_size_mib=budget_mib))
    left = _kept(profile, hist_db)
    assert result.deleted_by_age == 0 and result.deleted_by_size == 20 - len(left)
    assert 8 <= len(left) <= 11 and left == times[-len(left):]  # the newest kept
    assert result.live_bytes_after <= budget_mib * 1024 * 1024 < result.live_bytes_before


def test_history_settings_refuse_unknown_keys_and_silly_values():
    from pydantic import ValidationError

    assert HistorySettings().model_dump() == {"sample_every_s": 10.0, "retention_days": 14.0,
                                              "max_size_mib": 2048.0}
    with pytest.raises(ValidationError):
        HistorySettings(keep_forever=True)
    with pytest.raises(ValidationError):
        HistorySettings(sample_every_s=0)


# ------------------------------------------------------------------ dashboard
def test_the_live_page_slides_back_to_the_chain(profile, hist_db, chain, monkeypatch, tmp_path):
    import httpx

    from studyhub.serving import DashboardSettings
    from tests.dashboard_helpers import DashboardServer

    monkeypatch.setenv("STUDYHUB_CONFIG", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("STUDYHUB_SECRETS_FILE", str(tmp_path / "absent-secrets.toml"))
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    with connect_as(profile, "ops", hist_db) as conn:
        taken = history.take_sample(conn).taken_at
    chain.close()
    settings = DashboardSettings(database=hist_db)
    with DashboardServer(settings) as server, httpx.Client(base_url=server.url,
                                                           timeout=30) as c:
        live = c.get("/p/local/live")
        assert live.status_code == 200
        assert 'type="range" name="at_s"' in live.text and "(1 snapshots)" in live.text
        assert f"session-{chain.holder_pid}" not in live.text  # over: not live any more
        for query in ({"at": (taken + timedelta(seconds=5)).isoformat()},
                      {"at_s": str(taken.timestamp() + 5)}):
            page = c.get("/p/local/live", params=query)
            assert page.status_code == 200
            assert "Replay · local/" in page.text and 'id="replay-note"' in page.text
            assert 'data-refresh' not in page.text  # a replay does not auto-refresh
            assert f'id="session-{chain.holder_pid}" class="blocking"' in page.text
            assert f'id="session-{chain.row_waiter.pid}" class="blocking"' in page.text
            assert f'id="session-{chain.ddl_waiter.pid}" class="blocked"' in page.text
            assert "root blocker" in page.text and "/terminate/" not in page.text
            assert SECRET not in page.text
        bad = c.get("/p/local/live", params={"at": "not a time"})
        assert bad.status_code == 400 and "invalid time" in bad.text
        far = c.get("/p/local/live", params={"at": "2001-01-01T00:00:00+00:00"})
        assert far.status_code == 400 and "no activity snapshot within" in far.text
