"""migrate roundtrip: up, down, up on a throwaway database with a full schema comparison."""

from __future__ import annotations

import json

import pytest

from studyhub.audit import read_audit
from studyhub.ops import migrate
from studyhub.ops.migrate import roundtrip as migrate_roundtrip
from tests.conftest import connect_as
from tests.migration_examples import write_example


def _databases(cluster) -> set[str]:
    with cluster.admin_connect() as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def test_every_migration_roundtrips_exactly(profile, cluster, cli):
    before = _databases(cluster)
    result = migrate_roundtrip.roundtrip(profile, all_revisions=True)
    assert result.ok, [(s.revision, s.error, s.downgrade_differences) for s in result.steps]
    assert [s.revision for s in result.steps] == [r.revision for r in reversed(migrate.history())]
    assert result.objects_compared > 100
    assert _databases(cluster) == before  # the throwaway database is gone
    res = cli("migrate", "roundtrip")
    assert res.exit_code == 0 and "schema restored exactly" in res.stdout


def test_roundtrip_detects_a_downgrade_that_forgets_to_drop_a_column(profile, tmp_path, cli):
    versions = tmp_path / "versions"
    rev = write_example(versions, 'op.add_column("notes", sa.Column("pinned", sa.Boolean(), '
                                  'server_default=sa.text("false"), nullable=False))',
                        downgrade="pass  # forgot op.drop_column('notes', 'pinned')")
    result = migrate_roundtrip.roundtrip(profile, rev, extra_versions=[versions])
    assert not result.ok
    (step,) = result.steps
    (diff,) = step.downgrade_differences
    assert (diff.kind, diff.name, diff.expected) == ("column", "public.notes.pinned", None)
    assert "boolean not null default false" in diff.actual
    res = cli("migrate", "roundtrip", "--revision", rev, "--versions-dir", versions)
    assert res.exit_code == 1
    assert "column public.notes.pinned is left over" in res.stdout
    data = json.loads(cli("migrate", "roundtrip", "--revision", rev, "--versions-dir", versions,
                          "--json").stdout)
    assert data["ok"] is False and data["steps"][0]["downgrade_differences"][0]["name"] == \
        "public.notes.pinned"


def test_roundtrip_compares_indexes_constraints_and_defaults(profile, fresh_db):
    migrate.upgrade(profile, database=fresh_db)
    before = migrate_roundtrip.schema_snapshot(profile, fresh_db)
    with connect_as(profile, "app", fresh_db) as conn:
        conn.execute("ALTER TABLE notes ALTER COLUMN title SET DEFAULT 'untitled'")
        conn.execute("DROP INDEX ix_notes_subject_id")
        conn.execute("ALTER TABLE notes DROP CONSTRAINT ck_notes_body_length")
        conn.execute("ALTER TABLE notes ALTER COLUMN body TYPE varchar(100000)")
    diffs = {(d.kind, d.name) for d in migrate_roundtrip.compare_snapshots(
        before, migrate_roundtrip.schema_snapshot(profile, fresh_db))}
    assert diffs == {("column", "public.notes.title"), ("index", "public.ix_notes_subject_id"),
                     ("constraint", "public.notes.ck_notes_body_length"),
                     ("column", "public.notes.body")}


def test_roundtrip_refuses_remote_profiles(cli, monkeypatch):
    monkeypatch.setenv("STUDYHUB_STAGING_HOST", "db-studyhub-staging.invalid")
    res = cli("migrate", "roundtrip", "--profile", "staging")
    assert res.exit_code != 0
    assert "throwaway database of the local cluster" in res.stderr


def test_roundtrip_writes_one_audit_line_however_it_ends(profile, tmp_path, monkeypatch):
    """One line per roundtrip (not one per migration it runs on the throwaway database):
    which revisions it tested and whether their schemas came back; a roundtrip that cannot
    run writes migrate.roundtrip.failed."""
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    result = migrate_roundtrip.roundtrip(profile, "0001")
    assert result.ok
    versions = tmp_path / "versions"
    rev = write_example(versions, 'op.add_column("notes", sa.Column("pinned", sa.Boolean()))',
                        downgrade="pass  # forgot the drop", down="0001")
    assert not migrate_roundtrip.roundtrip(profile, rev, extra_versions=[versions]).ok
    with pytest.raises(migrate.MigrationError, match="no migration 'nosuch'"):
        migrate_roundtrip.roundtrip(profile, "nosuch")
    ok, bad, failed = read_audit()
    assert (ok["action"], ok["outcome"], ok["revision"], ok["database"]) == (
        "migrate.roundtrip", "ok", "0001", result.database)
    assert (ok["revisions"], ok["passed"], ok["failed_revisions"]) == (["0001"], True, [])
    assert ok["objects_compared"] == result.objects_compared
    assert (bad["action"], bad["passed"], bad["failed_revisions"]) == (
        "migrate.roundtrip", False, [rev])
    assert (failed["action"], failed["outcome"], failed["revision"], failed["error"]) == (
        "migrate.roundtrip.failed", "failed", "nosuch", "MigrationError")
