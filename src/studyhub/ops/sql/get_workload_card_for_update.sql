-- Rehearsal workload, shaped like POST /flashcards/{id}/review: lock the card being reviewed.
SELECT state, stability, difficulty, due, reps
FROM flashcards
WHERE id = %(card_id)s AND student_id = %(student_id)s
FOR UPDATE;
