-- Rehearsal workload, shaped like POST /flashcards/{id}/review: the review recorded.
INSERT INTO flashcard_reviews (student_id, flashcard_id, rating, reviewed_at, state, stability,
                               difficulty, elapsed_days, scheduled_days, due)
VALUES (%(student_id)s, %(card_id)s, 3, now(), 2, 4, 5, 1, 1, now() + interval '1 day');
