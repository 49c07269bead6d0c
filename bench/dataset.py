"""A production-shaped data set generated inside the server, for benchmarks when the seeder
(`studyhub seed`) is not available. Per student: 5 enrolments, 20 notes (~1.5 kB of words),
60 flashcards, 150 reviews, 20 revision sessions, 10 AI-tutor exchanges: 20,000 students give
about 5.3M rows and ~1.5 GB, the shape the runbook describes. Deterministic (setseed)."""

from __future__ import annotations

import psycopg

VOCAB = 4000

STATEMENTS = [
    "SELECT setseed(0.42)",
    # a vocabulary of pseudo-words, so text compresses like prose (not like repeat())
    f"""CREATE TEMP TABLE vocab AS
        SELECT i, substr(translate(md5(i::text), '0123456789', 'aeioulnrst'), 1, 3 + i % 7) AS w
        FROM generate_series(1, {VOCAB}) i""",
    "CREATE UNIQUE INDEX ON vocab (i)",
    "ANALYZE vocab",
    f"""CREATE TEMP TABLE para AS
        SELECT p, (SELECT string_agg(w, ' ' ORDER BY k) FROM
                    (SELECT k, (SELECT w FROM vocab WHERE i = 1 + (abs(hashint4(p * 1000 + k))
                     % {VOCAB})) AS w FROM generate_series(1, 40) k) s) AS txt
        FROM generate_series(1, 5000) p""",
    "CREATE UNIQUE INDEX ON para (p)",
    "ANALYZE para",
    """INSERT INTO subjects (code, name)
        SELECT 'S' || g, 'Subject ' || g FROM generate_series(1, 40) g""",
    """INSERT INTO users (email, password_hash, created_at)
        SELECT 'student' || g || '@example.org', '$argon2id$' || md5(g::text),
               now() - (g % 700) * interval '1 day'
        FROM generate_series(1, %(students)s) g""",
    """INSERT INTO students (user_id, full_name, date_of_birth, school, year_group, created_at)
        SELECT id, 'Student ' || substr(email, 8, 6) || ' Ünïcødé', date '2008-01-01' + (hashtext(email) % 900),
               'School ' || (abs(hashtext(email)) % 300), 1 + abs(hashtext(email)) % 13, created_at
        FROM users""",
    """CREATE TEMP TABLE subj AS SELECT row_number() OVER (ORDER BY code) AS n, id FROM subjects""",
    """INSERT INTO student_subjects (student_id, subject_id, target_grade)
        SELECT s.id, subj.id, 'A'
        FROM students s CROSS JOIN generate_series(0, 4) k
        JOIN subj ON subj.n = 1 + (abs(hashtext(s.id::text)) + k * 7) % 40""",
    """INSERT INTO notes (student_id, subject_id, title, body)
        SELECT s.id, subj.id, 'Note ' || k,
               (SELECT string_agg(txt, E'\\n' ) FROM para
                WHERE p IN (1 + abs(hashint4(k * 31 + hashtext(s.id::text))) % 5000,
                            1 + abs(hashint4(k * 37 + hashtext(s.id::text))) % 5000,
                            1 + abs(hashint4(k * 41 + hashtext(s.id::text))) % 5000,
                            1 + abs(hashint4(k * 43 + hashtext(s.id::text))) % 5000,
                            1 + abs(hashint4(k * 47 + hashtext(s.id::text))) % 5000,
                            1 + abs(hashint4(k * 53 + hashtext(s.id::text))) % 5000))
        FROM students s CROSS JOIN generate_series(1, 20) k
        JOIN subj ON subj.n = 1 + (abs(hashtext(s.id::text)) + (k % 5) * 7) % 40""",
    "ANALYZE notes",
    """INSERT INTO flashcards (student_id, subject_id, note_id, front, back, state, step,
                               stability, difficulty, due, last_review, reps, lapses)
        SELECT n.student_id, n.subject_id, n.id,
               substr(n.body, 1 + k * 50, 60 + k * 5) || '?', substr(n.body, 400 + k * 90, 120),
               1 + k % 3, 0, 1.5 + k, 1 + (k % 9), now() + k * interval '1 day',
               now() - k * interval '1 day', k, 0
        FROM notes n CROSS JOIN generate_series(1, 3) k""",
    "ANALYZE flashcards",
    """INSERT INTO revision_sessions (student_id, subject_id, started_at, ended_at, cards_reviewed)
        SELECT s.id, NULL, now() - k * interval '1 day', now() - k * interval '1 day'
               + interval '20 minutes', 8
        FROM students s CROSS JOIN generate_series(1, 20) k""",
    """INSERT INTO flashcard_reviews (student_id, flashcard_id, revision_session_id, rating,
               reviewed_at, state, stability, difficulty, elapsed_days, scheduled_days, due,
               review_duration_ms)
        SELECT f.student_id, f.id, NULL::uuid, 1 + k % 4, now() - (k * 3) * interval '1 day',
               2, 2.5 * k, 5.0 + k / 10.0, k, k * 2, now() + k * interval '1 day', 3000 + k * 17
        FROM flashcards f CROSS JOIN generate_series(1, 2) k
        UNION ALL
        SELECT f.student_id, f.id, NULL::uuid, 3, now() - interval '1 hour', 2, 3.1, 4.2, 1, 3, now(), NULL::int
        FROM flashcards f WHERE f.reps = 3""",
    """INSERT INTO ai_interactions (student_id, subject_id, note_id, model, prompt, response,
               prompt_tokens, completion_tokens, latency_ms)
        SELECT s.id, NULL, NULL, 'tutor-1', left(p1.txt, 200), p2.txt || ' ' || p1.txt, 50, 300, 900
        FROM students s CROSS JOIN generate_series(1, 10) k
        JOIN para p1 ON p1.p = 1 + abs(hashtext(s.id::text) + k) % 5000
        JOIN para p2 ON p2.p = 1 + abs(hashtext(s.id::text) + k * 7) % 5000""",
    "ANALYZE",
]


def generate(conn: psycopg.Connection, students: int) -> None:
    """Fill an empty, migrated app database with ``students`` students' worth of data (one
    statement at a time, committed, so the planner sees each table's statistics)."""
    for stmt in STATEMENTS:
        conn.execute(stmt.replace("%(students)s", str(int(students))))
        conn.commit()
