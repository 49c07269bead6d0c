"""migrate up on a live database: lock timeout, retry with backoff, the blocking PID reported,
success once the blocker ends; invalid indexes of failed concurrent builds are dropped; the
helpers resume a migration that stopped part-way; plan's lock modes match pg_locks."""

from __future__ import annotations

import json

import pytest

from studyhub.audit import read_audit
from studyhub.ops import migrate
from studyhub.ops.migrate import statements as migrate_statements
from tests.conftest import connect_as
from tests.migration_examples import write_example

M01 = "m01"


def _down_of(rev: str) -> str:
    return migrate.script_directory().get_revision(rev).down_revision


def test_up_times_out_retries_reports_the_blocker_and_succeeds_once_it_ends(profile, fresh_db):
    migrate.upgrade(profile, _down_of(M01), database=fresh_db)
    blocker = connect_as(profile, "app", fresh_db, autocommit=False)
    blocker.execute("SELECT count(*) FROM flashcard_reviews")  # ACCESS SHARE until rollback
    blocker_pid = blocker.info.backend_pid
    seen = []

    def on_attempt(attempt):
        seen.append(attempt)
        if attempt.number == 2:
            blocker.rollback()  # the long transaction ends after the second timeout

    try:
        result = migrate.upgrade(profile, M01, database=fresh_db, lock_timeout="500ms",
                                 retries=5, backoff_s=0.05, on_attempt=on_attempt)
    finally:
        blocker.close()
    assert result.to_revisions == [M01]
    outcomes = [a.outcome for a in result.attempts]
    assert outcomes == ["lock_timeout", "lock_timeout", "ok"]
    first = result.attempts[0]
    assert "lock timeout" in (first.error or "")
    assert blocker_pid in [b.pid for b in first.blockers]
    b = next(b for b in first.blockers if b.pid == blocker_pid)
    assert b.waiting_for == "flashcard_reviews" and b.waiting_mode == "AccessExclusiveLock"
    assert "AccessShareLock" in (b.held_modes or "")
    assert first.retry_in_s is not None and seen == result.attempts
    assert migrate.current(profile, fresh_db) == [M01]


def test_cli_up_gives_up_naming_the_blocking_pid_and_changes_nothing(profile, fresh_db, cli):
    down = _down_of(M01)
    migrate.upgrade(profile, down, database=fresh_db)
    blocker = connect_as(profile, "app", fresh_db, autocommit=False)
    try:
        blocker.execute("SELECT count(*) FROM flashcard_reviews")
        pid = blocker.info.backend_pid
        res = cli("migrate", "up", "--database", fresh_db, "--lock-timeout", "300ms",
                  "--retries", "1", "--retry-wait", "0.05")
    finally:
        blocker.rollback()
        blocker.close()
    assert res.exit_code == 1
    assert f"blocked by pid {pid}" in res.stdout  # live, per attempt
    assert "retrying in" in res.stdout
    assert f"pid {pid}" in res.stderr and "lock timeout" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert migrate.current(profile, fresh_db) == [down]
    audit = [a for a in read_audit() if a["action"] == "migrate.up.failed"][-1]
    assert audit["blocking_pids"] == [pid] and audit["attempts"] == 2
    assert "query" not in json.dumps(audit)


def test_concurrent_index_blocked_by_a_writer_is_retried_and_its_leftover_dropped(
        profile, fresh_db, tmp_path):
    migrate.upgrade(profile, database=fresh_db)
    versions = tmp_path / "versions"
    rev = write_example(versions, 'create_index_concurrently("ix_subjects_created_at", '
                                  '"subjects", ["created_at"])')
    writer = connect_as(profile, "app", fresh_db, autocommit=False)
    writer.execute("INSERT INTO subjects (code, name) VALUES ('bio', 'Biology')")  # open txn
    writer_pid = writer.info.backend_pid

    def on_attempt(attempt):
        if attempt.number == 2:
            writer.rollback()

    try:
        result = migrate.upgrade(profile, rev, database=fresh_db, lock_timeout="300ms",
                                 retries=4, backoff_s=0.05, on_attempt=on_attempt,
                                 extra_versions=[versions])
    finally:
        writer.close()
    assert [a.outcome for a in result.attempts][-1] == "ok"
    assert result.attempts[0].outcome == "lock_timeout"
    assert writer_pid in [b.pid for b in result.attempts[0].blockers]
    notes = " | ".join(result.notes)
    assert "dropped invalid index ix_subjects_created_at" in notes
    assert "ix_subjects_created_at built concurrently and valid" in notes
    with connect_as(profile, "app", fresh_db) as conn:
        valid = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = "
                             "'ix_subjects_created_at'::regclass").fetchone()
    assert valid == (True,)


