"""Restore drills (``backup drill``) and where their results show: a real set restored into a
scratch database on the session cluster and compared, damaged sets failing, the scratch
database always dropped, every drill recorded in the source's ops.backup_drills (or not, on a
read-only profile), and the doctor's backup_age and restore_drill checks going ok → warn →
critical as sets and drills age."""

from __future__ import annotations

import dataclasses
import json
import shutil
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from studyhub.audit import read_audit
from studyhub.errors import StudyhubError
from studyhub.local import LocalCluster, pick_free_port
from studyhub.ops import backup as ops
from studyhub.ops import migrate
from studyhub.profiles import Profile, resolve_profile
from tests.conftest import connect_as, make_home
from tests.diag_helpers import as_json, remote_profile_env
from tests.test_backup import fill_app_data


def scratch_databases(cluster: LocalCluster) -> list[str]:
    with cluster.admin_connect() as admin:
        return [r[0] for r in admin.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'studyhub\\_drill\\_%' "
            "ORDER BY 1").fetchall()]


def drill_rows(profile: Profile, database: str) -> list[dict]:
    with connect_as(profile, "app", database) as conn:
        cur = conn.execute("SELECT * FROM ops.backup_drills ORDER BY id")
        names = [d.name for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]


def drill_audit(database: str) -> list[dict]:
    return [a for a in read_audit() if a["action"] == "backup.drill"
            and a.get("database") == database]


@pytest.fixture(scope="module")
def source(cluster: LocalCluster, migrated: Profile):
    """A migrated database with awkward data (every column type, TOAST, unicode)."""
    name = f"dr_src_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    prof = dataclasses.replace(migrated, database=name)
    migrate.upgrade(prof)
    with connect_as(prof, "app", name) as conn:
        fill_app_data(conn, students=8)
    yield prof
    cluster.drop_database(name)


