"""GDPR export, erasure, the erasure ledger across a backup/restore, on real PostgreSQL.

Each test gets its own copy (CREATE DATABASE ... TEMPLATE) of one migrated database holding four
people, so erasures never leak between tests.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import stat
import subprocess
import threading
import time
import uuid
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from psycopg import sql

from studyhub.connect import child_env, connect
from studyhub.errors import RefusedError, StudyhubError
from studyhub.local import proc
from studyhub.ops import migrate
from studyhub.ops import privacy
from studyhub.ops import erasure
from studyhub.ops.erasure import places_not_cleaned
from studyhub.ops.privacy import PseudonymKey
from tests.conftest import connect_as
from tests.privacy_data import SamplePerson, add_person

KEY = "test-pseudonym-key-0123456789abcdef0123456789"
PERSONAL_TABLES = ["users", "students", "student_subjects", "notes", "flashcards",
                   "flashcard_reviews", "revision_sessions", "ai_interactions"]


@pytest.fixture(scope="module")
def template(cluster, migrated):
    """A migrated database with four people (the third is the one most tests work on)."""
    name = f"privacy_tmpl_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    migrate.upgrade(migrated, database=name)
    with connect_as(migrated, "app", name) as conn:
        people = [add_person(conn, i, size=s) for i, s in enumerate((2, 3, 4, 2))]
        conn.execute("UPDATE students SET year_group = 7 WHERE id = %s", (people[3].student_id,))
    yield name, people
    cluster.drop_database(name)


@pytest.fixture
def pdb(cluster, template):
    """A private copy of the template database."""
    tmpl, _ = template
    name = f"privacy_{uuid.uuid4().hex[:10]}"
    with cluster.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER studyhub_app").format(
            sql.Identifier(name), sql.Identifier(tmpl)))
    yield name
    cluster.drop_database(name)


@pytest.fixture
def people(template) -> list[SamplePerson]:
    return template[1]


@pytest.fixture
def key_env(monkeypatch, tmp_path):
    monkeypatch.setenv("STUDYHUB_PSEUDONYM_KEY", KEY)
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    return PseudonymKey(KEY.encode(), "test")


def cli_db_profile(migrated, pdb):
    """The local profile, with the test's copy of the database as its own."""
    import dataclasses

    return dataclasses.replace(migrated, database=pdb)


@pytest.fixture
def cli_db(monkeypatch, migrated, pdb):
    """Make the CLI's local profile point at the test's copy of the database."""
    from studyhub.cli import common

    prof = cli_db_profile(migrated, pdb)
    monkeypatch.setattr(common, "resolve_profile", lambda name=None: prof)
    return pdb


def person_rows(conn, table: str, p: SamplePerson) -> int:
    """Rows about ``p`` in ``table``, by hand-written SQL independent of the privacy graph."""
    if table == "users":
        q, arg = "SELECT count(*) FROM users WHERE id = %s", p.user_id
    elif table == "students":
        q, arg = "SELECT count(*) FROM students WHERE id = %s", p.student_id
    else:
        q = sql.SQL("SELECT count(*) FROM {} WHERE student_id = %s").format(sql.Identifier(table))
        arg = p.student_id
    return conn.execute(q, (arg,)).fetchone()[0]


def tables_with_student_id(conn) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
        "AND column_name = 'student_id' ORDER BY 1")]


def checksums(conn, exclude: SamplePerson | None = None) -> dict[str, str]:
    """md5 of every public table's rows (optionally without ``exclude``'s rows)."""
    out = {}
    for (table,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                                 "ORDER BY 1").fetchall():
        cond = sql.SQL("true")
        if exclude is not None:
            cols = {r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "'public' AND table_name = %s", (table,))}
            if table == "users":
                cond = sql.SQL("id <> {}").format(sql.Literal(str(exclude.user_id)))
            elif table == "students":
                cond = sql.SQL("id <> {}").format(sql.Literal(str(exclude.student_id)))
            elif "student_id" in cols:
                cond = sql.SQL("student_id <> {}").format(sql.Literal(str(exclude.student_id)))
        out[table] = conn.execute(sql.SQL(
            "SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {} AS x "
            "WHERE {}").format(sql.Identifier(table), cond)).fetchone()[0]
    return out


def db_conn(profile, database):
    return connect(profile, "app", database=database)


