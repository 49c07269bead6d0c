-- Rehearsal workload, shaped like POST /flashcards/{id}/review: the card's new schedule.
UPDATE flashcards
SET reps = reps + 1, last_review = now(), due = now() + interval '1 day', updated_at = now()
WHERE id = %(card_id)s AND student_id = %(student_id)s;
