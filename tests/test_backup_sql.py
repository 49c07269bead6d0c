"""Portable sets (``backup create --format sql``): one plain SQL dump by pg_dump, compressed and
encrypted as it streams, into a directory or object storage (moto's S3 server on loopback);
restored by ``backup restore`` (through the safe importer), by a drill, and by hand with Debian's
stock ``age``, ``zstd`` and ``psql``; verify finds a truncated or tampered dump; erasures made
after the set stay erased."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import zstandard

from studyhub.connect import child_env
from studyhub.local import LocalCluster
from studyhub.local.proc import pg_program
from studyhub.ops import backup as ops
from studyhub.ops import migrate
from studyhub.profiles import BackupConfig, Profile
from tests.conftest import connect_as, make_home
from tests.test_backup import db_profile, drop, fill_app_data, table_rows
from tests.test_backup_remote import (  # noqa: F401 - module fixtures: credentials, keys, bucket
    aws_env,
    bucket,
    config,
    keys,
    objects,
    read_obj,
    s3_client,
    set_prefix,
    write_obj,
)
from tests.test_secrets import CmdlineWatcher, _passwords

HAS_STOCK_TOOLS = all(shutil.which(p) for p in ("age", "zstd"))


@pytest.fixture(scope="module")
def source(cluster: LocalCluster, migrated: Profile):
    """A migrated database full of awkward data (every column type, TOAST, unicode, NULLs)."""
    name = f"bks_src_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    prof = db_profile(migrated, name)
    migrate.upgrade(prof)
    with connect_as(prof, "app", name) as conn:
        fill_app_data(conn, students=12)
    yield prof
    cluster.drop_database(name)


@pytest.fixture(scope="module")
def sets_dir():
    d = make_home("studyhub-sql-sets-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def sql_set(source: Profile, sets_dir: Path) -> ops.BackupResult:
    """A portable set in a directory, in clear."""
    return ops.create_backup(source, out_dir=sets_dir, set_format="sql")


def plain_sql(path: Path) -> str:
    with open(path, "rb") as fh:
        return zstandard.ZstdDecompressor().stream_reader(fh).read().decode()


def restored_checksums(profile: Profile, database: str,
                       manifest: ops.Manifest) -> list[ops.TableChecksum]:
    return ops.table_checksums(profile, [(t.schema, t.table) for t in manifest.tables],
                               database=database,
                               methods={t.qualified: t.method for t in manifest.tables})


# ------------------------------------------------------------------- directory, in clear
def test_sql_set_in_a_directory_is_pg_dumps_plain_sql_and_restores_equal(cli, cluster, source,
                                                                         sql_set, sets_dir):
    set_dir = Path(sql_set.path)
    manifest = ops.read_manifest(set_dir)
    assert (manifest.format, sql_set.format, manifest.sql_file) == ("sql", "sql", "dump.sql.zst")
    assert {f.path for f in manifest.files} == {"dump.sql.zst", "erasure-ledger.jsonl"}
    assert manifest.ledger_file == "erasure-ledger.jsonl" and manifest.encryption is None
    assert not (set_dir / "dump").exists() and not (set_dir / "data").exists()
    # every table's rows and checksum, from the dump's own snapshot
    assert {t.qualified: t.rows for t in manifest.tables} == table_rows(source, source.database)
    text = plain_sql(set_dir / "dump.sql.zst")
    assert text.startswith("--\n-- PostgreSQL database dump")
    assert 'COPY "public"."students"' in text  # --quote-all-identifiers
    # nothing that ties it to this server's roles, grants or extensions' owners
    for absent in ("OWNER TO", "GRANT ", "REVOKE ", "CREATE EXTENSION", "COMMENT ON EXTENSION"):
        assert absent not in text, absent

    res = cli("backup", "verify", "--dir", sets_dir, sql_set.name)
    assert res.exit_code == 0 and "match the manifest" in res.stdout, res.stdout + res.stderr
    target = f"bks_dir_{uuid.uuid4().hex[:8]}"
    try:
        res = cli("backup", "restore", "--dir", sets_dir, sql_set.name, "-d", target, "--yes",
                  "--json")
        assert res.exit_code == 0, res.stdout + res.stderr
        out = json.loads(res.stdout)
        assert "load (plain SQL)" in out["phases_s"]
        assert table_rows(source, target) == table_rows(source, source.database)
        assert restored_checksums(source, target, manifest) == manifest.tables
        with connect_as(source, "app", target) as conn:  # the app role owns what was restored
            assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname IN "
                                "('public', 'ops') AND tableowner <> current_user"
                                ).fetchone()[0] == 0
    finally:
        drop(cluster, target, target + "_restoring")


def test_cli_create_format_sql_json_and_list_show_the_format(cli, migrated):
    out = make_home("studyhub-sql-cli-")
    try:
        res = cli("backup", "create", "--format", "sql", "--out", out, "--no-encrypt", "--json")
        assert res.exit_code == 0, res.stdout + res.stderr
        made = json.loads(res.stdout)
        assert made["format"] == "sql"
        res = cli("backup", "list", "--dir", out, "--json")
        assert {s["name"]: s["format"] for s in json.loads(res.stdout)} == {made["name"]: "sql"}
        res = cli("backup", "list", "--dir", out)
        assert res.exit_code == 0 and "format" in res.stdout and " sql " in res.stdout
        assert ops.read_manifest(Path(made["path"])).format == "sql"
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_format_nonsense_is_one_line_and_writes_nothing(cli, source, tmp_path):
    out = tmp_path / "sets"
    res = cli("backup", "create", "--format", "nonsense", "--out", out)
    assert res.exit_code != 0
    assert res.stderr.strip().splitlines() == [
        "error: unknown backup format 'nonsense'; use native (binary COPY per table, restored "
        "by studyhub) or sql (one plain SQL dump, portable)"]
    assert not out.exists()
    with pytest.raises(ops.BackupError, match="unknown backup format"):
        ops.create_backup(source, out_dir=out, set_format="nonsense")
    assert not out.exists()


def test_no_password_on_pg_dumps_argv(cluster, source, tmp_path):
    with CmdlineWatcher(_passwords(cluster), "--format=plain") as watch:
        ops.create_backup(source, out_dir=tmp_path, set_format="sql")
    assert watch.seen_target > 0 and watch.leaks == []


# ------------------------------------------------------------------- damage, drill, prune
def test_a_table_that_differs_from_the_manifest_fails_the_restore_naming_it(cluster, source,
                                                                           sql_set, tmp_path):
    """Rows and checksums are compared after the load, as for a native set: a manifest that
    says otherwise (not in its own file list, so the files still verify) fails the restore,
    the table named, the target name untouched."""
    copy = tmp_path / Path(sql_set.path).name
    shutil.copytree(sql_set.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    entry = next(t for t in manifest["tables"] if t["table"] == "notes")
    entry["checksum"] = str(int(entry["checksum"]) + 1)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    target = f"bks_mis_{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(ops.RestoreMismatch, match="public.notes: content checksum differs"):
            ops.restore_backup(copy, source, target, reapply_erasures=False)
        with cluster.admin_connect() as admin:
            assert not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                     (target,)).fetchone()
    finally:
        drop(cluster, target, target + "_restoring")



def test_verify_finds_a_truncated_or_tampered_dump_and_restore_refuses(cluster, source,
                                                                      sql_set, tmp_path):
    for damage, found in (("truncate", "size"), ("tamper", "sha256 differs")):
        copy = tmp_path / damage / Path(sql_set.path).name
        shutil.copytree(sql_set.path, copy)
        dump = copy / "dump.sql.zst"
        data = bytearray(dump.read_bytes())
        if damage == "truncate":
            dump.write_bytes(bytes(data[: len(data) // 2]))
        else:
            data[len(data) // 2] ^= 0xFF
            dump.write_bytes(bytes(data))
        result = ops.verify_backup(copy)
        assert not result.ok and any("dump.sql.zst" in p and found in p for p in result.problems)
        target = f"bks_bad_{uuid.uuid4().hex[:8]}"
        with pytest.raises(ops.BackupError, match="damaged, not restoring"):
            ops.restore_backup(copy, source, target, reapply_erasures=False)
        with cluster.admin_connect() as admin:
            assert not admin.execute("SELECT 1 FROM pg_database WHERE datname IN (%s, %s)",
                                     (target, target + "_restoring")).fetchone()


def test_drill_takes_the_newest_set_when_it_is_an_sql_set(cluster, source, sets_dir, sql_set):
    result = ops.drill_backup(source, sets_dir, jobs=2)
    assert result.ok, result.problems
    newest = max((s for s in ops.list_sets(sets_dir) if s.status == "complete"),
                 key=lambda s: s.created_at)
    assert newest.format == "sql" and result.set_name == newest.name
    assert result.tables == len(ops.read_manifest(Path(newest.path)).tables) and result.rows > 0
    assert all(t.ok for t in result.table_results) and result.recorded
    with cluster.admin_connect() as admin:
        assert not admin.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'studyhub_drill_%'"
                                 ).fetchone()


def test_prune_treats_sql_sets_like_any_other(source, tmp_path):
    first = ops.create_backup(source, out_dir=tmp_path, set_format="sql")
    time.sleep(1.1)  # set names are per second
    second = ops.create_backup(source, out_dir=tmp_path)
    plan = ops.prune_plan(tmp_path, 0, 0, 0)
    assert {d.name: d.keep for d in plan.decisions} == {first.name: False, second.name: True}
    ops.apply_prune(plan)
    assert [s.name for s in ops.list_sets(tmp_path)] == [second.name]


# ------------------------------------------------------------- by hand, with stock tools
@pytest.mark.needs(HAS_STOCK_TOOLS, "Debian's age and zstd (scripts/bootstrap.sh --tests installs them)")
@pytest.mark.parametrize("encrypted", [True, False], ids=["age", "clear"])
def test_stock_age_zstd_and_psql_restore_it_without_studyhub(cluster, source, keys, tmp_path,
                                                             encrypted):
    """As docs/backup.md shows: ``age -d -i KEY set/dump.sql.zst.age | zstd -d | psql -v
    ON_ERROR_STOP=1 -d NEWDB`` (or ``zstd -dc set/dump.sql.zst | psql …``) into a new database
    made with the manifest's extensions, as its owner: the same rows, the same checksums."""
    cfg = BackupConfig(recipients=(keys["operator_recipient"], keys["recovery_recipient"]))
    made = ops.create_backup(source, out_dir=tmp_path, config=cfg, encrypt=encrypted,
                             set_format="sql")
    set_dir = Path(made.path)
    manifest = ops.read_manifest(set_dir)
    newdb = f"bks_stock_{uuid.uuid4().hex[:8]}"
    cluster.create_database(newdb)  # owned by the app role, with the manifest's extensions
    try:
        with cluster.admin_connect(newdb) as admin:
            installed = {r[0] for r in admin.execute("SELECT extname FROM pg_extension")}
        assert {x["name"] for x in manifest.extensions} <= installed
        psql = f"{pg_program('psql')} --no-psqlrc -v ON_ERROR_STOP=1 -d {newdb}"
        if encrypted:
            assert manifest.sql_file == "dump.sql.zst.age"
            cmd = f"age -d -i {keys['recovery']} {set_dir}/dump.sql.zst.age | zstd -d | {psql}"
        else:
            assert manifest.sql_file == "dump.sql.zst"
            cmd = f"zstd -dc {set_dir}/dump.sql.zst | {psql}"
        res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd],
                             env=child_env(source, "app", newdb), capture_output=True,
                             text=True, cwd="/")
        assert res.returncode == 0, res.stderr
        assert table_rows(source, newdb) == table_rows(source, source.database)
        assert restored_checksums(source, newdb, manifest) == manifest.tables
    finally:
        drop(cluster, newdb)


