"""The worked example (m01) on a large flashcard_reviews while writers keep writing: no write
waits as long as the lock_timeout. The same change done naively (one transaction: ADD COLUMN,
UPDATE every row, SET NOT NULL) makes the same writers time out — the measurement catches
blocking when there is some."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field

import psycopg
import pytest

from studyhub.ops import migrate
from tests.conftest import connect_as
from tests.migration_examples import write_example

ROWS = 300_000
LOCK_TIMEOUT = "1s"
M01 = "m01"


def fill_flashcard_reviews(profile, database: str, rows: int) -> list:
    """One student with 500 cards and ``rows`` reviews, generated inside the server."""
    with connect_as(profile, "app", database) as conn:
        uid = conn.execute("INSERT INTO users (email, password_hash) VALUES "
                           "('load@example.org', 'x') RETURNING id").fetchone()[0]
        sid = conn.execute("INSERT INTO students (user_id, full_name) VALUES (%s, 'Load Test') "
                           "RETURNING id", (uid,)).fetchone()[0]
        subj = conn.execute("INSERT INTO subjects (code, name) VALUES ('load', 'Load') "
                            "RETURNING id").fetchone()[0]
        conn.execute("INSERT INTO flashcards (student_id, subject_id, front, back) "
                     "SELECT %s, %s, 'front ' || g, 'back ' || g FROM generate_series(1, 500) g",
                     (sid, subj))
        conn.execute(
            "INSERT INTO flashcard_reviews (student_id, flashcard_id, rating, reviewed_at, state,"
            " stability, difficulty, elapsed_days, scheduled_days, due) "
            "SELECT %s, cards.a[1 + g %% 500], 1 + g %% 4, now() - g * interval '1 minute', 2,"
            " 3.5, 5.0, 1, 3, now() + interval '3 days' "
            "FROM generate_series(1, %s) g "
            "CROSS JOIN (SELECT array_agg(id) AS a FROM flashcards) cards", (sid, rows))
        conn.execute("ANALYZE flashcard_reviews")
        ids = [r[0] for r in conn.execute(
            "SELECT id FROM flashcard_reviews TABLESAMPLE SYSTEM (2)").fetchall()]
        card = conn.execute("SELECT id FROM flashcards LIMIT 1").fetchone()[0]
    return [sid, card, ids]


@dataclass
class Writers:
    """Concurrent writers with the migration's lock_timeout: a write that waits longer for a
    lock fails with lock_not_available, and is counted."""

    profile: object
    database: str
    student: object
    card: object
    ids: list
    stop: threading.Event = field(default_factory=threading.Event)
    durations: list = field(default_factory=list)  # (finished_at, seconds)
    lock_timeouts: int = 0
    errors: list = field(default_factory=list)

    def run(self, seed: int) -> None:
        rng = random.Random(seed)
        with connect_as(self.profile, "app", self.database) as conn:
            conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    if rng.random() < 0.5:
                        conn.execute(
                            "INSERT INTO flashcard_reviews (student_id, flashcard_id, rating, "
                            "reviewed_at, state, stability, difficulty, elapsed_days, "
                            "scheduled_days, due) VALUES (%s, %s, 3, now(), 2, 4, 5, 1, 4, "
                            "now() + interval '4 days')", (self.student, self.card))
                    else:
                        conn.execute("UPDATE flashcard_reviews SET review_duration_ms = %s "
                                     "WHERE id = %s", (rng.randint(500, 9000), rng.choice(self.ids)))
                except psycopg.errors.LockNotAvailable:
                    self.lock_timeouts += 1
                except Exception as exc:  # anything else is a test failure
                    self.errors.append(repr(exc))
                    return
                now = time.monotonic()
                self.durations.append((now, now - started))
                time.sleep(0.002)

    def __enter__(self):
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True)
                        for i in range(3)]
        for t in self.threads:
            t.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def during(self, start: float, end: float) -> list[float]:
        return [d for at, d in self.durations if start <= at <= end]


@pytest.mark.slow
def test_batched_backfill_keeps_concurrent_writes_flowing(profile, fresh_db, tmp_path):
    down = migrate.script_directory().get_revision(M01).down_revision
    migrate.upgrade(profile, down, database=fresh_db)
    student, card, ids = fill_flashcard_reviews(profile, fresh_db, ROWS)

    # The worked example, m01: expand, batched backfill, CHECK NOT VALID → VALIDATE → NOT NULL.
    with Writers(profile, fresh_db, student, card, ids) as writers:
        start = time.monotonic()
        result = migrate.upgrade(profile, M01, database=fresh_db, lock_timeout=LOCK_TIMEOUT,
                                 retries=3, backoff_s=0.2)
        end = time.monotonic()
    waits = writers.during(start, end)
    assert writers.errors == []
    assert len(waits) > 50, "the writers did not run while the migration did"
    assert writers.lock_timeouts == 0, (
        f"{writers.lock_timeouts} write(s) waited longer than {LOCK_TIMEOUT} for a lock")
    assert max(waits) < 1.0, f"slowest write {max(waits):.3f} s"
    assert result.to_revisions == [M01]
    (note,) = [n for n in result.notes if n.startswith("backfilled")]
    assert int(note.split()[1]) >= ROWS, note  # plus rows inserted before the default existed
    with connect_as(profile, "app", fresh_db) as conn:
        nulls, same = conn.execute(
            "SELECT count(*) FILTER (WHERE recorded_at IS NULL), "
            "count(*) FILTER (WHERE recorded_at = reviewed_at) FROM flashcard_reviews").fetchone()
        not_null = conn.execute("SELECT attnotnull FROM pg_attribute WHERE attrelid = "
                                "'flashcard_reviews'::regclass AND attname = 'recorded_at'"
                                ).fetchone()[0]
    assert nulls == 0 and same >= ROWS and not_null
    batched = (len(waits), max(waits), end - start)

    # Control: the naive migration on the same table and the same writers.
    migrate.downgrade(profile, down, database=fresh_db, retries=3)
    versions = tmp_path / "versions"
    naive = write_example(versions, '''
        op.add_column("flashcard_reviews", sa.Column("recorded_at", sa.DateTime(timezone=True),
                      server_default=sa.text("now()")))
        op.execute("UPDATE flashcard_reviews SET recorded_at = reviewed_at")
        op.alter_column("flashcard_reviews", "recorded_at", nullable=False)
    ''', down=down)
    with Writers(profile, fresh_db, student, card, ids) as writers:
        start = time.monotonic()
        migrate.upgrade(profile, naive, database=fresh_db, lock_timeout=LOCK_TIMEOUT,
                        retries=3, backoff_s=0.2, extra_versions=[versions],
                        unsafe_reason="the naive control: blocking the writers is the point")
        end = time.monotonic()
    assert writers.errors == []
    print(f"batched: {batched[0]} writes, slowest {batched[1]:.3f} s, migration "
          f"{batched[2]:.1f} s; naive: {writers.lock_timeouts} lock timeouts, migration "
          f"{end - start:.1f} s")
    assert writers.lock_timeouts > 0, (
        "the naive one-transaction migration should have made writers wait past the "
        f"lock_timeout (batched run: {batched})")