def test_failed_concurrent_build_leaves_no_invalid_index(profile, fresh_db, tmp_path):
    migrate.upgrade(profile, database=fresh_db)
    with connect_as(profile, "app", fresh_db) as conn:  # two rows, one now(): duplicates
        conn.execute("INSERT INTO subjects (code, name) VALUES ('a', 'A'), ('b', 'B')")
    versions = tmp_path / "versions"
    rev = write_example(versions, '''
        with op.get_context().autocommit_block():
            op.create_index("uq_subjects_created_at", "subjects", ["created_at"], unique=True,
                            postgresql_concurrently=True)
    ''')
    with pytest.raises(migrate.MigrationError) as err:
        migrate.upgrade(profile, rev, database=fresh_db, extra_versions=[versions])
    assert "could not create unique index" in str(err.value)
    assert "dropped invalid index public.uq_subjects_created_at" in str(err.value)
    assert migrate.invalid_indexes(profile, fresh_db) == []


def test_worked_example_resumes_after_stopping_part_way(profile, fresh_db):
    """m01's helpers check the catalog: a run that died after some steps can be re-run."""
    migrate.upgrade(profile, _down_of(M01), database=fresh_db)
    with connect_as(profile, "app", fresh_db) as conn:
        conn.execute("ALTER TABLE flashcard_reviews ADD COLUMN recorded_at timestamptz")
        conn.execute("ALTER TABLE flashcard_reviews ALTER COLUMN recorded_at SET DEFAULT now()")
        conn.execute("ALTER TABLE flashcard_reviews ADD CONSTRAINT "
                      "ck_flashcard_reviews_recorded_at_not_null CHECK (recorded_at IS NOT NULL) "
                      "NOT VALID")
        conn.execute("CREATE INDEX CONCURRENTLY ix_flashcard_reviews_student_id_recorded_at "
                     "ON flashcard_reviews (student_id, recorded_at)")
    result = migrate.upgrade(profile, M01, database=fresh_db)
    assert result.to_revisions == [M01]
    assert any("already exists and is valid" in n for n in result.notes)
    migrate.upgrade(profile, database=fresh_db)  # later revisions (if any) on top
    assert migrate.compare(profile, fresh_db).drift is False


LOCK_CASES = [
    ("ALTER TABLE notes ADD COLUMN pinned boolean", {"notes": "ACCESS EXCLUSIVE"}),
    ("ALTER TABLE notes ALTER COLUMN title SET STATISTICS 200",
     {"notes": "SHARE UPDATE EXCLUSIVE"}),
    ("CREATE INDEX ix_t ON notes (title)", {"notes": "SHARE"}),
    ("ALTER TABLE notes ADD CONSTRAINT fk_t FOREIGN KEY (subject_id) REFERENCES subjects (id) "
     "NOT VALID", {"notes": "SHARE ROW EXCLUSIVE", "subjects": "SHARE ROW EXCLUSIVE"}),
    ("ALTER TABLE notes VALIDATE CONSTRAINT ck_notes_title_length",
     {"notes": "SHARE UPDATE EXCLUSIVE"}),
    ("ALTER TABLE notes ADD CONSTRAINT ck_t CHECK (title <> '') NOT VALID",
     {"notes": "ACCESS EXCLUSIVE"}),
    ("DROP INDEX ix_notes_student_id", {"notes": "ACCESS EXCLUSIVE"}),
    ("UPDATE notes SET title = title", {"notes": "ROW EXCLUSIVE"}),
    ("COMMENT ON TABLE notes IS 'x'", {"notes": "SHARE UPDATE EXCLUSIVE"}),
    ("ALTER TABLE notes RENAME COLUMN title TO heading", {"notes": "ACCESS EXCLUSIVE"}),
    ("REINDEX TABLE notes", {"notes": "SHARE"}),
]


@pytest.mark.parametrize("statement,expected", LOCK_CASES, ids=[c[0][:40] for c in LOCK_CASES])
def test_plan_lock_modes_match_pg_locks(migrated, statement, expected):
    import pglast

    node = pglast.parse_sql(statement)[0].stmt
    predicted = {lk.table: lk.mode for lk in migrate_statements.statement_locks(
        node, migrate_statements.index_tables_from_models())}
    assert predicted == expected
    with connect_as(migrated, "app", autocommit=False) as conn:
        conn.execute(statement)
        rows = conn.execute(
            "SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE l.pid = pg_backend_pid() AND l.granted AND c.relkind IN ('r', 'p') "
            "AND c.relnamespace = 'public'::regnamespace").fetchall()
        conn.rollback()
    held: dict[str, str] = {}
    for table, mode in rows:
        name = " ".join(w.upper() for w in
                        __import__("re").findall(r"[A-Z][a-z]+", mode.replace("Lock", "")))
        if table not in held or migrate_statements.strength(name) > \
                migrate_statements.strength(held[table]):
            held[table] = name
    assert {t: held.get(t) for t in expected} == expected


