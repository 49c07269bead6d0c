"""The seeder (``studyhub.ops.seed`` and ``studyhub seed``) against a real cluster."""

from __future__ import annotations

import json
import uuid
from datetime import date, timezone
from typing import Callable, Iterator

import pytest
from fsrs import Card, Rating, Scheduler

from studyhub.errors import RefusedError
from studyhub.local import LocalCluster
from studyhub.ops import migrate
from studyhub.ops.queries import load
from studyhub.ops.seed import (
    SeedError,
    SeedProgress,
    check_seed_allowed,
    seed_database,
)
from studyhub.ops.seed import DATASET_NOW, SCHOOL_YEAR_START, SEEDED_TABLES
from studyhub.profiles import Profile
from tests.conftest import connect_as

ALL_TABLES = ("subjects", *SEEDED_TABLES)
SHARED_STUDENTS = 300


@pytest.fixture
def make_db(cluster: LocalCluster, profile: Profile) -> Iterator[Callable[..., str]]:
    """Create databases (migrated to head unless asked not to); all dropped afterwards."""
    made: list[str] = []

    def make(*, migrated: bool = True) -> str:
        name = f"t_seed_{uuid.uuid4().hex[:10]}"
        cluster.create_database(name)
        made.append(name)
        if migrated:
            migrate.upgrade(profile, database=name)
        return name

    yield make
    for name in made:
        cluster.drop_database(name)


@pytest.fixture(scope="module")
def shared(cluster: LocalCluster, profile: Profile):
    """One database seeded with SHARED_STUDENTS students, for read-only checks."""
    name = f"t_seed_shared_{uuid.uuid4().hex[:8]}"
    cluster.create_database(name)
    migrate.upgrade(profile, database=name)
    result = seed_database(profile, students=SHARED_STUDENTS, seed=42, database=name)
    yield name, result
    cluster.drop_database(name)


def query(profile: Profile, database: str, sql: str, params=None) -> list[tuple]:
    with connect_as(profile, "app", database) as conn:
        return conn.execute(sql, params).fetchall()


def scalar(profile: Profile, database: str, sql: str, params=None):
    return query(profile, database, sql, params)[0][0]


def checksums(profile: Profile, database: str) -> dict[str, str]:
    """md5 of every table's rows in primary-key order."""
    out = {}
    for table in ALL_TABLES:
        order = "student_id, subject_id" if table == "student_subjects" else "id"
        out[table] = scalar(profile, database,
                            f"SELECT md5(string_agg(t::text, '|' ORDER BY {order})) FROM {table} t")
    return out


def counts(profile: Profile, database: str) -> dict[str, int]:
    return {t: scalar(profile, database, f"SELECT count(*) FROM {t}") for t in ALL_TABLES}


def keys_and_indexes(profile: Profile, database: str) -> set[tuple]:
    """Every key and index of the seeded tables, with whether each constraint is validated."""
    rows = query(profile, database, load("get_keys_and_indexes"), {"tables": list(SEEDED_TABLES)})
    validated = dict(query(profile, database,
                           "SELECT conname, convalidated FROM pg_constraint"
                           " WHERE conrelid = ANY(%s::regclass[])", (list(SEEDED_TABLES),)))
    return {(table, name, kind, validated.get(name)) for table, name, kind in rows}


# ----------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_data_and_another_seed_differs(profile, make_db):
    first, second, other = make_db(), make_db(), make_db()
    for db, seed in ((first, 7), (second, 7), (other, 8)):
        result = seed_database(profile, students=120, seed=seed, database=db)
        assert result.strategy == "rebuild"
    a, b, c = checksums(profile, first), checksums(profile, second), checksums(profile, other)
    assert all(a.values())
    assert a == b
    assert c["subjects"] == a["subjects"]  # shared reference rows
    for table in SEEDED_TABLES:
        assert c[table] != a[table], table


def test_appending_with_another_seed_or_the_same_seed_adds_students(profile, make_db):
    db = make_db()
    seed_database(profile, students=30, seed=1, database=db)
    more = seed_database(profile, students=20, seed=2, database=db)
    again = seed_database(profile, students=10, seed=1, database=db)
    assert (more.existing_students, more.strategy) == (30, "in_place")
    assert again.first_student_number == 30  # seed 1's numbering continues: no email clash
    assert more.rows["subjects"] == 0 and again.rows["subjects"] == 0
    assert scalar(profile, db, "SELECT count(*) FROM students") == 60
    assert scalar(profile, db, "SELECT count(DISTINCT email) FROM users") == 60
    assert not migrate.compare(profile, database=db).drift