@pytest.fixture(scope="module")
def sets_dir() -> Path:
    d = make_home("studyhub-drills-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def made(source: Profile, sets_dir: Path) -> ops.BackupResult:
    return ops.create_backup(source, out_dir=sets_dir, jobs=2)


@pytest.fixture
def own_dir():
    """A target of its own (0755, so the server's programs can read it)."""
    d = make_home("studyhub-drill-target-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def copy_set(made: ops.BackupResult, into: Path) -> Path:
    copy = into / Path(made.path).name
    shutil.copytree(made.path, copy)
    return copy


def set_started_at(set_dir: Path, when: datetime) -> None:
    """Make a set look taken at ``when`` (the manifest's start; the manifest is not in its own
    file list, so the set stays complete and verifiable)."""
    manifest = json.loads((set_dir / "manifest.json").read_text())
    manifest["started_at"] = when.isoformat()
    (set_dir / "manifest.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------------------ the drill itself
def test_drill_of_a_real_set_passes_records_a_row_and_drops_the_scratch_database(
        cluster, source, sets_dir, made):
    manifest = ops.read_manifest(Path(made.path))
    before = len(drill_rows(source, source.database))
    result = ops.drill_backup(source, sets_dir, jobs=2)
    assert result.ok, result.problems
    assert result.set_name == made.name and result.target == str(sets_dir)
    assert result.restored_on.startswith("local/studyhub_drill_")
    assert result.tables == len(manifest.tables) and result.rows == manifest.total_rows > 0
    # per table: every table of the manifest restored with its rows, all matching
    assert {t.table: t.rows for t in result.table_results} == \
        {t.qualified: t.rows for t in manifest.tables}
    assert all(t.ok for t in result.table_results)
    assert result.set_age_s is not None and result.set_age_s >= 0 and result.duration_s > 0
    assert scratch_databases(cluster) == []  # dropped
    rows = drill_rows(source, source.database)
    assert len(rows) == before + 1
    row = rows[-1]
    assert (row["ok"], row["set_name"], row["profile"], row["database"], row["target"]) == \
        (True, made.name, "local", source.database, str(sets_dir))
    assert row["tables"] == result.tables and row["rows"] == result.rows
    assert row["problems"] == [] and row["set_created_at"] is not None
    assert result.recorded and result.record_note is None
    line = drill_audit(source.database)[-1]
    assert line["outcome"] == "ok" and line["set"] == made.name and line["recorded"] is True


def test_drill_of_a_corrupted_set_fails_records_the_problem_and_leaves_no_scratch_database(
        cluster, source, made, own_dir):
    copy = copy_set(made, own_dir)
    manifest = ops.read_manifest(copy)
    victim = max((f for f in manifest.files if f.path.startswith("data/")),
                 key=lambda f: f.bytes).path
    with open(copy / victim, "r+b") as fh:  # garble one byte in the middle
        fh.seek(fh.seek(0, 2) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    result = ops.drill_backup(source, own_dir, jobs=2)
    assert not result.ok
    assert result.set_name == made.name
    assert any("damaged" in p and victim in p for p in result.problems), result.problems
    assert scratch_databases(cluster) == []
    row = drill_rows(source, source.database)[-1]
    assert row["ok"] is False and row["set_name"] == made.name
    assert any(victim in p for p in row["problems"])
    line = drill_audit(source.database)[-1]
    assert line["outcome"] == "failed" and victim in line["error"] and line["ok"] is False


def test_drill_names_each_table_whose_checksum_differs_and_drops_what_the_restore_kept(
        cluster, source, made, own_dir):
    """Files that match their sha256 but a table that does not match the manifest: the
    restore keeps its staging database for inspection, the drill drops it too, and names the
    table."""
    copy = copy_set(made, own_dir)
    manifest = json.loads((copy / "manifest.json").read_text())
    notes = next(t for t in manifest["tables"] if t["table"] == "notes")
    notes["checksum"] = str(int(notes["checksum"]) + 1)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = ops.drill_backup(source, own_dir, jobs=2)
    assert not result.ok
    bad = [t for t in result.table_results if not t.ok]
    assert [t.table for t in bad] == ["public.notes"]
    assert "checksum differs" in bad[0].problem
    assert len(result.table_results) == len(manifest["tables"])  # the others matched
    assert result.problems and result.problems[0].startswith("public.notes: content checksum")
    assert scratch_databases(cluster) == []  # neither the scratch nor its _restoring copy


def test_drill_interrupted_drops_the_scratch_database_and_records_nothing(
        cluster, source, sets_dir, made):
    before = drill_rows(source, source.database)
    seen: list[str] = []

    def ctrl_c(ev: ops.ProgressEvent) -> None:
        if ev.phase == "data" and ev.done >= 1:
            seen.append(ev.message)
            with cluster.admin_connect() as admin:  # the scratch database exists right now
                assert admin.execute("SELECT count(*) FROM pg_database WHERE datname LIKE "
                                     "'studyhub\\_drill\\_%'").fetchone()[0] >= 1
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ops.drill_backup(source, sets_dir, jobs=1, progress=ctrl_c)
    assert seen
    assert scratch_databases(cluster) == []
    assert drill_rows(source, source.database) == before
    assert drill_audit(source.database)[-1]["outcome"] == "interrupted"


def test_drill_refuses_in_one_line_when_the_local_cluster_is_not_up(source, sets_dir, made):
    local = resolve_profile("local")
    down = dataclasses.replace(local, port=pick_free_port())
    before = drill_rows(source, source.database)
    with pytest.raises(StudyhubError) as err:
        ops.drill_backup(source, sets_dir, local=down)
    text = str(err.value)
    assert "local cluster is not running" in text and "studyhub local up" in text
    assert "\n" not in text
    assert drill_rows(source, source.database) == before  # nothing recorded


def test_drill_with_no_set_is_one_clear_line_and_recorded_as_failed(
        cli, cluster, source, own_dir, monkeypatch, tmp_path):
    remote_profile_env(monkeypatch, cluster, "staging", database=source.database,
                       tmp_path=tmp_path)
    res = cli("backup", "drill", "-p", "staging", "--target", own_dir)
    assert res.exit_code == 1
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, res.stdout
    assert f"no complete backup set of staging/{source.database} in {own_dir}" in lines[0]
    assert "recorded as a failed drill" in lines[0] and "Traceback" not in res.stderr
    rows = drill_rows(source, source.database)
    assert (rows[-1]["profile"], rows[-1]["ok"], rows[-1]["set_name"]) == ("staging", False, None)
    # a target named by mistake, or bad --jobs: refused in one line, nothing recorded
    for args, said in ((("--target", own_dir / "nowhere"), f"no backup directory {own_dir}/nowhere"),
                       (("--target", own_dir, "--jobs", "0"), "--jobs must be at least 1")):
        res = cli("backup", "drill", "-p", "staging", *args)
        assert res.exit_code == 1 and res.stderr.strip() == f"error: {said}", res.stderr
        assert res.stdout == ""
    assert drill_rows(source, source.database) == rows


def test_drill_of_production_needs_no_explicit_profile_and_read_only_records_nothing(
        cli, cluster, source, own_dir, monkeypatch, tmp_path):
    """The drill only reads the set and writes one bookkeeping row, so production need not be
    named; a read-only profile is never written: the result is printed, nothing recorded."""
    remote_profile_env(monkeypatch, cluster, "production", database=source.database,
                       tmp_path=tmp_path)
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    prod = resolve_profile()
    assert prod.protected and not prod.explicit  # a change would be refused on it
    made = ops.create_backup(prod, out_dir=own_dir, jobs=1)
    res = cli("backup", "drill", "--target", own_dir, "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["profile"] == "production" and out["set_name"] == made.name
    assert out["recorded"] is True
    assert out["restored_on"].startswith("local/studyhub_drill_")
    assert {"table", "rows", "ok", "problem"} == set(out["table_results"][0])
    row = drill_rows(source, source.database)[-1]
    assert (row["profile"], row["set_name"], row["ok"]) == ("production", made.name, True)

    monkeypatch.delenv("STUDYHUB_PROFILE")
    remote_profile_env(monkeypatch, cluster, "staging", database=source.database)
    monkeypatch.setenv("STUDYHUB_STAGING_READ_ONLY", "true")
    staged = ops.create_backup(resolve_profile("staging"), out_dir=own_dir, jobs=1)
    before = drill_rows(source, source.database)
    res = cli("backup", "drill", "-p", "staging", "--target", own_dir)
    assert res.exit_code == 0, res.stderr
    assert "drill ok" in res.stdout and staged.name in res.stdout
    assert "not recorded: profile staging is read-only" in res.stderr
    assert drill_rows(source, source.database) == before
    assert scratch_databases(cluster) == []


def test_drill_of_an_unmigrated_source_says_it_was_not_recorded(cluster, migrated, own_dir):
    """A database without ops.backup_drills: the drill still runs and says why no row."""
    name = f"dr_bare_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    try:
        bare = dataclasses.replace(migrated, database=name)
        with connect_as(bare, "app", name) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
            conn.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 50) g")
        ops.create_backup(bare, out_dir=own_dir, jobs=1)
        result = ops.drill_backup(bare, own_dir, jobs=1)
        assert result.ok and not result.recorded
        assert "has no ops.backup_drills" in result.record_note
        assert "studyhub migrate up -p local" in result.record_note
    finally:
        cluster.drop_database(name)


# ------------------------------------------------------------------------------ the doctor
def _check(cli, database: str, name: str, *extra: str) -> tuple[dict, int]:
    res = cli("diag", "doctor", "-d", database, "--check", name, "--json", *extra)
    return next(c for c in as_json(res)["checks"] if c["name"] == name), res.exit_code


def test_doctor_backup_age_goes_ok_warn_critical_as_the_newest_set_ages(
        cli, source, made, own_dir, monkeypatch):
    monkeypatch.setenv("STUDYHUB_BACKUP_DIR", str(own_dir))
    none, code = _check(cli, source.database, "backup_age")
    assert (none["status"], code) == ("warn", 1)
    assert "none in" in none["value"] and "studyhub backup create -p local" in none["fix"]

    copy = copy_set(made, own_dir)
    set_started_at(copy, datetime.now(timezone.utc) - timedelta(hours=1))
    fresh, code = _check(cli, source.database, "backup_age")
    assert (fresh["status"], code) == ("ok", 0), fresh
    assert fresh["items"][0]["set"] == made.name and fresh["items"][0]["target"] == str(own_dir)
    assert "warn ≥26h, critical ≥50h" in fresh["threshold"]

    set_started_at(copy, datetime.now(timezone.utc) - timedelta(hours=30))
    old, code = _check(cli, source.database, "backup_age")
    assert (old["status"], code) == ("warn", 1) and old["items"][0]["age_s"] > 29 * 3600
    set_started_at(copy, datetime.now(timezone.utc) - timedelta(hours=60))
    assert _check(cli, source.database, "backup_age")[0]["status"] == "critical"
    # thresholds come from --set like every other check
    assert _check(cli, source.database, "backup_age",
                  "--set", "backup_age.critical_h=100")[0]["status"] == "warn"
    # a newer set is the one that counts; another database's set does not
    other = own_dir / made.name.replace(source.database, "other_db")
    shutil.copytree(copy, other)
    data = json.loads((other / "manifest.json").read_text())
    data["database"], data["started_at"] = "other_db", datetime.now(timezone.utc).isoformat()
    (other / "manifest.json").write_text(json.dumps(data))
    assert _check(cli, source.database, "backup_age")[0]["status"] == "critical"


def _insert_drill(profile: Profile, database: str, *, days_ago: float, ok: bool,
                  problem: str | None = None) -> None:
    with connect_as(profile, "app", database) as conn:
        conn.execute(
            "INSERT INTO ops.backup_drills (drilled_at, profile, database, target, set_name, "
            "set_created_at, ok, duration_s, tables, rows, problems) VALUES "
            "(now() - %s * interval '1 day', 'local', %s, '/backups', 'local-x-20260101T000000Z', "
            "now() - %s * interval '1 day', %s, 12.5, 14, 1000, %s)",
            (days_ago, database, days_ago + 0.1, ok, [problem] if problem else []))


def test_doctor_restore_drill_ages_and_reports_a_failed_last_drill(cli, profile, fresh_db):
    missing, code = _check(cli, fresh_db, "restore_drill")  # not migrated: no table
    assert (missing["status"], code) == ("warn", 1) and missing["value"] == "cannot tell"
    assert missing["fix"] == "run studyhub migrate up -p local"
    assert "ops.backup_drills is missing" in missing["detail"]

    migrate.upgrade(profile, database=fresh_db)
    never, _ = _check(cli, fresh_db, "restore_drill")
    assert never["status"] == "warn" and never["value"] == "never drilled"
    assert never["fix"] == "studyhub backup drill -p local"

    _insert_drill(profile, fresh_db, days_ago=10, ok=True)
    stale, _ = _check(cli, fresh_db, "restore_drill")  # as the ops role: SELECT is granted
    assert stale["status"] == "warn" and stale["value"].startswith("10.0d ago")
    assert "warn ≥8d, critical ≥15d" in stale["threshold"]

    _insert_drill(profile, fresh_db, days_ago=1, ok=True)
    ok, code = _check(cli, fresh_db, "restore_drill")
    assert (ok["status"], code) == ("ok", 0), ok
    assert ok["items"][0]["ok"] is True and ok["items"][0]["tables"] == 14

    _insert_drill(profile, fresh_db, days_ago=0.01, ok=False,
                  problem="public.notes: content checksum differs from the backup")
    failed, code = _check(cli, fresh_db, "restore_drill")
    assert (failed["status"], code) == ("warn", 1)
    assert "last drill FAILED" in failed["value"] and failed["value"].startswith("24.0h ago")
    assert "public.notes: content checksum differs" in failed["detail"]
    assert "studyhub backup create -p local" in failed["fix"]
    assert [i["which"] for i in failed["items"]] == ["last", "last_ok"]

    with connect_as(profile, "app", fresh_db) as conn:
        conn.execute("UPDATE ops.backup_drills SET drilled_at = drilled_at - interval '20 days'"
                     " WHERE ok")
    assert _check(cli, fresh_db, "restore_drill")[0]["status"] == "critical"


def test_a_real_drill_turns_the_doctor_check_ok(cli, source, sets_dir, made, monkeypatch):
    """End to end: what the drill records is what the doctor (as the ops role) reads."""
    with connect_as(source, "app", source.database) as conn:
        conn.execute("DELETE FROM ops.backup_drills")
    assert _check(cli, source.database, "restore_drill")[0]["value"] == "never drilled"
    monkeypatch.setenv("STUDYHUB_BACKUP_DIR", str(sets_dir))
    assert ops.drill_backup(source, jobs=2).ok  # the default target: the backup directory
    check, code = _check(cli, source.database, "restore_drill")
    assert (check["status"], code) == ("ok", 0) and made.name in check["value"]
