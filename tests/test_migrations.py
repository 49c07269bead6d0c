"""Migrations: stairway (every revision up, down, up), drift detection, lock_timeout, safety."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studyhub.audit import read_audit
from studyhub.ops import migrate
from studyhub.ops.migrate.revisions import VERSIONS_DIR, sequence_number
from tests.conftest import connect_as


def _schema_fingerprint(profile, database) -> list[tuple]:
    with connect_as(profile, "app", database) as conn:
        return conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema NOT IN "
            "('pg_catalog', 'information_schema') ORDER BY 1, 2"
        ).fetchall() + conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
            "FROM pg_constraint WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2"
        ).fetchall() + conn.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()


def test_stairway_every_revision_upgrades_downgrades_and_upgrades_again(profile, fresh_db):
    revisions = [r.revision for r in reversed(migrate.history())]
    assert revisions, "no migrations found"
    for rev in revisions:
        migrate.upgrade(profile, rev, database=fresh_db)
        after_up = _schema_fingerprint(profile, fresh_db)
        migrate.downgrade(profile, "-1", database=fresh_db)
        migrate.upgrade(profile, rev, database=fresh_db)
        assert _schema_fingerprint(profile, fresh_db) == after_up, f"{rev} did not round-trip"
        assert migrate.current(profile, fresh_db) == [rev]
    migrate.downgrade(profile, "base", database=fresh_db)
    with connect_as(profile, "app", fresh_db) as conn:
        left = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                            "AND tablename <> 'alembic_version'").fetchall()
    assert left == []


def test_models_and_migrations_agree(profile, fresh_db, cli):
    migrate.upgrade(profile, database=fresh_db)
    report = migrate.compare(profile, fresh_db)
    assert report.differences == [] and not report.drift
    res = cli("migrate", "check", "--database", fresh_db)
    assert res.exit_code == 0 and "agree" in res.stdout


def test_drift_is_detected(profile, fresh_db, cli):
    migrate.upgrade(profile, database=fresh_db)
    with connect_as(profile, "app", fresh_db) as conn:
        conn.execute("ALTER TABLE notes ADD COLUMN sneaky text")
        conn.execute("DROP INDEX ix_ai_interactions_note_id")
    report = migrate.compare(profile, fresh_db)
    assert report.drift
    joined = " | ".join(report.differences)
    assert "remove_column" in joined and "sneaky" in joined
    assert "add_index" in joined and "ix_ai_interactions_note_id" in joined
    res = cli("migrate", "check", "--database", fresh_db, "--json")
    assert res.exit_code == 1
    assert json.loads(res.stdout)["drift"] is True


def test_unapplied_migrations_count_as_drift(profile, fresh_db):
    report = migrate.compare(profile, fresh_db)
    assert report.current == [] and report.drift


def test_migrations_wait_at_most_lock_timeout(profile, fresh_db):
    migrate.upgrade(profile, database=fresh_db)
    blocker = connect_as(profile, "app", fresh_db, autocommit=False)
    try:
        blocker.execute("SELECT count(*) FROM notes")  # holds ACCESS SHARE until rollback
        with pytest.raises(migrate.MigrationError, match="lock timeout"):
            migrate.downgrade(profile, "base", database=fresh_db, lock_timeout="200ms")
    finally:
        blocker.rollback()
        blocker.close()
    # Each migration is its own transaction (env.py: transaction_per_migration, which
    # autocommit blocks need): the downgrade that timed out — 0001's, which drops notes — rolled
    # back, so notes is intact and the database is still at 0001, not at base.
    assert migrate.current(profile, fresh_db) == ["0001"]
    with connect_as(profile, "app", fresh_db) as conn:
        assert conn.execute("SELECT to_regclass('notes') IS NOT NULL").fetchone() == (True,)


def test_migration_connection_is_direct_with_lock_timeout(with_pooler):
    prof = with_pooler.profile()
    with migrate.migration_connection(prof) as conn:
        port = conn.exec_driver_sql("SELECT inet_server_port()").scalar()
        client_port = conn.exec_driver_sql("SELECT current_setting('port')").scalar()
        lock_timeout = conn.exec_driver_sql("SHOW lock_timeout").scalar()
    assert port == prof.port and int(client_port) == prof.port
    assert lock_timeout == "5s"


def test_downgrade_needs_confirmation(profile, fresh_db, cli):
    migrate.upgrade(profile, database=fresh_db)
    res = cli("migrate", "down", "--to", "base", "--database", fresh_db)
    assert res.exit_code != 0 and "needs confirmation" in res.stderr
    res = cli("migrate", "down", "--to", "-1", "--database", fresh_db, "--dry-run")
    assert res.exit_code == 0 and "would undo" in res.stdout
    default = cli("migrate", "down", "--database", fresh_db, "--dry-run")  # --to -1 by default
    assert default.exit_code == 0 and default.stdout == res.stdout
    assert migrate.current(profile, fresh_db) == migrate.heads()
    # The statements the downgrade runs, with their locks, before anything is confirmed:
    # m01's downgrade drops its index concurrently, then the column under ACCESS EXCLUSIVE.
    res = cli("migrate", "down", "--to", "0002", "--database", fresh_db)
    assert res.exit_code != 0 and "needs confirmation" in res.stderr
    out = " ".join(res.stdout.split())
    assert "DROP INDEX CONCURRENTLY IF EXISTS ix_flashcard_reviews_student_id_recorded_at" in out
    assert "SHARE UPDATE EXCLUSIVE on flashcard_reviews" in out
    assert "ALTER TABLE flashcard_reviews DROP COLUMN recorded_at" in out
    assert "ACCESS EXCLUSIVE on flashcard_reviews" in out
    assert out.index("w02") < out.index("m01")  # newest first, the order they run
    assert migrate.current(profile, fresh_db) == migrate.heads()
    res = cli("migrate", "down", "--to", "base", "--database", fresh_db, "--yes")
    assert res.exit_code == 0, res.stderr
    assert migrate.current(profile, fresh_db) == []


def test_downgrade_base_refused_on_production_unless_named(cli, monkeypatch):
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    monkeypatch.setenv("STUDYHUB_PRODUCTION_HOST", "db-studyhub-prod.invalid")
    res = cli("migrate", "down", "--to", "base", "--yes")
    assert res.exit_code != 0
    assert "name it explicitly with --profile production" in res.stderr


def test_up_and_roundtrip_refused_on_production_unless_named_and_on_read_only(cli, monkeypatch):
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    monkeypatch.setenv("STUDYHUB_PRODUCTION_HOST", "db-studyhub-prod.invalid")
    for args in (("migrate", "up"), ("migrate", "roundtrip")):
        res = cli(*args)
        assert res.exit_code != 0
        assert "name it explicitly with --profile production" in res.stderr, args
    monkeypatch.setenv("STUDYHUB_STAGING_HOST", "db-studyhub-staging.invalid")
    monkeypatch.setenv("STUDYHUB_STAGING_READ_ONLY", "true")
    res = cli("migrate", "up", "--profile", "staging")
    assert res.exit_code != 0 and "profile staging is marked read-only" in res.stderr


def test_bad_revision_is_one_clear_line(cli, profile, fresh_db):
    migrate.upgrade(profile, database=fresh_db)
    res = cli("migrate", "down", "--to", "zzzz", "--database", fresh_db, "--yes")
    assert res.exit_code != 0
    assert "not below the database's current revision" in res.stderr
    res = cli("migrate", "up", "--to", "nope", "--database", fresh_db)
    assert res.exit_code != 0 and len(res.stderr.strip().splitlines()) == 1
    # any failed upgrade is audited (not only lock timeouts), without the error text
    audit = [a for a in read_audit() if a["action"] == "migrate.up.failed"][-1]
    assert audit["reason"] == "error" and audit["target"] == "nope"
    assert audit["database"] == fresh_db and "nope" not in audit.get("error", "")
    res = cli("migrate", "roundtrip", "--revision", "nosuch")
    assert res.exit_code != 0
    assert res.stderr.strip().splitlines() == ["error: no migration 'nosuch'"]


# The revision ids as they were before the files got their sequence prefix: databases store
# these in alembic_version, so they must never change.
OLD_REVISION_IDS = ["0001", "0002", "m01", "d01", "d02", "p01", "w01", "w02"]


def test_migration_files_sort_in_chain_order():
    """``ls versions/`` lists the migrations in the order they apply: NNNN_<slug>.py with NNNN
    the place in the chain (base first), and a new revision takes the next number."""
    chain = list(reversed(migrate.history()))  # base first
    files = sorted(p.name for p in VERSIONS_DIR.glob("*.py"))
    assert [Path(r.path).name for r in chain] == files
    assert [sequence_number(f) for f in files] == list(range(1, len(files) + 1))
    assert migrate.next_revision_id() == f"{len(files) + 1:04d}"


def test_a_database_stamped_with_an_old_revision_id_upgrades_to_head(profile, fresh_db, cli):
    """Renaming the files kept every revision id: a database an older release migrated (its
    alembic_version says e.g. m01) still finds its revision and upgrades to head."""
    assert [r.revision for r in reversed(migrate.history())][:len(OLD_REVISION_IDS)] == \
        OLD_REVISION_IDS
    migrate.upgrade(profile, "m01", database=fresh_db)
    with connect_as(profile, "app", fresh_db) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("m01",)]
    res = cli("migrate", "up", "--database", fresh_db)
    assert res.exit_code == 0, res.stderr
    assert f"upgraded m01 → {migrate.heads()[0]}" in res.stdout
    assert migrate.current(profile, fresh_db) == migrate.heads()
    assert not migrate.compare(profile, fresh_db).drift