# ----------------------------------------------------------------------------------------- export

def test_export_holds_every_row_of_the_person_and_nothing_of_others(migrated, pdb, people,
                                                                    tmp_path):
    me, others = people[2], [p for i, p in enumerate(people) if i != 2]
    out = tmp_path / "me.zip"
    with db_conn(migrated, pdb) as conn:
        result = privacy.export_person(conn, out, student_id=str(me.student_id))
    with connect_as(migrated, "app", pdb) as conn:
        expected = {t: person_rows(conn, t, me) for t in PERSONAL_TABLES}
        student_tables = tables_with_student_id(conn)
    # every table that points at students
    assert student_tables and set(student_tables) <= set(PERSONAL_TABLES)
    assert all(n > 0 for n in expected.values())
    assert result.rows_by_table == expected

    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    with zipfile.ZipFile(out) as zf:
        names = set(zf.namelist())
        assert {"personal_data.json", "manifest.json", "README.txt"} <= names
        assert {f"csv/{t}.csv" for t in PERSONAL_TABLES} <= names
        blob = b"".join(zf.read(n) for n in names if n != "README.txt")
        manifest = json.loads(zf.read("manifest.json"))
        assert {f["name"] for f in manifest["files"]} == names - {"manifest.json"}
        for f in manifest["files"]:
            data = zf.read(f["name"])
            assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"]
        for t in PERSONAL_TABLES:
            rows = list(csv.DictReader(io.StringIO(zf.read(f"csv/{t}.csv").decode())))
            assert len(rows) == expected[t], t
        doc = json.loads(zf.read("personal_data.json"))
    assert manifest["rows_by_table"] == expected and manifest["schema_revision"]
    assert doc["user"]["email"] == me.email and doc["student"]["full_name"] == me.full_name
    assert "password_hash" not in doc["user"] and b"password_hash" not in blob
    assert b"scrypt$" not in blob
    assert sum(len(c["flashcard_reviews"]) for c in doc["flashcards"]) == \
        expected["flashcard_reviews"]
    for t in ("notes", "flashcards", "revision_sessions", "ai_interactions", "student_subjects"):
        assert len(doc[t]) == expected[t]
    assert {e["subject"]["name"] for e in doc["student_subjects"]} == {"Mathematics", "Biology"}
    for other in others:
        for needle in (other.email, other.full_name, other.note_marker, str(other.student_id),
                       str(other.user_id)):
            assert needle.encode() not in blob


def test_export_cli_writes_once_and_refuses_bad_input(migrated, cli_db, people, key_env, cli,
                                                      tmp_path):
    out = tmp_path / "export.zip"
    res = cli("privacy", "export", "--email", people[0].email.upper(), "--out", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["rows_by_table"]["users"] == 1
    assert zipfile.ZipFile(out).testzip() is None
    line = json.loads(Path(os.environ["STUDYHUB_AUDIT_LOG"]).read_text().splitlines()[-1])
    assert line["action"] == "privacy.export" and people[0].email not in json.dumps(line)
    before = out.read_bytes()
    res = cli("privacy", "export", "--email", people[0].email, "--out", out)
    assert res.exit_code != 0 and "already exists" in res.stderr
    assert out.read_bytes() == before
    assert list(tmp_path.glob(".export.zip.*")) == []  # no temporary file left behind
    for args, message in (
        (["--student", "not-a-uuid"], "malformed student id"),
        (["--student", str(uuid.uuid4()), "--email", "a@b.c"], "not both"),
        (["--student", str(uuid.uuid4())], "no student with id"),
        (["--email", "nobody@example.org"], "no account has the email"),
    ):
        res = cli("privacy", "export", *args, "--out", tmp_path / "x.zip")
        assert res.exit_code != 0 and message in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
        assert "nobody@example.org" not in res.stderr
    assert not (tmp_path / "x.zip").exists()


# ------------------------------------------------------------------------------------------ erase

def test_erase_leaves_no_row_anywhere_and_others_untouched(migrated, pdb, people, key_env,
                                                           cluster):
    me = people[1]
    with connect_as(migrated, "app", pdb) as conn:
        others_before = checksums(conn, exclude=me)
    with db_conn(migrated, pdb) as conn:
        result = privacy.erase_person(conn, key_env, email=me.email)
    assert result.verified and not result.dry_run
    assert result.rows_by_table["users"] == 1 and result.rows_by_table["flashcard_reviews"] == 18
    assert list(result.rows_by_table)[:2] == ["flashcard_reviews", "flashcards"]  # FK order
    with connect_as(migrated, "app", pdb) as conn:
        for table in PERSONAL_TABLES:
            assert person_rows(conn, table, me) == 0, table
        for table in tables_with_student_id(conn):
            assert conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE student_id = %s").format(
                sql.Identifier(table)), (me.student_id,)).fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM users WHERE email = %s",
                            (me.email,)).fetchone()[0] == 0
        assert checksums(conn) == others_before
        ledger = conn.execute("SELECT user_id, student_id, pseudonym, rows_deleted "
                              "FROM ops.erasure_ledger").fetchall()
    assert ledger == [(me.user_id, me.student_id, result.pseudonym, result.rows_total)]
    assert result.pseudonym == key_env.pseudonym("user", me.user_id)