def test_existing_subjects_are_reused_and_missing_ones_created(profile, make_db):
    db = make_db()
    mine = uuid.uuid4()
    with connect_as(profile, "app", db) as conn:
        conn.execute("INSERT INTO subjects (id, code, name) VALUES (%s, 'MATH', 'Maths')", (mine,))
    result = seed_database(profile, students=40, database=db)
    assert result.rows["subjects"] == 19
    assert scalar(profile, db, "SELECT count(*) FROM subjects") == 20
    maths = scalar(profile, db, "SELECT count(*) FROM student_subjects WHERE subject_id = %s",
                   (mine,))
    assert maths > 0


# ----------------------------------------------------------------------- the data
def test_rows_per_table_are_in_the_expected_ranges(profile, shared):
    db, result = shared
    n = SHARED_STUDENTS
    got = counts(profile, db)
    assert {t: got[t] for t in SEEDED_TABLES} == {t: result.rows[t] for t in SEEDED_TABLES}
    assert got["subjects"] == 20 == result.rows["subjects"]
    assert got["users"] == got["students"] == n
    per_student = {t: got[t] / n for t in SEEDED_TABLES}
    assert 3.0 <= per_student["student_subjects"] <= 4.0
    assert 17 <= per_student["notes"] <= 23
    assert 52 <= per_student["flashcards"] <= 68
    assert 125 <= per_student["flashcard_reviews"] <= 175
    assert 7 <= per_student["revision_sessions"] <= 13
    assert 8 <= per_student["ai_interactions"] <= 12
    # 20,000 students make at least 5 million rows
    assert sum(per_student.values()) * 20_000 >= 5_000_000
    enrolments = query(profile, db, "SELECT min(c), max(c) FROM (SELECT count(*) c"
                                    " FROM student_subjects GROUP BY student_id) s")[0]
    assert enrolments[0] >= 2 and enrolments[1] <= 5
    assert result.total_rows == sum(result.rows.values())
    assert result.rows_per_s > 0


def test_flashcards_hold_the_state_of_their_last_review(profile, shared):
    db, _ = shared
    mismatched = scalar(profile, db, """
        WITH last AS (
            SELECT DISTINCT ON (flashcard_id) * FROM flashcard_reviews
            ORDER BY flashcard_id, reviewed_at DESC)
        SELECT count(*) FROM flashcards f JOIN last l ON l.flashcard_id = f.id
        WHERE (f.state, f.stability, f.difficulty, f.due, f.last_review, f.updated_at)
              IS DISTINCT FROM (l.state, l.stability, l.difficulty, l.due, l.reviewed_at,
                                l.reviewed_at)""")
    assert mismatched == 0
    wrong_counters = scalar(profile, db, """
        SELECT count(*) FROM flashcards f
        LEFT JOIN (SELECT flashcard_id, count(*) n FROM flashcard_reviews GROUP BY 1) r
               ON r.flashcard_id = f.id
        WHERE f.reps <> coalesce(r.n, 0)""")
    assert wrong_counters == 0
    never_reviewed = query(profile, db, """
        SELECT count(*), count(*) FILTER (WHERE state = 1 AND step = 0 AND stability IS NULL
            AND difficulty IS NULL AND last_review IS NULL AND due = created_at AND lapses = 0)
        FROM flashcards WHERE reps = 0""")[0]
    assert never_reviewed[0] > 0 and never_reviewed[0] == never_reviewed[1]
    states = dict(query(profile, db, "SELECT state, count(*) FROM flashcards GROUP BY 1"))
    assert set(states) == {1, 2, 3}
    assert scalar(profile, db, "SELECT count(*) FROM flashcards WHERE lapses > 0") > 0


