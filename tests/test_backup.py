"""Backups: create → verify → restore round trips, damage detection, interrupted dumps, refusals,
--replace safety, resumable restore, runbook .sql.gz import, retention, secrets on argv."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest

from studyhub.audit import read_audit
from studyhub.connect import child_env
from studyhub.errors import RefusedError, StudyhubError
from studyhub.local import LocalCluster
from studyhub.local.proc import pg_program
from studyhub.hashing import sha256_file
from studyhub.ops import backup as ops
from studyhub.ops import migrate
from studyhub.profiles import Profile
from tests.conftest import connect_as, make_home
from tests.test_secrets import CmdlineWatcher, _passwords

BIG_TEXT = "".join(f"{i:06d}-Ünïcødé-漢字-🙂-" for i in range(6000))  # ~160 kB: TOASTed


def fill_app_data(conn: psycopg.Connection, students: int = 40) -> None:
    """Rows in every app table, with every column type the schema uses, unicode, NULLs and
    TOASTed values."""
    conn.execute("INSERT INTO subjects (code, name) VALUES ('MATH', 'Mathématiques'), ('PHY', 'Φυσική')")
    conn.execute(
        """INSERT INTO users (email, password_hash, last_login_at)
           SELECT 'zoë' || g || '@example.org', 'h' || g, CASE WHEN g %% 2 = 0 THEN now() END
           FROM generate_series(1, %s) g""", (students,))
    conn.execute(
        """INSERT INTO students (user_id, full_name, date_of_birth, school, year_group)
           SELECT id, 'Zoë Ñandú 漢字 🙂 ' || email, CASE WHEN email LIKE '%%1%%' THEN NULL ELSE date '2009-02-28' END,
                  NULL, 7 FROM users""")
    conn.execute("INSERT INTO student_subjects (student_id, subject_id) SELECT s.id, j.id FROM students s, subjects j")
    conn.execute(
        """INSERT INTO notes (student_id, subject_id, title, body)
           SELECT s.id, j.id, 'Tab\there, quote '' and backslash \\ and newline' || E'\\n' || 'x',
                  CASE WHEN j.code = 'MATH' THEN %s ELSE '' END
           FROM students s, subjects j""", (BIG_TEXT[:90000],))
    conn.execute(
        """INSERT INTO flashcards (student_id, subject_id, note_id, front, back, stability, difficulty,
                                   last_review, reps, lapses)
           SELECT n.student_id, n.subject_id, n.id, 'front ⚛', 'back', 0.1, NULL, NULL, 3, 1 FROM notes n""")
    conn.execute(
        """INSERT INTO revision_sessions (student_id, subject_id, ended_at, cards_reviewed)
           SELECT id, NULL, NULL, 0 FROM students""")
    conn.execute(
        """INSERT INTO flashcard_reviews (student_id, flashcard_id, revision_session_id, rating, reviewed_at,
                                          state, stability, difficulty, elapsed_days, scheduled_days, due,
                                          review_duration_ms)
           SELECT f.student_id, f.id, r.id, 3, now(), 2, 1e-300, 9.999999999999998, 0.5, 1.25,
                  now() + interval '1 day', NULL
           FROM flashcards f JOIN revision_sessions r ON r.student_id = f.student_id""")
    conn.execute(
        """INSERT INTO ai_interactions (student_id, model, prompt, response, prompt_tokens,
                                        completion_tokens, latency_ms)
           SELECT id, 'tutor', 'Qu''est-ce que π ?', %s, 1, 2, 3 FROM students""", (BIG_TEXT[:49000],))
    # types the app does not use yet, to keep the checksum honest about them too
    conn.execute("CREATE TABLE ops.odd_types (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
                 "j jsonb, b bytea, n numeric, i interval, a text[], t time, r real)")
    conn.execute("""INSERT INTO ops.odd_types (j, b, n, i, a, t, r) VALUES
        ('{"k": "ü", "n": [1, 2.5]}', '\\x00ff10', 12345678901234567890.123456789, '1 mon 2 days 03:04:05',
         ARRAY['a', NULL, 'c"d'], '23:59:59.999', 0.1),
        (NULL, NULL, NULL, NULL, NULL, NULL, NULL)""")
    # json and point have no hash function: this table is checksummed over its text form
    conn.execute("CREATE TABLE ops.unhashable (p point, x json)")
    conn.execute("""INSERT INTO ops.unhashable VALUES ('(1.5,2)', '{"a": [1, "ü"]}'), (NULL, NULL)""")


def db_profile(profile: Profile, database: str) -> Profile:
    return dataclasses.replace(profile, database=database)


def table_rows(profile: Profile, database: str) -> dict[str, int]:
    with connect_as(profile, "app", database) as conn:
        tables = ops.list_tables(conn)
        return {f"{s}.{t}": conn.execute(f'SELECT count(*) FROM "{s}"."{t}"').fetchone()[0]
                for s, t in tables}


def schema_facts(profile: Profile, database: str) -> dict[str, list[tuple]]:
    """Keys, foreign keys and indexes as the server describes them."""
    with connect_as(profile, "app", database) as conn:
        return {
            "constraints": conn.execute(
                "SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid), "
                "convalidated, conindid::regclass::text FROM pg_constraint "
                "WHERE connamespace::regnamespace::text IN ('public', 'ops') AND contype <> 'c' "
                "ORDER BY 1, 2").fetchall(),
            "indexes": conn.execute(
                "SELECT i.indexrelid::regclass::text, pg_get_indexdef(i.indexrelid), i.indisprimary, "
                "i.indisunique, i.indimmediate FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid "
                "WHERE c.relnamespace::regnamespace::text IN ('public', 'ops') ORDER BY 1").fetchall(),
        }


def drop(cluster: LocalCluster, *names: str) -> None:
    for n in names:
        cluster.drop_database(n)


@pytest.fixture(scope="module")
def source(cluster: LocalCluster, migrated: Profile):
    """A migrated database full of awkward data, and the profile whose app database it is."""
    name = f"bk_src_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    prof = db_profile(migrated, name)
    migrate.upgrade(prof)
    with connect_as(prof, "app", name) as conn:
        fill_app_data(conn)
    yield prof
    cluster.drop_database(name)


@pytest.fixture(scope="module")
def backup_dir() -> Path:
    d = make_home("studyhub-backups-")
    yield d
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def backup(source: Profile, backup_dir: Path) -> ops.BackupResult:
    return ops.create_backup(source, out_dir=backup_dir, jobs=2)


# ------------------------------------------------------------------------- round trip
def test_round_trip_create_verify_restore_equal_per_table(cli, cluster, source, backup, backup_dir):
    set_dir = Path(backup.path)
    manifest = ops.read_manifest(set_dir)
    expected = table_rows(source, source.database)
    assert {t.qualified: t.rows for t in manifest.tables} == expected
    assert manifest.alembic_revision == migrate.heads()
    assert manifest.direct and manifest.compression.method == "zstd"
    assert manifest.files and all(f.sha256 and f.bytes > 0 for f in manifest.files
                                  if f.path != manifest.ledger_file)  # no erasure: empty
    assert manifest.ledger_file == "erasure-ledger.jsonl" and manifest.encryption is None
    methods = {t.qualified: t.method for t in manifest.tables}
    assert methods["ops.unhashable"] == "text-hash" and methods["public.notes"] == "record-hash"
    assert manifest.format_version == ops.FORMAT_VERSION == 3
    assert manifest.server_major == 15
    data_files = {f.qualified: f.path for f in manifest.table_files}
    assert set(data_files) == set(expected)  # every table's rows in a binary COPY file
    assert data_files["public.notes"] == "data/public.notes.bin.zst"
    assert {f.path for f in manifest.files} >= set(data_files.values())
    assert [f.path for f in manifest.files if f.path.startswith("dump/")] == ["dump/toc.dat"]  # no table data

    res = cli("backup", "verify", set_dir, "--restore", "--json")
    assert res.exit_code == 0, res.stdout + res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["restored"] and out["tables_checked"] == len(expected)
    with cluster.admin_connect() as admin:  # the scratch database is gone
        assert not admin.execute("SELECT 1 FROM pg_database WHERE datname LIKE 'studyhub_verify%'").fetchone()

    target = f"bk_rt_{uuid.uuid4().hex[:8]}"
    try:
        result = ops.restore_backup(set_dir, source, target, jobs=2)
        assert result.database == target and result.replaced is None
        assert table_rows(source, target) == expected
        with connect_as(source, "app", target) as conn:  # content, not only counts
            body = conn.execute("SELECT body FROM notes WHERE body <> '' LIMIT 1").fetchone()[0]
            name = conn.execute("SELECT full_name FROM students LIMIT 1").fetchone()[0]
            odd = conn.execute("SELECT j, b, n::text, a FROM ops.odd_types WHERE j IS NOT NULL").fetchone()
        assert body == BIG_TEXT[:90000]
        with connect_as(source, "app", target) as conn:  # long values recompressed with lz4
            assert conn.execute("SELECT pg_column_compression(body) FROM notes "
                                "WHERE body <> '' LIMIT 1").fetchone()[0] == "lz4"
        assert "Zoë Ñandú 漢字 🙂" in name
        # keys built as unique index + ADD CONSTRAINT USING INDEX, foreign keys and indexes
        # scheduled by us: the same catalog as the source
        assert schema_facts(source, target) == schema_facts(source, source.database)
        assert odd == ({"k": "ü", "n": [1, 2.5]}, b"\x00\xff\x10", "12345678901234567890.123456789",
                       ["a", None, 'c"d'])
        assert result.erasures is not None
    finally:
        drop(cluster, target)


def test_checksum_sees_a_changed_value(cluster, source, backup):
    """Same row count, one character different: the checksum comparison must notice."""
    target = f"bk_ck_{uuid.uuid4().hex[:8]}"
    try:
        ops.restore_backup(Path(backup.path), source, target, reapply_erasures=False)
        with connect_as(source, "app", target) as conn:
            conn.execute("UPDATE ops.odd_types SET r = 0.2 WHERE j IS NOT NULL")
        manifest = ops.read_manifest(Path(backup.path))
        actual = ops.table_checksums(source, [(t.schema, t.table) for t in manifest.tables],
                                     database=target)
        problems = ops.compare_tables(manifest.tables, actual)
        assert [p.path for p in problems] == ["ops.odd_types"]
        assert "checksum" in problems[0].issue
    finally:
        drop(cluster, target)


def test_gzip_and_uncompressed_sets_restore_too(cluster, source, backup_dir):
    for compression in ("gzip:1", "none"):
        res = ops.create_backup(source, out_dir=backup_dir, jobs=1,
                                compression=ops.parse_compression(compression))
        suffix = {"gzip:1": ".bin.gz", "none": ".bin"}[compression]
        table_files = ops.read_manifest(Path(res.path)).table_files
        assert table_files and all(f.path.endswith(suffix) for f in table_files)
        target = f"bk_gz_{uuid.uuid4().hex[:8]}"
        try:
            ops.restore_backup(Path(res.path), source, target, jobs=1, reapply_erasures=False)
            assert table_rows(source, target) == table_rows(source, source.database)
        finally:
            drop(cluster, target)
        import shutil

        shutil.rmtree(res.path)


def test_format_1_set_still_restores(cluster, source, backup_dir):
    """Sets written before format 2 (pg_dump's own text-format table data) restore through
    the pg_restore path they were made for."""
    res = ops.create_backup(source, out_dir=backup_dir, jobs=2, format_version=1)
    manifest = ops.read_manifest(Path(res.path))
    assert manifest.format_version == 1 and manifest.table_files == []
    assert any(f.path.endswith(".dat.zst") for f in manifest.files)
    target = f"bk_v1_{uuid.uuid4().hex[:8]}"
    try:
        result = ops.restore_backup(Path(res.path), source, target, jobs=2, reapply_erasures=False)
        assert "data (busy)" in result.phases_s
        assert table_rows(source, target) == table_rows(source, source.database)
    finally:
        drop(cluster, target)
        import shutil

        shutil.rmtree(res.path)


def test_restore_refuses_an_older_server_than_the_dump(source, backup, tmp_path):
    """Binary COPY data needs the same column types: it restores onto the dump's major
    version or newer, and says so otherwise (nothing is created)."""
    import shutil

    copy = tmp_path / Path(backup.path).name
    shutil.copytree(backup.path, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["server_major"] = 99
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(RefusedError, match="PostgreSQL 99 or newer"):
        ops.restore_backup(copy, source, "bk_never_made", reapply_erasures=False)


# ------------------------------------------------------------------------------ damage
def test_corrupted_file_makes_verify_fail_naming_the_file(cli, backup, backup_dir, tmp_path):
    import shutil

    copy = backup_dir / f"local-corrupt-{Path(backup.path).name.rsplit('-', 1)[1]}"
    shutil.copytree(backup.path, copy)
    try:
        manifest = ops.read_manifest(copy)
        victim = max(manifest.files, key=lambda f: f.bytes).path
        with open(copy / victim, "r+b") as fh:
            fh.seek(fh.seek(0, 2) // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0xFF]))
        res = cli("backup", "verify", copy)
        assert res.exit_code == 1
        assert victim in res.stdout and "sha256" in res.stdout
        res = cli("backup", "restore", copy, "--database", "never_created", "--yes")
        assert res.exit_code != 0 and "damaged" in res.stderr
    finally:
        shutil.rmtree(copy)


def test_verify_ignores_the_verified_file_another_verify_is_writing(backup, tmp_path):
    """verified.json is written atomically (a temporary file beside it, then renamed): a
    verify running meanwhile must not call that temporary file foreign to the set."""
    import shutil

    copy = tmp_path / Path(backup.path).name
    shutil.copytree(backup.path, copy)
    (copy / ".verified.json.k2j4x.tmp").write_text("{")
    result = ops.verify_backup(copy)
    assert result.ok, result.problems
    assert json.loads((copy / "verified.json").read_text())["ok"] is True
    (copy / "stray.txt").write_text("x")  # anything else still is
    assert ["stray.txt: not in the manifest"] == ops.verify_backup(copy).problems


def _rewrite_data_file(set_dir: Path, table: str, damage) -> str:
    """Replace ``table``'s data file by ``damage(decompressed bytes)`` recompressed (or, with
    ``damage`` returning None, cut the compressed file), and make the manifest agree: a set
    whose sha256 checks pass but whose data is bad."""
    import zstandard

    manifest = json.loads((set_dir / "manifest.json").read_text())
    rel = next(f["path"] for f in manifest["table_files"] if f"{f['schema']}.{f['table']}" == table)
    path = set_dir / rel
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    bad = damage(raw)
    path.write_bytes(zstandard.ZstdCompressor().compress(bad) if bad is not None
                     else path.read_bytes()[: path.stat().st_size // 2])
    for f in manifest["files"]:
        if f["path"] == rel:
            f["bytes"], f["sha256"] = path.stat().st_size, sha256_file(path)
    (set_dir / "manifest.json").write_text(json.dumps(manifest))
    return rel


@pytest.mark.parametrize("damage", ["truncated rows", "garbled rows", "cut zstd frame"])
def test_bad_data_file_fails_the_restore_naming_it_target_untouched(cluster, source, backup,
                                                                     tmp_path, damage):
    import shutil

    copy = tmp_path / Path(backup.path).name
    shutil.copytree(backup.path, copy)
    how = {"truncated rows": lambda raw: raw[: len(raw) // 2],
           "garbled rows": lambda raw: raw[:4000] + bytes(b ^ 0x5A for b in raw[4000:4400]) + raw[4400:],
           "cut zstd frame": lambda raw: None}[damage]
    rel = _rewrite_data_file(copy, "public.notes", how)
    assert ops.verify_backup(copy).ok  # the files match the (rewritten) manifest
    target = f"bk_bad_{uuid.uuid4().hex[:8]}"
    cluster.create_database(target)
    try:
        with connect_as(source, "app", target) as conn:
            conn.execute("CREATE TABLE precious (v text)")
            conn.execute("INSERT INTO precious VALUES ('keep me')")
        with pytest.raises(ops.BackupError) as err:
            ops.restore_backup(copy, source, target, jobs=2, replace=True, reapply_erasures=False)
        assert rel in str(err.value)
        with connect_as(source, "app", target) as conn:  # the target was not touched
            assert conn.execute("SELECT v FROM precious").fetchall() == [("keep me",)]
            assert conn.execute("SELECT to_regclass('public.notes')").fetchone()[0] is None
    finally:
        drop(cluster, target, target + "_restoring")


def test_restore_killed_in_the_data_phase_resumes(cluster, source, backup):
    """The restore's data connections die after the first table is loaded (as when the server
    restarts): the restore fails; run again, it resumes, does not load that table again, and
    ends equal to the source."""
    target = f"bk_res_{uuid.uuid4().hex[:8]}"
    staging = target + "_restoring"
    first: list[str] = []

    def kill_after_first_table(ev: ops.ProgressEvent) -> None:
        if ev.phase == "data" and ev.done == 1 and not first:
            first.append(ev.message)
            with cluster.admin_connect() as admin:
                admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                              "datname = %s AND application_name = 'studyhub restore data'",
                              (staging,))

    try:
        with pytest.raises(ops.BackupError):
            ops.restore_backup(Path(backup.path), source, target, jobs=2, reapply_erasures=False,
                               progress=kill_after_first_table)
        assert first and first[0].startswith("table data ")
        loaded_first = first[0].removeprefix("table data ")
        with cluster.admin_connect() as admin:
            assert not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
        seen: list[str] = []
        result = ops.restore_backup(Path(backup.path), source, target, jobs=2,
                                    reapply_erasures=False,
                                    progress=lambda ev: seen.append(ev.message))
        assert result.resumed
        assert f"table data {loaded_first}" not in seen  # complete tables are not loaded again
        assert any(m.startswith("table data ") for m in seen)  # the others were
        assert table_rows(source, target) == table_rows(source, source.database)
    finally:
        drop(cluster, target, staging)


# ------------------------------------------------------------------------- interrupted
def _ballast(conn: psycopg.Connection, rows: int = 300_000) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS ballast AS SELECT g, md5(g::text) || repeat('y', 200) AS pad "
                 f"FROM generate_series(1, {rows}) g")


def _children_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                if ppid == os.getpid() and Path(os.readlink(entry / "exe")).name == name:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                pass
    return found


def test_killed_pg_dump_leaves_nothing_that_looks_complete(cluster, migrated, tmp_path):
    name = f"bk_kill_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    out = make_home("studyhub-killed-")
    try:
        prof = db_profile(migrated, name)
        with connect_as(prof, "app", name) as conn:
            _ballast(conn)
        killed: list[int] = []

        def killer(program: str) -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not killed:
                for pid in _children_named(program):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.002)

        t = threading.Thread(target=killer, args=("pg_dump",))
        t.start()
        with pytest.raises(ops.BackupError, match="pg_dump failed"):
            ops.create_backup(prof, out_dir=out, jobs=2)
        t.join()
        assert killed
        assert [s for s in ops.list_sets(out) if s.status == "complete"] == []
        assert list(out.iterdir()) == []  # the partial set was removed

        # the same for a killed per-table data dump (format 2: psql COPY … TO STDOUT)
        killed.clear()
        t = threading.Thread(target=killer, args=("psql",))
        t.start()
        with pytest.raises(ops.BackupError, match=r"dumping .*\.bin\.zst failed \(killed by signal 9\)"):
            ops.create_backup(prof, out_dir=out, jobs=2)
        t.join()
        assert killed
        assert list(out.iterdir()) == []

        # a whole `backup create` process killed: its leftover is listed as incomplete
        env = {**os.environ, "STUDYHUB_BACKUP_DIR": str(out)}
        proc = subprocess.Popen([sys.executable, "-m", "studyhub.cli.main", "backup", "create"],
                                env={**env, "STUDYHUB_PROFILE": "local"}, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(p.name.startswith(".partial-") for p in out.iterdir()):
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its pg_dump, as a crash would
        proc.wait()
        sets = ops.list_sets(out)
        assert sets and all(s.status == "incomplete" for s in sets)
        plan = ops.prune_plan(out, 1, 1, 1)
        assert [d.keep for d in plan.decisions] == [False] * len(sets)
        ops.apply_prune(plan)
        assert ops.list_sets(out) == []
    finally:
        cluster.drop_database(name)
        import shutil

        shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow
def test_server_stopped_mid_dump_leaves_no_complete_set():
    home = make_home("studyhub-bkstop-")
    own = LocalCluster(home)
    out = home / "backups"
    try:
        own.up()
        prof = own.profile()
        with connect_as(prof, "app", prof.database) as conn:
            _ballast(conn, 1_500_000)
        stopped = []

        def stopper():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not _children_named("pg_dump"):
                time.sleep(0.005)
            time.sleep(0.2)
            own._stop_postgres(own.primary_dir)
            stopped.append(True)

        t = threading.Thread(target=stopper)
        t.start()
        with pytest.raises(Exception) as err:
            ops.create_backup(prof, out_dir=out, jobs=2)
        t.join()
        assert stopped
        msg = str(err.value)
        assert "pg_dump failed" in msg or "checksum" in msg or (
            "dumping public.ballast.bin.zst failed" in msg and "no backup set was written" in msg)
        assert [s for s in ops.list_sets(out) if s.status == "complete"] == []
    finally:
        own.destroy()
        import shutil

        shutil.rmtree(home, ignore_errors=True)


# --------------------------------------------------------------------------- refusals
def test_restore_into_existing_non_empty_database_is_refused(cli, cluster, source, backup):
    before = table_rows(source, source.database)
    res = cli("backup", "restore", backup.path, "--database", source.database, "--yes")
    assert res.exit_code != 0
    assert "exists and is not empty" in res.stderr
    assert table_rows(source, source.database) == before
    with cluster.admin_connect() as admin:
        assert not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                 (source.database + "_restoring",)).fetchone()


def test_backup_through_the_pooler_is_refused(source, backup_dir):
    pooled = dataclasses.replace(source, port=6432, pooler_port=6432)
    with pytest.raises(RefusedError, match="pooler"):
        ops.create_backup(pooled, out_dir=backup_dir)
    with pytest.raises(RefusedError, match="pooler"):
        ops.restore_backup(Path("/nonexistent"), pooled, "x")


def test_restore_needs_confirmation(cli, backup):
    res = cli("backup", "restore", backup.path, "--database", "bk_unconfirmed")
    assert res.exit_code != 0 and "--yes" in res.stderr


# ------------------------------------------------------------ --replace and resuming
def _kill_pg_restore_during_data(ev: ops.ProgressEvent, state: dict) -> None:
    if ev.phase == "restore" and not state.get("killed"):
        for pid in _children_named("pg_restore"):
            os.kill(pid, signal.SIGKILL)
            state["killed"] = True


def test_replace_with_failing_restore_leaves_original_untouched_then_resumes(cluster, source, backup):
    target = f"bk_live_{uuid.uuid4().hex[:8]}"
    cluster.create_database(target)
    aside = None
    try:
        with connect_as(source, "app", target) as conn:
            conn.execute("CREATE TABLE precious (v text)")
            conn.execute("INSERT INTO precious VALUES ('keep me')")
        state: dict = {}
        with pytest.raises(ops.BackupError, match="pg_restore failed"):
            ops.restore_backup(Path(backup.path), source, target, jobs=2, replace=True,
                               progress=lambda ev: _kill_pg_restore_during_data(ev, state))
        assert state.get("killed")
        with connect_as(source, "app", target) as conn:  # untouched, under its own name
            assert conn.execute("SELECT v FROM precious").fetchall() == [("keep me",)]
            assert conn.execute("SELECT to_regclass('public.notes')").fetchone()[0] is None

        result = ops.restore_backup(Path(backup.path), source, target, jobs=2, replace=True)
        aside = result.replaced
        assert result.resumed  # the schema and whatever finished were not done again
        assert table_rows(source, target) == table_rows(source, source.database)
        with connect_as(source, "app", aside) as conn:
            assert conn.execute("SELECT v FROM precious").fetchall() == [("keep me",)]
    finally:
        drop(cluster, target, target + "_restoring", *( [aside] if aside else []))


# ----------------------------------------------------------------------------- import
def test_import_of_a_runbook_sql_gz(cli, cluster, source, tmp_path):
    dump = tmp_path / "backup.sql.gz"
    # the runbook's own command, minus the password in the URL
    pg = subprocess.Popen([str(pg_program("pg_dump"))], env=child_env(source, "app"),
                          stdout=subprocess.PIPE)
    with gzip.open(dump, "wb") as fh:
        for chunk in iter(lambda: pg.stdout.read(1 << 16), b""):
            fh.write(chunk)
    assert pg.wait() == 0
    target = f"bk_imp_{uuid.uuid4().hex[:8]}"
    try:
        res = cli("backup", "import", dump, "--database", target, "--yes", "--json")
        assert res.exit_code == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["table_rows"] == table_rows(source, source.database)
        assert out["skipped_statements"]  # extensions/ownership left to the admin role
        with connect_as(source, "app", target) as conn:
            assert conn.execute("SELECT body FROM notes WHERE body <> '' LIMIT 1").fetchone()[0] == BIG_TEXT[:90000]
    finally:
        drop(cluster, target)
    # a broken dump stops at the first error and leaves no database under the name
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE t (a int);\nINSERT INTO t VALUES (1);\nSELECT nonsense();\n")
    target = f"bk_bad_{uuid.uuid4().hex[:8]}"
    try:
        res = cli("backup", "import", bad, "--database", target, "--yes")
        assert res.exit_code != 0 and "first error" in res.stderr
        with cluster.admin_connect() as admin:
            assert not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
    finally:
        drop(cluster, target, target + "_restoring")


# A dump is a program. What one may not do on import, each refused with nothing kept: run a psql
# meta-command (\! is a shell), end the import's transaction and act beyond the new database
# (DROP DATABASE of one the app role owns, like the live one; ALTER ROLE), or read strings
# differently from how they were checked (standard_conforming_strings off: the server itself
# refuses the second command it then sees, as each statement goes on the extended protocol).
_HIDDEN_DROP = ("SELECT 'a\\' AS q, ' ; COMMIT ; DROP DATABASE {victim} ; SELECT ' AS x -- ' "
                "AS y\n;\n")
IMPORT_ATTACKS = {
    "psql-shell": ("CREATE TABLE t (a int);\n\\! touch {marker}\nINSERT INTO t VALUES (1);\n",
                   "psql meta-command \\! is not SQL"),
    "commit-then-drop-database": ("CREATE TABLE t (a int);\nCOMMIT;\nDROP DATABASE {victim};\n",
                                  "DROP DATABASE acts beyond the new database"),
    "alter-role": ("CREATE TABLE t (a int);\n"
                   "ALTER ROLE CURRENT_USER SET lock_timeout = '1234ms';\n",
                   "ALTER ROLE SET acts beyond the new database"),
    "strings-read-differently": ("SET standard_conforming_strings = off;\n" + _HIDDEN_DROP,
                                 "standard_conforming_strings must stay on"),
    "strings-read-differently-by-function": (
        "SELECT set_config('standard_conforming_strings', 'off', false);\n" + _HIDDEN_DROP,
        "cannot insert multiple commands into a prepared statement"),
}


@pytest.mark.parametrize("case", IMPORT_ATTACKS)
def test_import_runs_only_sql_and_only_inside_the_new_database(cli, cluster, fresh_db, tmp_path,
                                                              case):
    victim, marker = fresh_db, tmp_path / "shell-ran"  # victim: owned by the app role
    text, why = IMPORT_ATTACKS[case]
    dump = tmp_path / f"{case}.sql"
    dump.write_text(text.format(victim=victim, marker=marker))
    target = f"bk_atk_{uuid.uuid4().hex[:8]}"
    try:
        res = cli("backup", "import", dump, "--database", target, "--yes")
        assert res.exit_code != 0 and why in res.stderr, res.stderr
        assert not marker.exists()
        with cluster.admin_connect() as admin:
            names = {r[0] for r in admin.execute("SELECT datname FROM pg_database")}
            assert victim in names and target not in names
            assert admin.execute(
                "SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                "WHERE r.rolname = 'studyhub_app'").fetchone()[0] == 0
    finally:
        with cluster.admin_connect() as admin:
            admin.execute("ALTER ROLE studyhub_app RESET ALL")
        drop(cluster, target, target + "_restoring")


# -------------------------------------------------------------------------- retention
def _fake_set(root: Path, when: datetime, profile: str = "local", database: str = "studyhub") -> str:
    name = ops.set_name(profile, database, when)
    d = root / name
    (d / "dump").mkdir(parents=True)
    (d / "dump" / "toc.dat").write_bytes(b"x")
    m = ops.Manifest(1, "studyhub", "0", "pg_dump 15", "15", profile, "h", 1, database, "UTF8", True,
                     ["0002"], when.isoformat(timespec="seconds"), when.isoformat(timespec="seconds"),
                     "s", ops.Compression("zstd", 3), 2, "directory", [], [],
                     [ops.FileEntry("dump/toc.dat", 1, "0" * 64)])
    (d / "manifest.json").write_text(json.dumps(m.to_dict()))
    return name


def test_prune_keeps_what_the_policy_says(cli, tmp_path):
    now = datetime(2026, 11, 25, 3, 0, tzinfo=timezone.utc)  # a Wednesday
    names = {i: _fake_set(tmp_path, now - timedelta(days=i)) for i in range(0, 70)}
    extra_same_day = _fake_set(tmp_path, now - timedelta(hours=2))  # older set of today
    other_db = _fake_set(tmp_path, now - timedelta(days=400), database="other")
    res = cli("backup", "prune", "--keep-daily", 3, "--keep-weekly", 2, "--keep-monthly", 3,
              "--dir", tmp_path, "--dry-run", "--json")
    assert res.exit_code == 0
    plan = json.loads(res.stdout)
    kept = {d["name"] for d in plan["decisions"] if d["keep"]}
    # daily: 25, 24, 23 Nov; weekly: newest of ISO week 48 (25 Nov) and week 47 (22 Nov, Sun);
    # monthly: newest of Nov (25), Oct (31 Oct), Sep (30 Sep)
    expected_days = {0, 1, 2, 3, 25, 56}
    assert kept == {names[i] for i in expected_days} | {other_db}
    assert extra_same_day not in kept
    assert len(list(tmp_path.iterdir())) == 72  # dry run deleted nothing
    res = cli("backup", "prune", "--keep-daily", 3, "--keep-weekly", 2, "--keep-monthly", 3,
              "--dir", tmp_path, "--yes")
    assert res.exit_code == 0
    assert {p.name for p in tmp_path.iterdir()} == kept


def test_prune_never_deletes_the_only_good_backup(tmp_path):
    now = datetime.now(timezone.utc)
    older = _fake_set(tmp_path, now - timedelta(days=3))
    newest = _fake_set(tmp_path, now - timedelta(days=1))
    (tmp_path / ".partial-local-studyhub-20200101T000000Z-999999999").mkdir()
    plan = ops.prune_plan(tmp_path, 0, 0, 0)
    decisions = {d.name: d for d in plan.decisions}
    assert decisions[newest].keep and "only" in decisions[newest].reasons[0]
    assert not decisions[older].keep
    ops.apply_prune(plan)
    assert [s.name for s in ops.list_sets(tmp_path)] == [newest]


# ---------------------------------------------------------------------------- secrets
def test_no_password_on_argv_while_backup_and_restore_run(cluster, source, backup_dir):
    target = f"bk_argv_{uuid.uuid4().hex[:8]}"
    try:
        with CmdlineWatcher(_passwords(cluster), "pg_dump") as watch, \
                CmdlineWatcher(_passwords(cluster), "SET TRANSACTION SNAPSHOT") as psql_watch:
            res = ops.create_backup(source, out_dir=backup_dir)
        assert watch.seen_target > 0 and watch.leaks == []
        assert psql_watch.seen_target > 0 and psql_watch.leaks == []  # the per-table psql children
        with CmdlineWatcher(_passwords(cluster), "pg_restore") as watch:
            ops.restore_backup(Path(res.path), source, target, reapply_erasures=False)
        assert watch.seen_target > 0 and watch.leaks == []
    finally:
        drop(cluster, target)


def test_list_shows_complete_sets_as_json(cli, backup, backup_dir):
    res = cli("backup", "list", "--dir", backup_dir, "--json")
    assert res.exit_code == 0
    entries = {e["name"]: e for e in json.loads(res.stdout)}
    entry = entries[backup.name]
    assert entry["status"] == "complete" and entry["rows"] == backup.rows


# ------------------------------------------------------------------- erasure ledger
def test_restore_reapplies_erasures_made_after_the_backup(cluster, migrated, backup_dir):
    """backup → erase a student → restore: the student stays erased (GDPR art. 17)."""
    from studyhub.ops import privacy
    from studyhub.ops.privacy import PseudonymKey

    name = f"bk_gdpr_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    target = f"bk_gdpr_r_{uuid.uuid4().hex[:8]}"
    prof = db_profile(migrated, name)
    try:
        migrate.upgrade(prof)
        with connect_as(prof, "app", name) as conn:
            fill_app_data(conn, students=5)
            victim = conn.execute("SELECT id FROM students ORDER BY id LIMIT 1").fetchone()[0]
        res = ops.create_backup(prof, out_dir=backup_dir)
        with connect_as(prof, "app", name, autocommit=False) as conn:
            privacy.erase_person(conn, PseudonymKey(b"k" * 64, "test"), student_id=victim)
        result = ops.restore_backup(Path(res.path), prof, target)
        assert result.erasures.status == "reapplied" and result.erasures.entries >= 1
        with connect_as(prof, "app", target) as conn:
            assert conn.execute("SELECT count(*) FROM students WHERE id = %s", (victim,)).fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM notes WHERE student_id = %s", (victim,)).fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM students").fetchone()[0] == 4
    finally:
        drop(cluster, name, target)


# ------------------------------------------------------------------------------ audit
# Every change audits itself in ops (one line however it ends), so a failed restore, create
# or import is on record as well as a successful one.
@pytest.fixture
def audit_log(monkeypatch, tmp_path) -> Path:
    path = tmp_path / "audit.log"
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(path))
    return path


def test_a_failed_restore_of_a_corrupted_set_is_audited(cluster, source, backup, tmp_path,
                                                        audit_log):
    import shutil

    copy = tmp_path / Path(backup.path).name
    shutil.copytree(backup.path, copy)
    victim = max(ops.read_manifest(copy).files, key=lambda f: f.bytes).path
    with open(copy / victim, "r+b") as fh:
        fh.write(b"\0" * 16)
    target = f"bk_aud_{uuid.uuid4().hex[:8]}"
    with pytest.raises(ops.BackupError, match="damaged"):
        ops.restore_backup(copy, source, target, reapply_erasures=False)
    [line] = read_audit()
    assert {k: line[k] for k in ("action", "profile", "database", "set", "outcome")} == {
        "action": "backup.restore", "profile": source.name, "database": target,
        "set": copy.name, "outcome": "failed"}
    assert "damaged" in line["error"] and victim in line["error"]
    with cluster.admin_connect() as admin:  # and nothing was created
        assert not admin.execute("SELECT 1 FROM pg_database WHERE datname IN (%s, %s)",
                                 (target, target + "_restoring")).fetchone()


def test_a_successful_restore_is_audited_by_ops_with_its_counts(cluster, source, backup,
                                                                audit_log):
    target = f"bk_aud_{uuid.uuid4().hex[:8]}"
    try:
        result = ops.restore_backup(Path(backup.path), source, target, reapply_erasures=False)
    finally:
        drop(cluster, target)
    [line] = read_audit()
    assert {k: line[k] for k in ("action", "database", "set", "replaced", "resumed", "tables",
                                 "rows", "erasures", "outcome")} == {
        "action": "backup.restore", "database": target, "set": backup.name, "replaced": None,
        "resumed": False, "tables": result.tables, "rows": result.rows, "erasures": None,
        "outcome": "ok"}


def test_a_failed_create_is_audited(cluster, migrated, tmp_path, audit_log):
    """The profile's database does not exist: the create fails, leaves nothing, is audited."""
    prof = db_profile(migrated, f"bk_missing_{uuid.uuid4().hex[:8]}")
    out = tmp_path / "sets"
    with pytest.raises(StudyhubError):
        ops.create_backup(prof, out_dir=out)
    assert list(out.iterdir()) == []  # the partial set was removed
    [line] = read_audit()
    assert (line["action"], line["profile"], line["database"], line["outcome"]) == (
        "backup.create", prof.name, prof.database, "failed")
    assert line["set"].startswith(f"{prof.name}-{prof.database}-") and line["error"]