def test_erase_cli_dry_run_confirmation_audit_and_logs_without_personal_data(
        migrated, pdb, cli_db, people, key_env, cli, cluster):
    me = people[2]
    with connect_as(migrated, "app", pdb) as conn:
        before = checksums(conn)

    res = cli("privacy", "erase", "--email", me.email, "--dry-run")
    assert res.exit_code == 0, res.stderr
    assert "would delete" in res.stdout and "nothing was changed" in res.stdout
    res = cli("privacy", "erase", "--email", me.email)  # not a terminal, no --yes
    assert res.exit_code != 0 and "needs confirmation" in res.stderr
    with connect_as(migrated, "app", pdb) as conn:
        assert checksums(conn) == before

    res = cli("privacy", "erase", "--email", me.email, "--yes", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["verified"] is True and out["rows_by_table"]["students"] == 1
    with connect_as(migrated, "app", pdb) as conn:
        assert person_rows(conn, "students", me) == 0

    audit = Path(os.environ["STUDYHUB_AUDIT_LOG"]).read_text()
    line = json.loads(audit.splitlines()[-1])
    assert line["action"] == "privacy.erase" and line["person"] == out["pseudonym"]
    assert line["rows_total"] == out["rows_total"]
    server_logs = "".join(p.read_text(errors="replace") for p in cluster.logs_dir.rglob("*")
                          if p.is_file())
    for needle in (me.email, me.full_name, me.note_marker, str(me.user_id), str(me.student_id)):
        assert needle not in audit, needle
        assert needle not in server_logs, needle
    with connect_as(migrated, "app", pdb) as conn:
        statements = " ".join(r[0] for r in conn.execute("SELECT query FROM pg_stat_statements"))
    assert "studyhub_privacy.student_id" in statements or "set_config" in statements
    for needle in (me.email, str(me.student_id), str(me.user_id)):
        assert needle not in statements, needle


def test_erase_refuses_bad_input_and_changes_nothing(migrated, pdb, cli_db, people, key_env,
                                                     cli, monkeypatch):
    with connect_as(migrated, "app", pdb) as conn:
        before = checksums(conn)
    for args, message in (
        (["--student", "12345"], "malformed student id"),
        (["--student", str(people[0].student_id), "--email", people[0].email], "not both"),
        (["--student", str(uuid.uuid4())], "no student with id"),
        (["--email", "nobody@example.org"], "no account has the email"),
        ([], "--student UUID or --email"),
    ):
        res = cli("privacy", "erase", *args, "--yes")
        assert res.exit_code != 0 and message in res.stderr, (args, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1
    monkeypatch.delenv("STUDYHUB_PSEUDONYM_KEY")
    monkeypatch.setenv("STUDYHUB_PSEUDONYM_KEY_FILE", "/nonexistent/pseudonym.key")
    res = cli("privacy", "erase", "--student", str(people[0].student_id), "--yes")
    assert res.exit_code != 0 and "no pseudonym key" in res.stderr
    with connect_as(migrated, "app", pdb) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT count(*) FROM ops.erasure_ledger").fetchone()[0] == 0


def test_erase_refused_on_production_unless_named(cli, monkeypatch, key_env):
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    monkeypatch.setenv("STUDYHUB_PRODUCTION_HOST", "db-studyhub-prod.invalid")
    res = cli("privacy", "erase", "--student", str(uuid.uuid4()), "--yes")
    assert res.exit_code != 0 and "--profile production" in res.stderr


def test_table_without_policy_makes_export_and_erase_refuse(migrated, pdb, cli_db, people,
                                                            key_env, tmp_path, cli):
    me = people[0]
    with connect_as(migrated, "app", pdb) as conn:
        conn.execute("CREATE TABLE study_buddies (id bigint PRIMARY KEY, "
                     "student_id uuid NOT NULL REFERENCES students ON DELETE CASCADE, "
                     "nickname text)")
        conn.execute("INSERT INTO study_buddies VALUES (1, %s, 'buddy')", (me.student_id,))
        before = checksums(conn)
    with db_conn(migrated, pdb) as conn:
        with pytest.raises(privacy.PolicyError, match="public.study_buddies"):
            privacy.export_person(conn, tmp_path / "x.zip", student_id=me.student_id)
        with pytest.raises(privacy.PolicyError, match="public.study_buddies"):
            privacy.erase_person(conn, key_env, student_id=me.student_id)
        with pytest.raises(privacy.PolicyError, match="public.study_buddies"):
            privacy.reapply_erasures(conn, [privacy.LedgerEntry(
                me.user_id, me.student_id, "p", datetime.now(timezone.utc), 1)])
    assert not (tmp_path / "x.zip").exists()
    with connect_as(migrated, "app", pdb) as conn:
        assert checksums(conn) == before
    res = cli("privacy", "policy")
    assert res.exit_code == 1 and "study_buddies" in res.stdout and "unclassified" in res.stdout
    res = cli("privacy", "erase", "--student", str(me.student_id), "--yes")
    assert res.exit_code != 0 and "public.study_buddies" in res.stderr

    # A table that names a person without a foreign key is caught by its column names.
    with connect_as(migrated, "app", pdb) as conn:
        conn.execute("DROP TABLE study_buddies")
        conn.execute("CREATE TABLE login_events (at timestamptz, user_id uuid)")
    res = cli("privacy", "erase", "--student", str(me.student_id), "--yes")
    assert res.exit_code != 0 and "public.login_events (column user_id" in res.stderr


def test_policy_command_works_as_ops_role_on_the_migrated_schema(migrated, cli):
    res = cli("privacy", "policy", "--json")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["complete"] is True and report["problems"] == []
    erased = {r["table"] for r in report["tables"] if r["status"] == "erase"}
    assert erased == set(PERSONAL_TABLES)
    assert report["erase_order"][-2:] == ["students", "users"]


def test_erasure_failing_midway_changes_nothing(migrated, pdb, people, key_env):
    """A lock held on one of the person's notes makes the erasure time out after it has deleted
    reviews and cards: everything is rolled back, and it retried first."""
    me = people[2]
    with connect_as(migrated, "app", pdb) as conn:
        before = checksums(conn)
    blocker = connect_as(migrated, "app", pdb, autocommit=False)
    try:
        blocker.execute("SELECT 1 FROM notes WHERE student_id = %s LIMIT 1 FOR UPDATE",
                        (me.student_id,))
        with db_conn(migrated, pdb) as conn, pytest.raises(
                privacy.ErasureError, match=r"2 attempt\(s\): lock timeout while deleting "
                                            r"public\.notes"):
            privacy.erase_person(conn, key_env, student_id=me.student_id,
                                 lock_timeout="100ms", attempts=2)
    finally:
        blocker.rollback()
        blocker.close()
    with connect_as(migrated, "app", pdb) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT count(*) FROM ops.erasure_ledger").fetchone()[0] == 0


def test_erase_retries_after_a_lock_timeout_and_succeeds(migrated, pdb, people, key_env):
    me = people[0]
    blocker = connect_as(migrated, "app", pdb, autocommit=False)
    blocker.execute("SELECT 1 FROM notes WHERE student_id = %s FOR UPDATE", (me.student_id,))
    timer = threading.Timer(0.4, blocker.rollback)
    timer.start()
    try:
        with db_conn(migrated, pdb) as conn:
            result = privacy.erase_person(conn, key_env, student_id=me.student_id,
                                          lock_timeout="150ms", attempts=5)
    finally:
        timer.join()
        blocker.close()
    assert result.attempts > 1 and result.verified


# ------------------------------------------------------------ audit lines of failed commands

def audit_text() -> str:
    path = Path(os.environ["STUDYHUB_AUDIT_LOG"])
    return path.read_text() if path.exists() else ""


def last_audit_line() -> dict:
    return json.loads(audit_text().splitlines()[-1])


def test_a_failed_erase_is_audited_without_personal_data(migrated, pdb, cli_db, people,
                                                         key_env, cli):
    """A lock held on the person's account row makes the erasure itself time out (its plan
    only reads): the command fails, nothing changes, and the audit line says privacy.erase
    failed, naming the error by type only: no email, no name, no id."""
    me = people[2]
    with connect_as(migrated, "app", pdb) as conn:
        before = checksums(conn)
    blocker = connect_as(migrated, "app", pdb, autocommit=False)
    try:
        blocker.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (me.user_id,))
        res = cli("privacy", "erase", "--email", me.email, "--yes", "--lock-timeout", "100ms")
    finally:
        blocker.rollback()
        blocker.close()
    assert res.exit_code != 0 and "lock timeout while locking public.users" in res.stderr
    with connect_as(migrated, "app", pdb) as conn:
        assert checksums(conn) == before
    line = last_audit_line()
    assert (line["action"], line["outcome"], line["error"], line["database"]) == \
        ("privacy.erase", "failed", "ErasureError", pdb)
    for needle in (me.email, me.full_name, str(me.user_id), str(me.student_id)):
        assert needle not in audit_text(), needle


def test_erasing_an_unknown_student_is_audited_as_failed_without_the_id(migrated, pdb,
                                                                        key_env):
    unknown = str(uuid.uuid4())
    with pytest.raises(privacy.PersonNotFound, match=unknown):
        erasure.run_erase(cli_db_profile(migrated, pdb), key_env, student_id=unknown)
    line = last_audit_line()
    assert (line["action"], line["outcome"], line["error"]) == \
        ("privacy.erase", "failed", "PersonNotFound")
    assert unknown not in audit_text()


def test_a_failed_export_is_audited_without_the_id(migrated, cli_db, key_env, cli, tmp_path):
    unknown = str(uuid.uuid4())
    res = cli("privacy", "export", "--student", unknown, "--out", tmp_path / "x.zip")
    assert res.exit_code != 0 and "no student with id" in res.stderr
    line = last_audit_line()
    assert (line["action"], line["outcome"], line["error"], line["database"]) == \
        ("privacy.export", "failed", "PersonNotFound", cli_db)
    assert unknown not in audit_text() and not (tmp_path / "x.zip").exists()


def test_a_failed_reapply_is_audited(migrated, pdb, cli_db, people, key_env, cli, cluster):
    """The restored copy still holds an erased person whose account row is locked: the re-apply
    (not its plan) times out, nothing changes, the audit line says it failed and why."""
    me = people[1]
    restored = f"restored_{uuid.uuid4().hex[:8]}"
    with cluster.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER studyhub_app").format(
            sql.Identifier(restored), sql.Identifier(pdb)))
    try:
        with db_conn(migrated, pdb) as conn:
            privacy.erase_person(conn, key_env, student_id=me.student_id)
        with connect_as(migrated, "app", restored) as conn:
            before = checksums(conn)
        blocker = connect_as(migrated, "app", restored, autocommit=False)
        try:
            blocker.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (me.user_id,))
            res = cli("privacy", "reapply-erasures", "--database", restored, "--yes",
                      "--lock-timeout", "100ms")
        finally:
            blocker.rollback()
            blocker.close()
        assert res.exit_code != 0 and "lock timeout" in res.stderr
        with connect_as(migrated, "app", restored) as conn:
            assert checksums(conn) == before
        line = last_audit_line()
        assert (line["action"], line["outcome"], line["database"]) == \
            ("privacy.reapply_erasures", "failed", restored)
        assert "re-applying erasures gave up after 3 attempt(s): lock timeout" in line["error"]
        assert me.email not in audit_text() and str(me.user_id) not in audit_text()
    finally:
        cluster.drop_database(restored)


