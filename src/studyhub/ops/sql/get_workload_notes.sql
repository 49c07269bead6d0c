-- Rehearsal workload, shaped like GET /notes: a student's notes, newest first.
SELECT id, subject_id, title, left(body, 200) AS preview, created_at, updated_at
FROM notes
WHERE student_id = %(student_id)s
ORDER BY created_at DESC, id DESC
LIMIT 20;
