-- Every erased person recorded in this database, oldest first.
SELECT user_id, student_id, pseudonym, erased_at, rows_deleted
FROM ops.erasure_ledger
ORDER BY erased_at, user_id;