def test_erase_and_reapply_refuse_a_read_only_profile_before_connecting(migrated, pdb, people,
                                                                        key_env, tmp_path):
    """The rule lives with the profile and the ops functions ask it first (not only the CLI):
    nothing is changed, and nothing was attempted, so nothing is audited."""
    import dataclasses

    read_only = dataclasses.replace(cli_db_profile(migrated, pdb), read_only=True)
    with connect_as(migrated, "app", pdb) as conn:
        before = checksums(conn)
    with pytest.raises(RefusedError, match="refusing to erase a person: profile local is "
                                           "marked read-only"):
        erasure.run_erase(read_only, key_env, student_id=people[0].student_id)
    with pytest.raises(RefusedError, match="refusing to re-apply erasures"):
        erasure.run_reapply(read_only)
    plan = erasure.run_erase(read_only, key_env, student_id=people[0].student_id, dry_run=True)
    assert plan.dry_run and plan.rows_total > 0  # a dry run changes nothing: allowed
    with connect_as(migrated, "app", pdb) as conn:
        assert checksums(conn) == before
    assert audit_text() == ""


# ------------------------------------------------------------------------- ledger and restores

def _pg(program: str, profile, database: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(proc.pg_program(program)), *args],
                          env=child_env(profile, "app", database), capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_backup_taken_before_erasure_and_restored_after_no_longer_contains_the_person(
        migrated, pdb, people, key_env, cluster, tmp_path):
    me = people[2]
    dump = tmp_path / "before.dump"
    res = _pg("pg_dump", migrated, pdb, "-Fc", "-f", str(dump))
    assert res.returncode == 0, res.stderr

    with db_conn(migrated, pdb) as conn:
        privacy.erase_person(conn, key_env, student_id=me.student_id)
        ledger = privacy.erasure_ledger(conn)
    ledger_file = tmp_path / "erasure-ledger.jsonl"
    privacy.write_ledger_file(ledger, ledger_file)
    assert stat.S_IMODE(ledger_file.stat().st_mode) == 0o600
    text = ledger_file.read_text()
    assert me.email not in text and me.full_name not in text
    assert privacy.read_ledger_file(ledger_file) == ledger

    restored = f"restored_{uuid.uuid4().hex[:8]}"
    cluster.create_database(restored)
    try:
        res = _pg("pg_restore", migrated, restored, "--no-owner", "--no-acl", "--no-comments",
                  "--exit-on-error", "-d", restored, str(dump))
        assert res.returncode == 0, res.stderr
        with connect_as(migrated, "app", restored) as conn:
            assert person_rows(conn, "students", me) == 1  # the backup brought them back
            assert conn.execute("SELECT count(*) FROM ops.erasure_ledger").fetchone()[0] == 0
            others = checksums(conn, exclude=me)
        with db_conn(migrated, restored) as conn:
            dry = privacy.reapply_erasures(conn, privacy.read_ledger_file(ledger_file),
                                           dry_run=True)
            assert dry.people_present == 1 and dry.rows_total > 0
            assert privacy.erasure_ledger(conn) == []  # dry run changed nothing
            result = privacy.reapply_erasures(conn, privacy.read_ledger_file(ledger_file))
        assert result.verified and result.people_present == 1 and result.ledger_recorded == 1
        assert result.people[0].rows_by_table["flashcard_reviews"] == 24
        with connect_as(migrated, "app", restored) as conn:
            for table in PERSONAL_TABLES:
                assert person_rows(conn, table, me) == 0, table
            assert checksums(conn) == others
        with db_conn(migrated, restored) as conn:
            assert [e.user_id for e in privacy.erasure_ledger(conn)] == [me.user_id]
            again = privacy.reapply_erasures(conn, ledger)  # idempotent
        assert again.people_present == 0 and again.rows_total == 0 and again.ledger_recorded == 0
    finally:
        cluster.drop_database(restored)


