"""measure_migrations: pending migrations applied for real under a synthetic workload, each
statement measured (lock taken and held, sessions waiting behind it, rewrites, WAL, disk); a
blocking migration is told from a safe one; a failing statement is named; Ctrl-C stops the
workload. Runs on a fresh database (the rehearsal runs the same on a fork)."""

from __future__ import annotations

import pytest

from studyhub.ops import migrate
from studyhub.ops.migrate.rehearse.measure import WorkloadSpec, measure_migrations
from studyhub.ops.migrate.rehearse.workload import APP_NAME, replay_check
from tests.conftest import connect_as
from tests.migration_examples import write_example
from tests.test_migrate_backfill import fill_flashcard_reviews


@pytest.fixture
def busy_db(profile, fresh_db):
    """The app schema at head with one student's 500 cards and 20,000 reviews."""
    migrate.upgrade(profile, database=fresh_db)
    fill_flashcard_reviews(profile, fresh_db, 20_000)
    return fresh_db


def _one(measurement, text):
    found = [s for s in measurement.statements if text in s.statement]
    assert len(found) == 1, [s.statement for s in measurement.statements]
    return found[0]


def test_blocking_migration_reports_its_lock_rewrite_and_the_writes_it_blocked(
        profile, busy_db, tmp_path):
    versions = tmp_path / "versions"
    rev = write_example(versions, '''
        op.execute("ALTER TABLE flashcard_reviews ADD COLUMN seen_at timestamptz "
                   "DEFAULT clock_timestamp()")
        op.execute("SELECT pg_sleep(0.6)")  # hold the lock while the workload queues
    ''')
    m = measure_migrations(profile, database=busy_db, extra_versions=[versions],
                           workload=WorkloadSpec(clients=3))
    assert m.failed is None and m.revisions == [rev]
    add = _one(m, "ADD COLUMN seen_at")
    assert add.revision == rev
    assert (add.lock_mode, add.lock_relation) == ("ACCESS EXCLUSIVE", "flashcard_reviews")
    assert add.lock_held_s >= 0.6  # until the commit, after the sleep
    assert add.rewrote == ["flashcard_reviews"]
    assert add.rows_rewritten == 20_000
    assert add.wal_bytes > 0 and add.disk_growth_bytes > 0
    assert add.waits.sessions >= 1 and add.waits.max_s > 0.3
    assert add.blocked_writes_max_s > 0.3 and add.blocked_writes >= 1
    assert m.workload.requests > 0 and m.workload.blocked_writes >= 1
    assert m.workload.max_s > 0.3  # a request's own latency shows the wait too
    assert not any("pg_sleep" in s.statement for s in m.statements)  # catalog/helpers skipped
    assert migrate.current(profile, busy_db) == [rev]


def test_safe_migration_blocks_no_write_and_rewrites_nothing(profile, busy_db, tmp_path):
    versions = tmp_path / "versions"
    write_example(versions, '''
        create_index_concurrently("ix_flashcard_reviews_rating", "flashcard_reviews",
                                  ["rating"])
        backfill_in_batches("flashcard_reviews", set_sql="review_duration_ms = 1",
                            where_sql="review_duration_ms IS NULL", batch_size=5000)
    ''')
    m = measure_migrations(profile, database=busy_db, extra_versions=[versions],
                           workload=WorkloadSpec(clients=3))
    assert m.failed is None, m.failed
    cic = _one(m, "CREATE INDEX CONCURRENTLY")
    assert cic.rewrote == [] and cic.disk_growth_bytes > 0
    batches = [s for s in m.statements if "WITH batch" in s.statement]
    # 4 batches of the 20,000 rows, any for the reviews the workload inserted meanwhile, the
    # empty last one
    assert sum(s.executions for s in batches) >= 5
    assert sum(s.rows_rewritten or 0 for s in batches) >= 20_000
    assert all(s.blocked_writes_max_s < 0.3 for s in m.statements), m.statements
    assert all(s.rewrote == [] for s in m.statements)
    assert all(s.lock_mode != "ACCESS EXCLUSIVE" for s in m.statements)
    assert m.workload.requests > 0 and m.workload.errors == 0


def test_failing_statement_is_named_and_nothing_raises(profile, busy_db, tmp_path):
    versions = tmp_path / "versions"
    before = migrate.current(profile, busy_db)
    rev = write_example(versions, '''
        op.execute("ALTER TABLE flashcard_reviews ADD COLUMN y integer")
        op.execute("ALTER TABLE no_such_table ADD COLUMN z integer")
    ''')
    m = measure_migrations(profile, database=busy_db, extra_versions=[versions],
                           workload=WorkloadSpec(clients=2))
    assert m.failed is not None
    assert m.failed.revision == rev
    assert "no_such_table" in m.failed.statement
    assert 'relation "no_such_table" does not exist' in m.failed.error
    assert [s.statement for s in m.statements] == [
        "ALTER TABLE flashcard_reviews ADD COLUMN y integer"]
    assert migrate.current(profile, busy_db) == before  # its transaction rolled back


