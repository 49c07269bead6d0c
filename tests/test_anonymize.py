"""Pseudonymised analytics: keyed pseudonyms, no free text or identities, small groups dropped."""

from __future__ import annotations

import csv
import os
import stat
import uuid

import pytest

from studyhub.connect import connect
from studyhub.ops import migrate
from studyhub.ops.privacy import anonymize as anon
from studyhub.ops.privacy import (
    KEY_ENV,
    KEY_FILE_ENV,
    MissingKeyError,
    PseudonymKey,
    generate_key_file,
    load_key,
)
from tests.conftest import connect_as
from tests.privacy_data import add_person

KEY_A = PseudonymKey(b"analytics-key-A-0123456789abcdef0123", "test")
KEY_B = PseudonymKey(b"analytics-key-B-0123456789abcdef0123", "test")


@pytest.fixture(scope="module")
def analytics_db(cluster, migrated):
    """Three year-11 students and one lone year-7 student."""
    name = f"anon_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    migrate.upgrade(migrated, database=name)
    with connect_as(migrated, "app", name) as conn:
        people = [add_person(conn, i, size=2) for i in range(4)]
        conn.execute("UPDATE students SET year_group = 7 WHERE id = %s", (people[3].student_id,))
    yield name, people
    cluster.drop_database(name)


def run(profile, database, key, out, **kw):
    with connect(profile, "app", database=database) as conn:
        return anon.anonymize(conn, key, out, **kw)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("dataset", sorted(anon.DATASETS))
def test_output_has_no_identity_no_text_and_stable_keyed_pseudonyms(migrated, analytics_db,
                                                                     tmp_path, dataset):
    db, people = analytics_db
    a1 = run(migrated, db, KEY_A, tmp_path / "a1.csv", dataset=dataset, min_group=1)
    a2 = run(migrated, db, KEY_A, tmp_path / "a2.csv", dataset=dataset, min_group=1)
    b = run(migrated, db, KEY_B, tmp_path / "b.csv", dataset=dataset, min_group=1)
    assert a1.rows_written > 0 and a1.rows_suppressed == 0
    assert stat.S_IMODE(os.stat(a1.path).st_mode) == 0o600
    text = open(a1.path).read()
    with connect_as(migrated, "app", db) as conn:
        secrets = [r[0] for r in conn.execute(
            "SELECT email FROM users UNION ALL SELECT full_name FROM students "
            "UNION ALL SELECT school FROM students UNION ALL SELECT body FROM notes "
            "UNION ALL SELECT title FROM notes UNION ALL SELECT front FROM flashcards "
            "UNION ALL SELECT prompt FROM ai_interactions UNION ALL SELECT id::text FROM students "
            "UNION ALL SELECT id::text FROM users UNION ALL SELECT id::text FROM flashcards "
            "UNION ALL SELECT md5(email) FROM users")]
    for p in people:
        secrets += [p.email, p.full_name, p.note_marker, "@"]
    for s in secrets:
        assert s not in text, s
    rows1, rows2, rowsb = read_csv(a1.path), read_csv(a2.path), read_csv(b.path)
    pseudo = {r["student"] for r in rows1}
    assert len(pseudo) == 4 and all(len(p) == 32 for p in pseudo)
    assert sorted(map(sorted, (r.items() for r in rows1))) == \
        sorted(map(sorted, (r.items() for r in rows2)))  # same key → same output
    assert pseudo.isdisjoint({r["student"] for r in rowsb})  # other key → other pseudonyms
    assert {KEY_A.pseudonym("student", p.student_id) for p in people} == pseudo


def test_times_are_days(migrated, analytics_db, tmp_path):
    db, _ = analytics_db
    res = run(migrated, db, KEY_A, tmp_path / "r.csv", dataset="reviews", min_group=1)
    days = {r["review_day"] for r in read_csv(res.path)}
    assert days and all(len(d) == 10 and d[4] == "-" for d in days)  # YYYY-MM-DD, no time


def test_small_groups_are_suppressed(migrated, analytics_db, tmp_path):
    db, people = analytics_db
    lone = KEY_A.pseudonym("student", people[3].student_id)
    res = run(migrated, db, KEY_A, tmp_path / "k2.csv", dataset="reviews", min_group=2)
    rows = read_csv(res.path)
    assert lone not in {r["student"] for r in rows}
    assert res.rows_suppressed == 12 and res.groups_suppressed == 1  # 4 cards x 3 reviews
    assert {r["year_group"] for r in rows} == {"11"}
    res = run(migrated, db, KEY_A, tmp_path / "k4.csv", dataset="reviews", min_group=4)
    assert res.rows_written == 0 and res.groups_suppressed == 2


def test_parquet_holds_the_same_rows_as_csv(migrated, analytics_db, tmp_path):
    import pyarrow.parquet as pq

    db, _ = analytics_db
    c = run(migrated, db, KEY_A, tmp_path / "s.csv", dataset="sessions", min_group=1)
    p = run(migrated, db, KEY_A, tmp_path / "s.parquet", dataset="sessions", fmt="parquet",
            min_group=1)
    table = pq.read_table(p.path)
    assert table.num_rows == c.rows_written == p.rows_written
    assert sorted(table.column("student").to_pylist()) == \
        sorted(r["student"] for r in read_csv(c.path))
    assert str(table.schema.field("session_day").type) == "date32[day]"


def test_anonymize_refuses_without_a_key(cli, monkeypatch, tmp_path):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv(KEY_FILE_ENV, str(tmp_path / "missing.key"))
    res = cli("privacy", "anonymize", "--out", tmp_path / "x.csv")
    assert res.exit_code != 0 and "no pseudonym key" in res.stderr
    assert not (tmp_path / "x.csv").exists()