def test_reapply_erasures_cli_with_a_ledger_file(migrated, pdb, cli_db, people, key_env, cli,
                                                 cluster, tmp_path):
    """One copy plays the live database (the erasure happens there), another the restored
    backup that still holds the person."""
    me = people[1]
    restored = f"restored_{uuid.uuid4().hex[:8]}"
    with cluster.admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER studyhub_app").format(
            sql.Identifier(restored), sql.Identifier(pdb)))
    try:
        assert cli("privacy", "erase", "--student", me.student_id, "--yes").exit_code == 0
        ledger_file = tmp_path / "ledger.jsonl"
        res = cli("privacy", "ledger", "--out", ledger_file, "--json")
        assert res.exit_code == 0 and json.loads(res.stdout)[0]["user_id"] == str(me.user_id)

        res = cli("privacy", "reapply-erasures", "--database", restored, "--ledger-file",
                  ledger_file, "--dry-run")
        assert res.exit_code == 0 and "would erase again" in res.stdout
        with connect_as(migrated, "app", restored) as conn:
            assert person_rows(conn, "users", me) == 1
        res = cli("privacy", "reapply-erasures", "--database", restored, "--ledger-file",
                  ledger_file)
        assert res.exit_code != 0 and "needs confirmation" in res.stderr
        res = cli("privacy", "reapply-erasures", "--database", restored, "--yes", "--json")
        assert res.exit_code == 0, res.stderr  # default source: the live database's ledger
        out = json.loads(res.stdout)
        assert out["people_present"] == 1 and out["verified"] is True
        with connect_as(migrated, "app", restored) as conn:
            for table in PERSONAL_TABLES:
                assert person_rows(conn, table, me) == 0, table
        res = cli("privacy", "reapply-erasures", "--database", restored, "--json")
        assert res.exit_code == 0 and json.loads(res.stdout)["people_present"] == 0
        line = json.loads(Path(os.environ["STUDYHUB_AUDIT_LOG"]).read_text().splitlines()[-1])
        assert line["action"] == "privacy.reapply_erasures"
        assert line["people"] == [key_env.pseudonym("user", me.user_id)]
    finally:
        cluster.drop_database(restored)