def test_reviews_replay_exactly_through_the_real_fsrs_scheduler(profile, shared):
    db, _ = shared
    scheduler = Scheduler(enable_fuzzing=False)
    cards = [r[0] for r in query(profile, db, """
        SELECT id FROM flashcards WHERE reps >= 3 ORDER BY id LIMIT 60""")]
    assert len(cards) == 60
    for card_id in cards:
        reviews = query(profile, db, """
            SELECT rating, reviewed_at, state, stability, difficulty, due, elapsed_days,
                   scheduled_days
            FROM flashcard_reviews WHERE flashcard_id = %s ORDER BY reviewed_at""", (card_id,))
        card = Card(card_id=1, due=reviews[0][1].astimezone(timezone.utc))
        previous = None
        for rating, at, state, stability, difficulty, due, elapsed, scheduled in reviews:
            at = at.astimezone(timezone.utc)
            card, _ = scheduler.review_card(card, Rating(rating), at)
            assert (int(card.state), card.due) == (state, due)
            assert card.stability == pytest.approx(stability, rel=1e-12)
            assert card.difficulty == pytest.approx(difficulty, rel=1e-12)
            assert scheduled == pytest.approx((due - at).total_seconds() / 86_400)
            assert elapsed == pytest.approx(
                (at - previous).total_seconds() / 86_400 if previous else 0.0)
            previous = at


def test_sessions_cover_their_reviews(profile, shared):
    db, _ = shared
    assert scalar(profile, db, """
        SELECT count(*) FROM revision_sessions s
        WHERE cards_reviewed <> (SELECT count(*) FROM flashcard_reviews r
                                 WHERE r.revision_session_id = s.id)""") == 0
    assert scalar(profile, db, """
        SELECT count(*) FROM flashcard_reviews r JOIN revision_sessions s
          ON s.id = r.revision_session_id
        WHERE r.reviewed_at NOT BETWEEN s.started_at AND s.ended_at
           OR r.student_id <> s.student_id""") == 0
    share = scalar(profile, db, "SELECT avg((revision_session_id IS NOT NULL)::int)"
                                " FROM flashcard_reviews")
    assert 0.8 < share < 1  # a few quick reviews happen outside a session


def test_people_and_texts_look_real(profile, shared):
    db, _ = shared
    rows = query(profile, db, """
        SELECT u.email, u.password_hash, s.full_name, s.year_group, s.date_of_birth,
               s.school, s.timezone
        FROM users u JOIN students s ON s.user_id = u.id""")
    emails = [r[0] for r in rows]
    assert len(set(emails)) == len(emails)
    assert all(e == e.lower() and e.split("@")[1].endswith(("example.com", "example.org",
                                                            "example.net")) for e in emails)
    assert all(r[1].startswith("$argon2id$v=19$m=65536,t=3,p=4$") and len(r[1]) > 80
               for r in rows)
    assert len({r[2] for r in rows}) > SHARED_STUDENTS * 0.8  # varied names
    end_of_school_year = date(SCHOOL_YEAR_START + 1, 8, 31)
    for _, _, _, year, born, school, tz in rows:
        age = end_of_school_year.year - born.year - (
            (end_of_school_year.month, end_of_school_year.day) < (born.month, born.day))
        assert age == year + 5  # UK: year 7 pupils are 12 by the end of the school year
        assert school and tz
    notes = query(profile, db, "SELECT title, body FROM notes LIMIT 200")
    assert all(body.count("\n\n") >= 2 and len(body) > 500 for _, body in notes)
    assert scalar(profile, db, "SELECT count(DISTINCT body) FROM notes") > 0.9 * scalar(
        profile, db, "SELECT count(*) FROM notes")
    assert scalar(profile, db, "SELECT count(*) FROM flashcards WHERE note_id IS NOT NULL") > 0
    ai = query(profile, db, "SELECT count(DISTINCT model), min(prompt_tokens),"
                            " min(completion_tokens), min(latency_ms) FROM ai_interactions")[0]
    assert ai[0] >= 4 and min(ai[1:]) > 0
    # nothing happens after the dataset's clock, except due dates
    for table, column in (("flashcard_reviews", "reviewed_at"), ("users", "last_login_at"),
                          ("notes", "updated_at"), ("ai_interactions", "created_at"),
                          ("revision_sessions", "ended_at")):
        assert scalar(profile, db, f"SELECT max({column}) FROM {table}") <= DATASET_NOW


# ----------------------------------------------------------------- schema handling
def test_seeding_an_empty_database_rebuilds_keys_exactly_and_freezes_rows(profile, shared,
                                                                          make_db):
    db, result = shared
    assert result.strategy == "rebuild"
    report = migrate.compare(profile, database=db)
    assert report.differences == [] and not report.drift
    untouched = make_db()
    assert keys_and_indexes(profile, db) == keys_and_indexes(profile, untouched)
    keys = keys_and_indexes(profile, db)
    assert keys and all(validated is not False for *_, validated in keys)
    # COPY FREEZE into the truncated tables leaves every page all-visible
    pages = query(profile, db, "SELECT relpages, relallvisible FROM pg_class"
                               " WHERE relname = 'flashcard_reviews'")[0]
    assert pages[0] > 0 and pages[1] == pages[0]


