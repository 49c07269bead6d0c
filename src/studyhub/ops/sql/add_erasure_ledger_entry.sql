-- Record an erased person (ids only); recording the same person twice keeps the first entry.
INSERT INTO ops.erasure_ledger (user_id, student_id, pseudonym, erased_at, rows_deleted)
VALUES (%(user_id)s, %(student_id)s, %(pseudonym)s, %(erased_at)s, %(rows_deleted)s)
ON CONFLICT (user_id) DO NOTHING;