# ------------------------------------------------------------------------ object storage
@pytest.fixture(scope="module")
def remote_sql_set(source, config) -> ops.BackupResult:
    return ops.create_backup(source, config=config, jobs=2, set_format="sql")


def test_sql_set_in_object_storage_is_encrypted_signed_and_restores_equal(
        cluster, source, config, bucket, s3_server, remote_sql_set, keys):
    assert remote_sql_set.format == "sql" and remote_sql_set.signed_by
    prefix = set_prefix(config, remote_sql_set.name)
    stored = {k[len(prefix) + 1:] for k in objects(s3_server, bucket, prefix + "/")}
    assert stored == {"dump.sql.zst.age", "erasure-ledger.jsonl.age", "manifest.json",
                      "manifest.sig"}
    head = s3_client(s3_server).get_object(Bucket=bucket, Key=f"{prefix}/dump.sql.zst.age",
                                           Range="bytes=0-20")["Body"].read()
    assert head.startswith(b"age-encryption.org/v1")
    manifest = json.loads(read_obj(s3_server, bucket, f"{prefix}/manifest.json"))
    assert manifest["format"] == "sql" and manifest["sql_file"] == "dump.sql.zst.age"
    assert manifest["encryption"]["recipients"] == remote_sql_set.encrypted_for
    listed = {s.name: s for s in ops.list_target_sets(config.target, config=config)}
    assert (listed[remote_sql_set.name].status, listed[remote_sql_set.name].format) == (
        "complete", "sql")

    result = ops.verify_set(None, remote_sql_set.name, config=config, restore=True,
                            local_profile=source)
    assert result.ok and result.restored, result.problems
    target = f"bks_s3_{uuid.uuid4().hex[:8]}"
    try:
        result = ops.restore_set(None, remote_sql_set.name, source, target, config=config)
        assert table_rows(source, target) == table_rows(source, source.database)
        assert [t.qualified for t in result.verified_tables] and result.rows == sum(
            table_rows(source, target).values())
    finally:
        drop(cluster, target, target + "_restoring")