def test_ledger_file_rejects_malformed_lines(tmp_path):
    bad = tmp_path / "ledger.jsonl"
    bad.write_text('{"user_id": "not-a-uuid"}\n')
    with pytest.raises(StudyhubError, match="ledger.jsonl:1: not a ledger entry"):
        privacy.read_ledger_file(bad)
    with pytest.raises(StudyhubError, match="not found"):
        privacy.read_ledger_file(tmp_path / "missing.jsonl")


def test_erasure_ledger_of_a_database_without_the_table_is_empty(migrated, fresh_db):
    with db_conn(migrated, fresh_db) as conn:
        assert privacy.erasure_ledger(conn) == []


def test_rehearsal_deletes_and_verifies_then_rolls_back(migrated, pdb, people, key_env):
    me = people[3]
    with connect_as(migrated, "app", pdb) as conn:
        before = checksums(conn)
    with db_conn(migrated, pdb) as conn:
        result = privacy.erase_person(conn, key_env, student_id=me.student_id, rehearse=True)
    assert result.verified and result.rolled_back and result.rows_by_table["notes"] == 2
    with connect_as(migrated, "app", pdb) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT count(*) FROM ops.erasure_ledger").fetchone()[0] == 0


def test_verification_rolls_back_when_a_row_still_points_at_the_person(migrated, pdb, people,
                                                                      key_env):
    """A trigger re-attaches a row (through a deferred key) after everything was deleted: the
    check before commit finds it and nothing is erased."""
    from studyhub.db.privacy_policy import POLICY, TablePolicy

    me = people[0]
    with connect_as(migrated, "app", pdb) as conn:
        conn.execute("CREATE TABLE study_buddies (id bigserial PRIMARY KEY, student_id uuid "
                     "NOT NULL REFERENCES students ON DELETE CASCADE "
                     "DEFERRABLE INITIALLY DEFERRED)")
        conn.execute("CREATE FUNCTION sneak() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "INSERT INTO study_buddies (student_id) VALUES (%s); RETURN NULL; END $$"
                     % sql.Literal(str(me.student_id)).as_string(conn))
        conn.execute("CREATE TRIGGER sneak AFTER DELETE ON users FOR EACH STATEMENT "
                     "EXECUTE FUNCTION sneak()")
        before = checksums(conn)
    policy = dict(POLICY, **{"public.study_buddies": TablePolicy("erase", "buddies")})
    with db_conn(migrated, pdb) as conn, pytest.raises(
            privacy.ErasureError, match=r"verification failed: .*study_buddies \(1\)"):
        privacy.erase_person(conn, key_env, student_id=me.student_id, policy=policy)
    with connect_as(migrated, "app", pdb) as conn:
        assert checksums(conn) == before
        assert conn.execute("SELECT count(*) FROM study_buddies").fetchone()[0] == 0