def test_plan_shows_statements_locks_and_sizes(profile, fresh_db, cli):
    migrate.upgrade(profile, _down_of(M01), database=fresh_db)
    res = cli("migrate", "plan", "--database", fresh_db)
    assert res.exit_code == 0, res.stderr
    assert "would apply m01" in res.stdout
    assert "ACCESS EXCLUSIVE on flashcard_reviews" in res.stdout
    assert "SHARE UPDATE EXCLUSIVE on flashcard_reviews" in res.stdout
    assert "rows" in res.stdout and "held until commit of transaction" in res.stdout
    data = json.loads(cli("migrate", "plan", "--database", fresh_db, "--json").stdout)
    m = next(m for m in data["migrations"] if m["revision"] == M01)
    modes = {(lk["table"], lk["mode"]) for st in m["statements"] for lk in st["locks"] or []}
    assert ("flashcard_reviews", "SHARE UPDATE EXCLUSIVE") in modes
    cic = next(st for st in m["statements"] if "CONCURRENTLY" in st["sql"])
    assert cic["in_transaction"] is False and cic["held_until"] == "statement end"
    assert data["tables"][0]["table"] == "flashcard_reviews"
    assert data["tables"][0]["total_bytes"] > 0
    migrate.upgrade(profile, database=fresh_db)
    res = cli("migrate", "plan", "--database", fresh_db)
    assert "nothing to apply" in res.stdout


def test_upgrade_and_downgrade_audit_themselves_however_they_end(profile, fresh_db, tmp_path,
                                                                 monkeypatch):
    """The ops functions write the audit line (not only the CLI): success, a lock timeout and
    any other failure, each one line, never with the error's text."""
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    down = _down_of(M01)
    migrate.upgrade(profile, down, database=fresh_db)
    blocker = connect_as(profile, "app", fresh_db, autocommit=False)
    try:
        blocker.execute("SELECT count(*) FROM flashcard_reviews")  # ACCESS SHARE until rollback
        pid = blocker.info.backend_pid
        with pytest.raises(migrate.LockTimeoutError):
            migrate.downgrade(profile, "base", database=fresh_db, lock_timeout="200ms")
    finally:
        blocker.rollback()
        blocker.close()
    assert migrate.current(profile, fresh_db) == ["0001"]  # 0002's downgrade had committed
    migrate.downgrade(profile, "-1", database=fresh_db)
    versions = tmp_path / "versions"
    rev = write_example(versions, 'op.execute("SELECT 1/0 AS secret_value")', down="0001")
    with pytest.raises(migrate.MigrationError, match="division by zero"):
        migrate.upgrade(profile, rev, database=fresh_db, extra_versions=[versions])
    up, down_failed, down_ok, up_failed = read_audit()
    assert up["action"] == "migrate.up" and up["outcome"] == "ok"
    assert (up["database"], up["target"], up["from_revisions"], up["to_revisions"],
            up["attempts"]) == (fresh_db, down, [], [down], 1)
    assert down_failed["action"] == "migrate.down.failed" and down_failed["outcome"] == "failed"
    assert (down_failed["reason"], down_failed["blocking_pids"], down_failed["target"],
            down_failed["database"]) == ("lock_timeout", [pid], "base", fresh_db)
    assert down_ok["action"] == "migrate.down" and down_ok["outcome"] == "ok"
    assert (down_ok["from_revisions"], down_ok["to_revisions"]) == (["0001"], [])
    assert up_failed["action"] == "migrate.up.failed" and up_failed["target"] == rev
    assert (up_failed["reason"], up_failed["error"]) == ("error", "MigrationError")
    assert "secret_value" not in json.dumps(up_failed) and "division" not in json.dumps(up_failed)


def test_ops_refuse_a_read_only_profile_before_connecting(profile, fresh_db, tmp_path,
                                                          monkeypatch):
    """Whoever calls them (CLI, dashboard, a script), upgrade, downgrade and roundtrip apply
    the profile's rule first: nothing connects, nothing changes, nothing is audited."""
    import dataclasses

    from studyhub.errors import RefusedError
    from studyhub.ops.migrate import roundtrip

    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    read_only = dataclasses.replace(profile, read_only=True)
    production = dataclasses.replace(profile, name="production", protected=True)
    for prof, message in ((read_only, "is marked read-only"),
                          (production, "name it explicitly with --profile production")):
        with pytest.raises(RefusedError, match=message):
            migrate.upgrade(prof, database=fresh_db)
        with pytest.raises(RefusedError, match=message):
            migrate.downgrade(prof, "base", database=fresh_db)
        with pytest.raises(RefusedError, match=message):
            roundtrip.roundtrip(prof, "0001")
    assert migrate.current(profile, fresh_db) == []
    assert read_audit() == []
