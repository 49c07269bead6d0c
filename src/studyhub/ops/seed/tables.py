"""What the seeder loads: the dataset's clock, the tables in load order with their columns in
COPY order, and how many rows a student brings (the progress bars' totals)."""

from __future__ import annotations

from datetime import datetime, timezone

# ----------------------------------------------------------------------------- the clock
# The dataset's "now": every timestamp lies before it (only due dates run past it).
DATASET_NOW = datetime(2026, 11, 1, 6, 0, tzinfo=timezone.utc)
# UK school years start on 1 September; year groups and birth dates follow from this one.
SCHOOL_YEAR_START = DATASET_NOW.year if DATASET_NOW.month >= 9 else DATASET_NOW.year - 1

# ------------------------------------------------------------------- table layouts
# COPY column order per table (fixed per-history FSRS values last, so they are one piece).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "users": ("id", "email", "password_hash", "is_active", "created_at", "updated_at",
              "last_login_at"),
    "students": ("id", "user_id", "full_name", "date_of_birth", "school", "year_group",
                 "timezone", "created_at"),
    "student_subjects": ("student_id", "subject_id", "enrolled_at", "target_grade"),
    "notes": ("id", "student_id", "subject_id", "title", "body", "created_at", "updated_at"),
    "revision_sessions": ("id", "student_id", "subject_id", "started_at", "ended_at",
                          "cards_reviewed"),
    "flashcards": ("id", "student_id", "subject_id", "note_id", "front", "back", "due",
                   "last_review", "created_at", "updated_at", "state", "step", "stability",
                   "difficulty", "reps", "lapses"),
    "flashcard_reviews": ("id", "student_id", "flashcard_id", "revision_session_id",
                          "reviewed_at", "recorded_at", "due", "review_duration_ms", "rating",
                          "state", "stability", "difficulty", "elapsed_days", "scheduled_days"),
    "ai_interactions": ("id", "student_id", "subject_id", "note_id", "model", "prompt",
                        "response", "created_at", "prompt_tokens", "completion_tokens",
                        "latency_ms"),
}
SEEDED_TABLES: tuple[str, ...] = tuple(TABLE_COLUMNS)  # parents before children

# Per ordinary student, on average (the CLI's progress bars use these as totals).
MEAN_ROWS_PER_STUDENT: dict[str, float] = {
    "users": 1, "students": 1, "student_subjects": 3.5, "notes": 20, "revision_sessions": 10,
    "flashcards": 60, "flashcard_reviews": 150, "ai_interactions": 10,
}
HEAVY_MIN_FLASHCARDS = 10_000
HEAVY_MIN_REVIEWS = 100_000
HEAVY_ROWS_ESTIMATE: dict[str, int] = {
    "users": 1, "students": 1, "student_subjects": 5, "notes": 600, "revision_sessions": 7_000,
    "flashcards": 10_000, "flashcard_reviews": 108_000, "ai_interactions": 300,
}