def test_erase_states_the_places_outside_the_database_it_could_not_clean(
        migrated, pdb, cli_db, people, key_env, cli, cluster, monkeypatch, tmp_path):
    """The server log (its files), the WAL archive, backup sets of this database made before the
    erasure (by name) and the person's exports (from the audit log), in --json and in the
    human output; a set made after an erasure is not listed for it."""
    monkeypatch.setenv("STUDYHUB_BACKUP_DIR", str(tmp_path / "backups"))
    me, other = people[2], people[0]
    before = json.loads(cli("backup", "create", "--json").stdout)["name"]
    res = cli("privacy", "export", "--student", str(me.student_id), "--out", tmp_path / "me.zip")
    assert res.exit_code == 0, res.stderr

    res = cli("privacy", "erase", "--student", str(me.student_id), "--yes", "--json")
    assert res.exit_code == 0, res.stderr
    places = {p["kind"]: p for p in json.loads(res.stdout)["not_cleaned"]}
    assert {"server-log", "wal", "backup-set", "export"} <= set(places)
    log = places["server-log"]
    assert log["location"] == str(cluster.logs_dir) and "primary.log" in log["items"]
    assert "since then error texts only" in log["holds"] and "never rotated" in log["kept"]
    assert places["wal"]["location"] == str(cluster.wal_archive_dir)
    assert "basebackup --keep" in places["wal"]["kept"]
    assert places["backup-set"]["items"] == [before]
    assert "backup restore" in places["backup-set"]["action"]
    [export] = places["export"]["items"]
    assert export.startswith("privacy export ")
    audit = json.loads(Path(os.environ["STUDYHUB_AUDIT_LOG"]).read_text().splitlines()[-1])
    assert audit["not_cleaned"] == [p for p in places]

    first_erasure = json.loads(res.stdout)
    started = datetime.now(timezone.utc).replace(microsecond=0)
    while datetime.now(timezone.utc).replace(microsecond=0) == started:
        time.sleep(0.05)  # set names have a one-second resolution
    after = json.loads(cli("backup", "create", "--json").stdout)["name"]
    with connect_as(migrated, "app", pdb) as conn:  # made after it: not listed for it
        again = places_not_cleaned(conn, cli_db_profile(migrated, pdb), database=pdb,
                                   pseudonym=first_erasure["pseudonym"],
                                   erased_at=datetime.fromisoformat(first_erasure["erased_at"]))
    assert [p.items for p in again if p.kind == "backup-set"] == [[before]]

    res = cli("privacy", "erase", "--student", str(other.student_id), "--yes")
    assert res.exit_code == 0, res.stderr
    text = " ".join(res.stdout.split())  # unwrapped
    assert "not cleaned (outside the database" in text
    for expected in (f"server-log: {cluster.logs_dir}", "primary.log",
                     f"wal: {cluster.wal_archive_dir}", f"backup-set: {tmp_path / 'backups'}",
                     f"{before}, {after}", "studyhub cluster basebackup --keep 1"):
        assert expected in text, expected
    assert "export:" not in text  # nothing was exported about this person


def test_erase_on_a_managed_profile_names_the_providers_logs_and_recovery_window(
        migrated, pdb, people, key_env, cli, cluster, monkeypatch, tmp_path):
    from tests.diag_helpers import remote_profile_env

    remote_profile_env(monkeypatch, cluster, "staging", database=pdb, tmp_path=tmp_path)
    monkeypatch.setenv("STUDYHUB_STAGING_DO_CLUSTER_ID", "9cc10173-e9ea-4176-9dbc-a4cee4c4ff30")
    monkeypatch.setenv("STUDYHUB_BACKUP_DIR", str(tmp_path / "backups"))
    res = cli("privacy", "erase", "-p", "staging", "--student", str(people[1].student_id),
              "--yes", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    places = {p["kind"]: p for p in out["not_cleaned"]}
    assert set(places) == {"server-log", "wal", "fork"}
    assert places["server-log"]["location"].startswith("DigitalOcean's PostgreSQL logs")
    erased_at = datetime.fromisoformat(out["erased_at"])
    until = (erased_at + timedelta(days=7)).isoformat(timespec="seconds")
    assert places["wal"]["kept"] == f"7 days, i.e. until about {until}"
    assert "reapply-erasures --fork NAME" in places["fork"]["action"]
