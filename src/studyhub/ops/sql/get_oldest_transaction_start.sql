-- The start of the oldest transaction still open in this database (other sessions than this
-- one, as the role sees them in pg_stat_activity), or now: the review sync feed hands out no
-- row recorded at or after it (rows recorded before it have committed or failed).
SELECT least(statement_timestamp(), min(xact_start))
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid();
