-- Existing notes (id, owner) for the rehearsal's synthetic app workload: a sample of about
-- %(percent)s percent of the table's pages.
SELECT id, student_id FROM notes TABLESAMPLE SYSTEM (%(percent)s) LIMIT 2000;