def test_a_tampered_remote_dump_fails_while_it_streams_and_nothing_is_kept(
        cluster, source, config, bucket, s3_server, remote_sql_set):
    """A flipped byte in the middle of the encrypted dump (same size, so only reading it can
    tell): verify names it; restore stops, and neither the database nor its staging copy is
    left — the statements already run were inside the load's one transaction."""
    from tests.test_backup_remote import copy_set

    name, prefix = copy_set(s3_server, bucket, config, remote_sql_set.name)
    key = f"{prefix}/dump.sql.zst.age"
    data = bytearray(read_obj(s3_server, bucket, key))
    data[len(data) // 2] ^= 0x01
    write_obj(s3_server, bucket, key, bytes(data))
    result = ops.verify_set(None, name, config=config)
    assert not result.ok and any("dump.sql.zst.age" in p and "sha256 differs" in p
                                 for p in result.problems)
    target = f"bks_tamper_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ops.BackupError, match="dump.sql.zst.age: sha256 differs|dump.sql.zst.age "
                       "failed age authentication"):
        ops.restore_set(None, name, source, target, config=config, reapply_erasures=False)
    with cluster.admin_connect() as admin:
        assert not admin.execute("SELECT 1 FROM pg_database WHERE datname IN (%s, %s)",
                                 (target, target + "_restoring")).fetchone()


