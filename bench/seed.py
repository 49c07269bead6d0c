"""Seeder throughput against an in-server baseline, measured in the same run.

    uv run python bench/seed.py [--rows 2000000] [--home /tmp/studyhub-bench]

Starts (or reuses) a local cluster under its own STUDYHUB_HOME, creates two fresh databases at
the migrations' head, then

* ours: ``studyhub.ops.seed.seed_database`` seeds enough students for ``--rows`` rows;
* baseline: one transaction of ``INSERT … SELECT … FROM generate_series(…)`` per table, with
  every key, index and foreign key in place, producing the same number of rows per table with
  the same texts (sampled from our notes, cards and AI exchanges, so sizes and compression
  match) and random-looking UUID keys (md5), then ANALYZE.

Both are timed from the first statement to COMMIT, after a CHECKPOINT. Prints rows, seconds and
rows/s of both and their ratio. The cluster is left running for the next run; remove it with
``STUDYHUB_HOME=<home> uv run studyhub local destroy --yes``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from common import bench_home  # bench/common.py (scripts run from bench/)

DEFAULT_HOME = "/tmp/studyhub-bench"
ROWS_PER_STUDENT_FLOOR = 250  # a seeded student brings ~255 rows; aim a little high

BASELINE_SQL = {
    "subjects": """
        INSERT INTO subjects (code, name, created_at)
        SELECT 'S' || i, 'Subject ' || i, now() FROM generate_series(1, %(n)s) i""",
    "users": """
        INSERT INTO users (id, email, password_hash, is_active, created_at, updated_at,
                           last_login_at)
        SELECT md5('u' || i)::uuid, 'user.' || i || '@example.org',
               '$argon2id$v=19$m=65536,t=3,p=4$' || substr(md5('salt' || i), 1, 22) || '$'
                   || md5('hash' || i) || substr(md5('more' || i), 1, 11),
               i %% 30 <> 0, now() - (i %% 500) * interval '1 day', now(),
               now() - (i %% 30) * interval '1 day'
        FROM generate_series(0, %(n)s - 1) i""",
    "students": """
        INSERT INTO students (id, user_id, full_name, date_of_birth, school, year_group,
                              timezone, created_at)
        SELECT md5('s' || i)::uuid, md5('u' || i)::uuid, 'Student Number ' || i,
               date '2010-09-01' + (i %% 2500), 'School ' || (i %% 400) || ' Academy',
               7 + i %% 7, 'Europe/London', now()
        FROM generate_series(0, %(n)s - 1) i""",
    "student_subjects": """
        INSERT INTO student_subjects (student_id, subject_id, enrolled_at, target_grade)
        SELECT md5('s' || (i %% %(students)s))::uuid,
               (%(subjects)s::uuid[])[1 + (i / %(students)s) %% 20], now(), '7'
        FROM generate_series(0, %(n)s - 1) i""",
    "notes": """
        INSERT INTO notes (id, student_id, subject_id, title, body, created_at, updated_at)
        SELECT md5('n' || i)::uuid, md5('s' || (i %% %(students)s))::uuid,
               (%(subjects)s::uuid[])[1 + i %% 20], 'Note ' || i || ': summary',
               (%(bodies)s::text[])[1 + i %% cardinality(%(bodies)s::text[])], now(), now()
        FROM generate_series(0, %(n)s - 1) i""",
    "revision_sessions": """
        INSERT INTO revision_sessions (id, student_id, subject_id, started_at, ended_at,
                                       cards_reviewed)
        SELECT md5('r' || i)::uuid, md5('s' || (i %% %(students)s))::uuid,
               (%(subjects)s::uuid[])[1 + i %% 20], now() - interval '40 minutes', now(), 15
        FROM generate_series(0, %(n)s - 1) i""",
    "flashcards": """
        INSERT INTO flashcards (id, student_id, subject_id, note_id, front, back, state, step,
                                stability, difficulty, due, last_review, reps, lapses,
                                created_at, updated_at)
        SELECT md5('c' || i)::uuid, md5('s' || (i %% %(students)s))::uuid,
               (%(subjects)s::uuid[])[1 + i %% 20], md5('n' || (i %% %(notes)s))::uuid,
               (%(fronts)s::text[])[1 + i %% cardinality(%(fronts)s::text[])],
               (%(backs)s::text[])[1 + i %% cardinality(%(backs)s::text[])],
               2, NULL, 0.5 + (i %% 97), 1 + (i %% 9), now() + (i %% 40) * interval '1 day',
               now(), 3, i %% 2, now(), now()
        FROM generate_series(0, %(n)s - 1) i""",
    "flashcard_reviews": """
        INSERT INTO flashcard_reviews (id, student_id, flashcard_id, revision_session_id,
                                       rating, reviewed_at, state, stability, difficulty,
                                       elapsed_days, scheduled_days, due, review_duration_ms)
        SELECT md5('v' || i)::uuid, md5('s' || ((i %% %(cards)s) %% %(students)s))::uuid,
               md5('c' || (i %% %(cards)s))::uuid, md5('r' || (i %% %(sessions)s))::uuid,
               1 + i %% 4, now() - (i %% 300) * interval '1 hour', 2, 0.5 + (i %% 97),
               1 + (i %% 9), (i %% 13) / 3.0, (i %% 29) / 2.0, now() + interval '3 days',
               2000 + i %% 20000
        FROM generate_series(0, %(n)s - 1) i""",
    "ai_interactions": """
        INSERT INTO ai_interactions (id, student_id, subject_id, note_id, model, prompt,
                                     response, prompt_tokens, completion_tokens, latency_ms,
                                     created_at)
        SELECT md5('a' || i)::uuid, md5('s' || (i %% %(students)s))::uuid,
               (%(subjects)s::uuid[])[1 + i %% 20],
               CASE WHEN i %% 2 = 0 THEN md5('n' || (i %% %(notes)s))::uuid END,
               'gpt-4o-mini-2024-07-18',
               (%(prompts)s::text[])[1 + i %% cardinality(%(prompts)s::text[])],
               (%(responses)s::text[])[1 + i %% cardinality(%(responses)s::text[])],
               300 + i %% 400, 100 + i %% 200, 800 + i %% 3000, now()
        FROM generate_series(0, %(n)s - 1) i""",
}


def sample_texts(conn) -> dict[str, list[str]]:
    """Texts as our seeder writes them, so the baseline stores the same sizes. A hundred of
    each: the baseline indexes into arrays of them, and finding element n of a text array
    walks the n before it, which must not slow the baseline down."""

    def column(sql: str) -> list[str]:
        return [r[0] for r in conn.execute(sql)]

    return {
        "bodies": column("SELECT body FROM notes ORDER BY id LIMIT 100"),
        "fronts": column("SELECT front FROM flashcards ORDER BY id LIMIT 100"),
        "backs": column("SELECT back FROM flashcards ORDER BY id LIMIT 100"),
        "prompts": column("SELECT prompt FROM ai_interactions ORDER BY id LIMIT 100"),
        "responses": column("SELECT response FROM ai_interactions ORDER BY id LIMIT 100"),
    }


def run_baseline(conn, rows: dict[str, int], texts: dict[str, list[str]]) -> float:
    """The same rows per table, INSERT … SELECT with everything in place; seconds to COMMIT."""
    started = time.perf_counter()
    with conn.transaction():
        conn.execute(BASELINE_SQL["subjects"], {"n": rows["subjects"]})
        subjects = [r[0] for r in conn.execute("SELECT id FROM subjects ORDER BY code")]
        params = {"students": rows["students"], "notes": rows["notes"],
                  "cards": rows["flashcards"], "sessions": rows["revision_sessions"],
                  "subjects": subjects, **texts}
        for table, statement in BASELINE_SQL.items():
            if table != "subjects":
                conn.execute(statement, {**params, "n": rows[table]})
        conn.execute("ANALYZE subjects, users, students, student_subjects, notes, "
                     "revision_sessions, flashcards, flashcard_reviews, ai_interactions")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000, help="at least this many rows")
    parser.add_argument("--home", default=DEFAULT_HOME, help="STUDYHUB_HOME of the bench cluster")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep-databases", action="store_true",
                        help="leave the two databases for inspection")
    args = parser.parse_args()

    home = bench_home(args.home)

    from studyhub.connect import connect
    from studyhub.local import LocalCluster
    from studyhub.ops import migrate
    from studyhub.ops.seed import seed_database

    cluster = LocalCluster(home)
    cluster.up()
    profile = cluster.profile()
    ours_db, baseline_db = "bench_seed_ours", "bench_seed_baseline"
    for db in (ours_db, baseline_db):
        cluster.drop_database(db)
        cluster.create_database(db)
        migrate.upgrade(profile, database=db)

    def checkpoint() -> None:
        with cluster.admin_connect() as admin:
            admin.execute("CHECKPOINT")

    students = math.ceil(args.rows / ROWS_PER_STUDENT_FLOOR)
    print(f"cluster {home} · {os.cpu_count()} cores · {students:,} students for "
          f"{args.rows:,}+ rows", flush=True)

    checkpoint()
    started = time.perf_counter()
    result = seed_database(profile, students=students, seed=args.seed, database=ours_db)
    ours_s = time.perf_counter() - started
    ours_rows = result.total_rows

    with connect(profile, "app", database=ours_db) as conn:
        texts = sample_texts(conn)
    checkpoint()
    with connect(profile, "app", database=baseline_db, autocommit=True) as conn:
        baseline_s = run_baseline(conn, result.rows, texts)
        baseline_rows = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                            for t in result.rows)

    print()
    print(f"{'table':<20}{'rows (both)':>14}")
    for table, n in result.rows.items():
        print(f"{table:<20}{n:>14,}")
    print()
    print(f"{'':<34}{'rows':>12}{'seconds':>10}{'rows/s':>12}")
    print(f"{'ours (binary COPY, rebuild)':<34}{ours_rows:>12,}{ours_s:>10.1f}"
          f"{ours_rows / ours_s:>12,.0f}")
    print(f"{'baseline (INSERT … SELECT)':<34}{baseline_rows:>12,}{baseline_s:>10.1f}"
          f"{baseline_rows / baseline_s:>12,.0f}")
    ratio = (ours_rows / ours_s) / (baseline_rows / baseline_s)
    print(f"ratio ours/baseline: {ratio:.2f}x")
    phases = ", ".join(f"{k} {v:.1f}s" for k, v in result.phase_s.items())
    print(f"ours by phase: {phases}")
    if ours_rows < args.rows:
        print(f"warning: seeded {ours_rows:,} rows, fewer than --rows {args.rows:,}",
              file=sys.stderr)

    if not args.keep_databases:
        for db in (ours_db, baseline_db):
            cluster.drop_database(db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
