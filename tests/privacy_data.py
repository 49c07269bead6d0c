"""Small, deterministic people for the privacy tests: every personal table gets rows, sized per
person, with cross-links (cards from notes, reviews in sessions, AI logs about notes)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import psycopg

SUBJECTS = [("MATH", "Mathematics"), ("BIO", "Biology"), ("HIST", "History")]


@dataclass(frozen=True)
class SamplePerson:
    user_id: UUID
    student_id: UUID
    email: str
    full_name: str
    note_marker: str  # appears in this person's note bodies, prompts and card sides only


def add_person(conn: psycopg.Connection, n: int, size: int = 2) -> SamplePerson:
    """Person number ``n`` with ``size`` notes, 2*size cards (3 reviews each), sessions, AI logs."""
    email = f"ada.person{n}@example.org"
    name = f"Ada Person{n} Lovelace"
    marker = f"secret-note-text-{n}"
    conn.execute("INSERT INTO subjects (code, name) VALUES " +
                 ", ".join("(%s, %s)" for _ in SUBJECTS) + " ON CONFLICT DO NOTHING",
                 [v for pair in SUBJECTS for v in pair])
    uid = conn.execute("INSERT INTO users (email, password_hash) VALUES (%s, %s) RETURNING id",
                       (email, f"scrypt$hash-of-person-{n}")).fetchone()[0]
    sid = conn.execute(
        "INSERT INTO students (user_id, full_name, date_of_birth, school, year_group) "
        "VALUES (%s, %s, '2008-03-14', 'Northfield Academy', 11) RETURNING id",
        (uid, name)).fetchone()[0]
    conn.execute("INSERT INTO student_subjects (student_id, subject_id, target_grade) "
                 "SELECT %s, id, 'A' FROM subjects WHERE code IN ('MATH', 'BIO')", (sid,))
    conn.execute(
        "INSERT INTO notes (student_id, subject_id, title, body) "
        "SELECT %s, (SELECT id FROM subjects WHERE code = 'MATH'), 'Note ' || g, "
        "       %s || ' body ' || g FROM generate_series(1, %s) g", (sid, marker, size))
    conn.execute(
        "INSERT INTO revision_sessions (student_id, subject_id, started_at, ended_at, "
        "cards_reviewed) SELECT %s, (SELECT id FROM subjects WHERE code = 'MATH'), "
        "now() - interval '2 days', now() - interval '2 days' + interval '20 minutes', 6 "
        "FROM generate_series(1, %s)", (sid, max(1, size // 2)))
    conn.execute(
        "INSERT INTO flashcards (student_id, subject_id, note_id, front, back, state, stability, "
        "difficulty, reps, lapses, last_review) "
        "SELECT %s, n.subject_id, n.id, 'Q ' || %s || ' ' || g, 'A ' || g, 2, 3.5, 5.0, 3, 0, "
        "       now() - interval '1 day' "
        "FROM notes n CROSS JOIN generate_series(1, 2) g WHERE n.student_id = %s",
        (sid, marker, sid))
    conn.execute(
        "INSERT INTO flashcard_reviews (student_id, flashcard_id, revision_session_id, rating, "
        "reviewed_at, state, stability, difficulty, elapsed_days, scheduled_days, due, "
        "review_duration_ms) "
        "SELECT f.student_id, f.id, (SELECT id FROM revision_sessions r WHERE r.student_id = "
        "f.student_id ORDER BY id LIMIT 1), 1 + g %% 4, now() - g * interval '1 day', 2, 3.5, "
        "5.0, g, g + 1, now() + interval '3 days', 4200 "
        "FROM flashcards f CROSS JOIN generate_series(1, 3) g WHERE f.student_id = %s", (sid,))
    conn.execute(
        "INSERT INTO ai_interactions (student_id, subject_id, note_id, model, prompt, response, "
        "prompt_tokens, completion_tokens, latency_ms) "
        "SELECT n.student_id, n.subject_id, n.id, 'tutor-1', 'Explain ' || %s, 'Because...', "
        "       120, 300, 850 FROM notes n WHERE n.student_id = %s", (marker, sid))
    return SamplePerson(uid, sid, email, name, marker)