def test_a_failed_import_is_audited(cluster, source, tmp_path, audit_log):
    bad = tmp_path / "bad.sql"
    bad.write_text("CREATE TABLE t (a int);\nSELECT nonsense();\n")
    target = f"bk_aud_{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(ops.BackupError, match="first error"):
            ops.import_plain_dump(bad, source, target, reapply_erasures=False)
    finally:
        drop(cluster, target, target + "_restoring")
    [line] = read_audit()
    assert {k: line[k] for k in ("action", "database", "file", "outcome")} == {
        "action": "backup.import", "database": target, "file": "bad.sql", "outcome": "failed"}
    assert "line 2" in line["error"]


def test_prune_audits_what_it_deleted(tmp_path, audit_log):
    now = datetime.now(timezone.utc)
    sets = tmp_path / "sets"
    sets.mkdir()
    older = _fake_set(sets, now - timedelta(days=3))
    _fake_set(sets, now - timedelta(days=1))
    ops.apply_prune(ops.prune_plan(sets, 0, 0, 0))
    [line] = read_audit()
    assert (line["action"], line["deleted"], line["keep_daily"], line["outcome"]) == (
        "backup.prune", [older], 0, "ok")


def test_restore_and_import_refuse_a_read_only_profile_before_anything(cluster, source, backup,
                                                                      tmp_path, audit_log):
    """The production/read-only rule is in the ops functions too, not only in the CLI."""
    locked = dataclasses.replace(source, read_only=True)
    dump = tmp_path / "d.sql"
    dump.write_text("CREATE TABLE t (a int);\n")
    target = f"bk_ro_{uuid.uuid4().hex[:8]}"
    with pytest.raises(RefusedError, match="read-only"):
        ops.restore_backup(Path(backup.path), locked, target)
    with pytest.raises(RefusedError, match="read-only"):
        ops.import_plain_dump(dump, locked, target)
    with cluster.admin_connect() as admin:
        assert not admin.execute("SELECT 1 FROM pg_database WHERE datname IN (%s, %s)",
                                 (target, target + "_restoring")).fetchone()
