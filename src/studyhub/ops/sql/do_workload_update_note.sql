-- Rehearsal workload, shaped like PATCH /notes/{id}: a note edited (same text, new timestamp).
UPDATE notes SET body = body, updated_at = now()
WHERE id = %(note_id)s AND student_id = %(student_id)s;