def test_key_file_is_0600_never_replaced_and_checked(monkeypatch, tmp_path, cli):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = tmp_path / "k" / "pseudonym.key"
    monkeypatch.setenv(KEY_FILE_ENV, str(path))
    res = cli("privacy", "keygen")
    assert res.exit_code == 0, res.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_text()
    key = load_key("test")
    assert key.secret.decode() == first.strip() and first.strip() not in res.stderr
    with pytest.raises(Exception, match="already exists"):
        generate_key_file(path)
    assert path.read_text() == first
    os.chmod(path, 0o644)
    with pytest.raises(Exception, match="readable by others"):
        load_key("test")
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(Exception, match="too short"):
        load_key("test")
    monkeypatch.delenv(KEY_ENV)
    os.remove(path)
    with pytest.raises(MissingKeyError):
        load_key("test")


def test_anonymize_cli_writes_file_and_audit_line(migrated, analytics_db, cli, monkeypatch,
                                                  tmp_path):
    import dataclasses
    import json

    from studyhub.cli import common

    db, people = analytics_db
    prof = dataclasses.replace(migrated, database=db)
    monkeypatch.setattr(common, "resolve_profile", lambda name=None: prof)
    monkeypatch.setenv(KEY_ENV, KEY_A.secret.decode())
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    res = cli("privacy", "anonymize", "--dataset", "ai_usage", "--out", tmp_path / "ai.csv",
              "--min-group", "2", "--json")
    assert res.exit_code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rows_written"] == 6 and out["rows_suppressed"] == 2
    audit = (tmp_path / "audit.log").read_text()
    assert "privacy.anonymize" in audit and KEY_A.secret.decode() not in audit
    assert all(p.email not in audit for p in people)
    res = cli("privacy", "anonymize", "--dataset", "nope", "--out", tmp_path / "n.csv")
    assert res.exit_code != 0


def test_a_failed_anonymize_is_audited_and_not_named_among_the_exports(
        migrated, analytics_db, cli, monkeypatch, tmp_path):
    """A refused run (the file exists) writes its audit line, outcome failed; since it wrote
    nothing, a later erasure does not list it among the exports that may hold the person."""
    import dataclasses
    import json
    from datetime import datetime, timezone

    from studyhub.cli import common
    from studyhub.ops.erasure import places_not_cleaned

    db, people = analytics_db
    prof = dataclasses.replace(migrated, database=db)
    monkeypatch.setattr(common, "resolve_profile", lambda name=None: prof)
    monkeypatch.setenv(KEY_ENV, KEY_A.secret.decode())
    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    taken = tmp_path / "taken.csv"
    taken.write_text("someone else's file\n")
    res = cli("privacy", "anonymize", "--out", taken)
    assert res.exit_code != 0 and "already exists" in res.stderr
    assert taken.read_text() == "someone else's file\n"
    line = json.loads((tmp_path / "audit.log").read_text().splitlines()[-1])
    assert (line["action"], line["outcome"], line["dataset"]) == \
        ("privacy.anonymize", "failed", "reviews")
    assert "already exists" in line["error"]
    with connect(prof, "app") as conn:
        places = places_not_cleaned(conn, prof, database=db, pseudonym="p",
                                    erased_at=datetime.now(timezone.utc))
    assert "export" not in {p.kind for p in places}


def test_students_counts_are_bands_not_exact_numbers(migrated, analytics_db, tmp_path):
    db, people = analytics_db
    res = run(migrated, db, KEY_A, tmp_path / "s.csv", dataset="students", min_group=1)
    assert res.level == 0 and "joined: month" in res.generalisation
    rows = {r["student"]: r for r in read_csv(res.path)}
    row = rows[KEY_A.pseudonym("student", people[0].student_id)]
    # size 2: 2 subjects, 2 notes, 4 cards, 12 reviews, 2 AI logs
    assert (row["subjects_band"], row["notes_band"], row["flashcards_band"], row["reviews_band"],
            row["ai_interactions_band"]) == ("1-2", "1-9", "1-9", "10-49", "1-9")
    assert len(row["joined"]) == 7 and row["joined"][4] == "-"  # YYYY-MM


def test_students_dataset_is_k_anonymous_on_every_column_and_hides_the_heavy_student(
        cluster, migrated, tmp_path):
    """The audit's finding: with exact activity counts every released student row was unique.
    Now no released row is shared by fewer than k students on all its non-pseudonym columns,
    and the heavy student (10k cards, 100k reviews) is not singled out."""
    from collections import Counter

    from studyhub.ops.seed import seed_database

    db = f"anon_seed_{uuid.uuid4().hex[:8]}"
    cluster.create_database(db)
    try:
        migrate.upgrade(migrated, database=db)
        seeded = seed_database(migrated, students=60, heavy_student=True, database=db)
        heavy = KEY_A.pseudonym("student", uuid.UUID(seeded.heavy_student_id))
        with connect_as(migrated, "app", db) as conn:
            exact = conn.execute("SELECT count(*) FROM flashcard_reviews WHERE student_id = %s",
                                 (seeded.heavy_student_id,)).fetchone()[0]
        for k in (3, 5):
            res = run(migrated, db, KEY_A, tmp_path / f"k{k}.csv", dataset="students",
                      min_group=k)
            rows = read_csv(res.path)
            assert res.rows_written == len(rows) > 0
            quasi = Counter(tuple(v for c, v in r.items() if c != "student") for r in rows)
            assert min(quasi.values()) >= k, quasi  # k-anonymous on all released columns
            assert res.rows_written + res.rows_suppressed == 61
            # its activity is like nobody else's: its row is suppressed, not released
            assert [r for r in rows if r["student"] == heavy] == []
            assert not any(str(exact) in v for r in rows for c, v in r.items() if c != "student")
    finally:
        cluster.drop_database(db)
