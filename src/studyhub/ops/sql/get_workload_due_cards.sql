-- Rehearsal workload, shaped like GET /flashcards/due: a student's cards due now, most
-- overdue first.
SELECT id, subject_id, front, back, state, due
FROM flashcards
WHERE student_id = %(student_id)s AND due <= now()
ORDER BY due
LIMIT 20;