def test_erasures_after_an_sql_set_stay_erased_when_it_is_restored(cluster, migrated, config,
                                                                  bucket):
    """The ledger travels with an sql set as with a native one: sql set → erase a student →
    sql set → the live database is lost → restore the first set: the student is erased again,
    from the newer set's ledger."""
    from studyhub.ops import privacy
    from studyhub.ops.privacy import PseudonymKey

    name = f"bks_gdpr_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    prof = db_profile(migrated, name)
    where = dataclasses.replace(config, target=f"s3://{bucket}/gdpr-{name}")
    target = f"{name}_r"
    try:
        migrate.upgrade(prof)
        with connect_as(prof, "app", name) as conn:
            fill_app_data(conn, students=3)
            victim = conn.execute("SELECT id FROM students ORDER BY id LIMIT 1").fetchone()[0]
        first = ops.create_backup(prof, config=where, jobs=1, set_format="sql")
        with connect_as(prof, "app", name, autocommit=False) as conn:
            privacy.erase_person(conn, PseudonymKey(b"k" * 64, "test"), student_id=victim)
        time.sleep(1.1)  # set names are per second
        newer = ops.create_backup(prof, config=where, jobs=1, set_format="sql")
        assert ops.open_source(newer.name, where.target, where).manifest.ledger_file
        cluster.drop_database(name)  # the live database is gone
        result = ops.restore_set(None, first.name, prof, target, config=where)
        assert result.erasures.status == "reapplied" and result.erasures.entries == 1
        assert result.erasures.sources.get(f"backup set {newer.name}") == 1
        with connect_as(prof, "app", target) as conn:
            assert conn.execute("SELECT count(*) FROM students WHERE id = %s",
                                (victim,)).fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM students").fetchone()[0] == 2
    finally:
        drop(cluster, name, target, target + "_restoring")