class Boom(Exception):
    pass


@pytest.mark.parametrize("failing_phase", ["load", "indexes", "foreign_keys"])
def test_a_failed_load_leaves_keys_indexes_and_foreign_keys_in_place(profile, make_db,
                                                                     failing_phase):
    db = make_db()
    before = keys_and_indexes(profile, db)
    seen: list[str] = []

    def fail(event: SeedProgress) -> None:
        seen.append(event.phase)
        if event.phase == failing_phase and (failing_phase != "load" or event.rows["users"]):
            raise Boom(failing_phase)

    with pytest.raises(Boom):
        seed_database(profile, students=60, database=db, progress=fail, batch_students=20)
    assert seen[-1] == failing_phase
    assert keys_and_indexes(profile, db) == before
    assert set(counts(profile, db).values()) == {0}
    assert not migrate.compare(profile, database=db).drift


def test_interrupting_a_load_rolls_it_back(profile, make_db):
    db = make_db()
    before = keys_and_indexes(profile, db)

    def interrupt(event: SeedProgress) -> None:
        if event.phase == "keys":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        seed_database(profile, students=10, database=db, progress=interrupt)
    assert keys_and_indexes(profile, db) == before
    assert counts(profile, db)["users"] == 0


# ------------------------------------------------------------------- heavy student
def test_heavy_student_has_ten_thousand_cards_and_a_hundred_thousand_reviews(profile, make_db,
                                                                             cli):
    db = make_db()
    out = cli("seed", "--students", 2, "--heavy-student", "--database", db)
    assert out.exit_code == 0, out.stderr
    heavy = out.stdout.split("heavy student:")[1].split()[0]
    uuid.UUID(heavy)
    cards = scalar(profile, db, "SELECT count(*) FROM flashcards WHERE student_id = %s", (heavy,))
    reviews = scalar(profile, db, "SELECT count(*) FROM flashcard_reviews WHERE student_id = %s",
                     (heavy,))
    assert cards >= 10_000 and reviews >= 100_000
    assert scalar(profile, db, "SELECT count(*) FROM students") == 3


# ---------------------------------------------------------------------------- CLI
def test_cli_seeds_and_reports_rows_per_table(profile, make_db, cli):
    db = make_db()
    out = cli("seed", "--students", 15, "--seed", 3, "--database", db)
    assert out.exit_code == 0, out.stderr
    assert "rows/s" in out.stdout and "flashcard_reviews" in out.stdout
    assert "flashcard_reviews" in out.stderr  # progress bars, on stderr
    again = cli("seed", "-n", 5, "--seed", 4, "-d", db, "--json")
    assert again.exit_code == 0, again.stderr
    data = json.loads(again.stdout)
    assert data["existing_students"] == 15 and data["rows"]["students"] == 5
    assert data["strategy"] == "in_place"
    assert scalar(profile, db, "SELECT count(*) FROM students") == 20


def test_cli_if_empty_does_nothing_on_a_seeded_database(profile, shared, cli):
    db, _ = shared
    before = checksums(profile, db)
    out = cli("seed", "--students", 5, "--if-empty", "--database", db)
    assert out.exit_code == 0, out.stderr
    assert "nothing to do" in out.stdout
    assert checksums(profile, db) == before


def test_cli_if_empty_seeds_an_empty_database(profile, make_db, cli):
    db = make_db()
    out = cli("seed", "--students", 3, "--if-empty", "--database", db)
    assert out.exit_code == 0, out.stderr
    assert scalar(profile, db, "SELECT count(*) FROM students") == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--students", 0), "at least 1"),
        (("--students", 5, "--seed", -1), "zero or positive"),
        (("--students", 5, "--profile", "production"), "refusing to seed production"),
        (("--students", 5, "--profile", "nope"), "unknown profile"),
    ],
)
def test_cli_rejects_bad_input_with_one_line(cluster, cli, args, message):
    out = cli("seed", *args)
    assert out.exit_code != 0
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_cli_refuses_an_unmigrated_database(profile, make_db, cli):
    db = make_db(migrated=False)
    out = cli("seed", "--students", 5, "--database", db)
    assert out.exit_code == 1
    assert "no StudyHub schema" in out.stderr and "migrate up" in out.stderr
    assert scalar(profile, db, "SELECT to_regclass('subjects')") is None