def test_no_pending_migration_measures_nothing(profile, busy_db):
    m = measure_migrations(profile, database=busy_db)
    assert m.revisions == [] and m.statements == [] and m.failed is None
    assert m.notes == ["no pending migrations"]


def test_ctrl_c_stops_the_workload_and_propagates(profile, busy_db, tmp_path):
    versions = tmp_path / "versions"
    write_example(versions, 'op.execute("ALTER TABLE flashcard_reviews ADD COLUMN q integer")')

    def progress(message):
        if message.startswith("ex"):  # the first statement
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_migrations(profile, database=busy_db, extra_versions=[versions],
                           workload=WorkloadSpec(clients=3), progress=progress)
    with connect_as(profile, "ops", busy_db) as conn:
        left = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                            (APP_NAME,)).fetchone()[0]
    assert left == 0


def test_top_workload_replays_only_plain_selects(profile, busy_db, tmp_path):
    with connect_as(profile, "app", busy_db) as conn:
        for _ in range(30):
            conn.execute("SELECT count(*) FROM flashcards WHERE student_id = %s LIMIT %s",
                         (None, 5))
            conn.execute("UPDATE flashcards SET reps = reps WHERE id = %s", (None,))
    versions = tmp_path / "versions"
    write_example(versions, 'create_index_concurrently("ix_flashcards_reps", "flashcards", '
                            '["reps"])')
    m = measure_migrations(profile, database=busy_db, extra_versions=[versions],
                           workload=WorkloadSpec(kind="top", clients=2, top_n=50))
    assert m.failed is None
    assert m.workload.kind == "top" and m.workload.requests > 0
    assert m.workload.errors == 0, m.workload.error_examples
    assert m.workload.skipped_statements >= 1  # the UPDATE


@pytest.mark.parametrize("text,reason", [
    ("SELECT id FROM notes WHERE student_id = $1 LIMIT $2", None),
    ("SELECT now(), count(*) FROM flashcards", None),
    ("SELECT relname FROM pg_catalog.pg_class WHERE oid = $1", "reads no app table"),
    ("SELECT version_num FROM alembic_version", "reads no app table"),
    ("SELECT pg_backend_pid()", "reads no app table"),
    ("SELECT id FROM flashcards WHERE id = $1 FOR UPDATE", "SELECT … FOR UPDATE/SHARE"),
    ("WITH d AS (DELETE FROM notes RETURNING 1) SELECT count(*) FROM d", "data-modifying CTE"),
    ("SELECT nextval('s')", "calls the volatile function nextval()"),
    ("UPDATE notes SET title = $1", "not a SELECT"),
    ("SELECT 1; SELECT 2", "not a SELECT"),
])
def test_replay_check(text, reason):
    assert replay_check(text, {"nextval", "random"}).reason_skipped == reason



def test_each_statement_is_attributed_to_its_revision(profile, busy_db, tmp_path):
    versions = tmp_path / "versions"
    first = write_example(versions, 'op.execute("ALTER TABLE notes ADD COLUMN a integer")')
    second = write_example(versions, 'op.execute("ALTER TABLE notes ADD COLUMN b integer")',
                           down=first)
    m = measure_migrations(profile, database=busy_db, extra_versions=[versions],
                           workload=WorkloadSpec(clients=0))
    assert m.revisions == [first, second]
    assert [(s.revision, s.statement) for s in m.statements] == [
        (first, "ALTER TABLE notes ADD COLUMN a integer"),
        (second, "ALTER TABLE notes ADD COLUMN b integer")]
    assert m.statements[0].lock_mode == "ACCESS EXCLUSIVE"
    assert m.workload.requests == 0


def test_waits_count_against_the_statement_that_took_the_lock(profile, busy_db, tmp_path):
    """ADD COLUMN takes ACCESS EXCLUSIVE in a millisecond and keeps it until commit; the
    writers queue while the next statement runs, and the report puts their wait on the
    ADD COLUMN, not on the statement that happened to be running."""
    versions = tmp_path / "versions"
    write_example(versions, '''
        op.execute("ALTER TABLE flashcard_reviews ADD COLUMN flag integer")
        op.execute("UPDATE notes SET title = title FROM pg_sleep(0.6)")
    ''')
    m = measure_migrations(profile, database=busy_db, extra_versions=[versions],
                           workload=WorkloadSpec(clients=3))
    add, update = _one(m, "ADD COLUMN flag"), _one(m, "UPDATE notes")
    assert add.lock_mode == "ACCESS EXCLUSIVE" and add.lock_held_s >= 0.6
    assert add.blocked_writes_max_s > 0.3 and add.rewrote == []
    assert update.lock_mode == "ROW EXCLUSIVE" and update.lock_relation == "notes"
    assert update.waits.sessions == 0 and update.blocked_writes_max_s == 0