def test_seed_writes_its_audit_line_when_it_fails_or_skips(profile, make_db, shared, cli,
                                                          monkeypatch, tmp_path):
    from studyhub.audit import read_audit

    monkeypatch.setenv("STUDYHUB_AUDIT_LOG", str(tmp_path / "audit.log"))
    db = make_db(migrated=False)
    assert cli("seed", "--students", 5, "--database", db).exit_code == 1
    [failed] = read_audit()
    assert (failed["action"], failed["outcome"], failed["database"]) == ("seed", "failed", db)
    assert "no StudyHub schema" in failed["error"]

    name, _ = shared
    out = cli("seed", "--students", 5, "--if-empty", "--database", name)
    assert out.exit_code == 0, out.stderr
    skipped = read_audit()[-1]
    assert (skipped["action"], skipped["outcome"], skipped["database"], skipped["rows"]) == \
        ("seed", "ok", name, 0)
    assert skipped["skipped"] is True and skipped["existing_students"] == SHARED_STUDENTS


def test_a_read_only_profile_is_never_seeded(profile):
    import dataclasses

    with pytest.raises(RefusedError, match="refusing to seed: profile .* is marked read-only"):
        check_seed_allowed(dataclasses.replace(profile, read_only=True))


def test_staging_needs_its_name_and_production_is_never_seeded(cluster, tmp_path, monkeypatch,
                                                               cli):
    config = tmp_path / "studyhub.toml"
    config.write_text('[staging]\nhost = "127.0.0.1"\nport = 9\ndatabase = "s"\n'
                      '[production]\nhost = "127.0.0.1"\nport = 9\ndatabase = "p"\n')
    monkeypatch.setenv("STUDYHUB_CONFIG", str(config))
    monkeypatch.setenv("STUDYHUB_PROFILE", "staging")
    implicit = cli("seed", "--students", 1)
    assert implicit.exit_code == 1 and "--profile staging" in implicit.stderr
    explicit = cli("seed", "--students", 1, "--profile", "staging")  # allowed: tries to connect
    assert explicit.exit_code == 1 and "cannot connect" in explicit.stderr
    monkeypatch.setenv("STUDYHUB_PROFILE", "production")
    for args in ((), ("--profile", "production")):
        out = cli("seed", "--students", 1, *args)
        assert out.exit_code == 1 and "refusing to seed production" in out.stderr
    production = Profile(name="production", kind="remote", host="h", port=1, database="d",
                         sslmode="require", users={}, protected=True, explicit=True)
    with pytest.raises(RefusedError):
        check_seed_allowed(production)


def test_seed_database_rejects_bad_numbers_before_connecting(profile):
    with pytest.raises(SeedError):
        seed_database(profile, students=0)
    with pytest.raises(SeedError):
        seed_database(profile, students=1, seed=-5)


def test_seeded_tables_are_analyzed_after_their_rows_count(profile, shared):
    """ANALYZE runs after the load is committed and counted, so the statistics do not call
    freshly seeded tables overdue for ANALYZE (diag doctor's vacuum check)."""
    import time

    from tests.conftest import connect_as

    deadline = time.monotonic() + 10
    with connect_as(profile, "ops", shared[0]) as conn:
        while True:
            rows = conn.execute(
                "SELECT relname, n_mod_since_analyze, n_live_tup FROM pg_stat_user_tables "
                "WHERE relname = ANY(%s)", (["notes", "flashcards", "flashcard_reviews"],)
            ).fetchall()
            if all(live > 0 for _, _, live in rows) or time.monotonic() > deadline:
                break
            time.sleep(0.1)  # the load's counts reach the statistics when its backend flushes
    assert len(rows) == 3 and all(live > 0 for _, _, live in rows)
    assert {name: mod for name, mod, _ in rows} == {
        "notes": 0, "flashcards": 0, "flashcard_reviews": 0}


def test_the_seeder_sets_every_column_of_the_models():
    """A column the seeder leaves to its default (e.g. now()) would make seeding
    non-deterministic; a new column in the models must get a seeded value."""
    from studyhub.db.models import Base
    from studyhub.ops.seed import TABLE_COLUMNS

    assert set(TABLE_COLUMNS) == set(SEEDED_TABLES)  # every seeded table is checked
    for table, columns in TABLE_COLUMNS.items():
        assert set(columns) == set(Base.metadata.tables[table].columns.keys()), table
