-- End every other session connected to a database (before renaming it: a database in use
-- cannot be renamed).
SELECT pg_terminate_backend(pid)
FROM pg_stat_activity
WHERE datname = %(name)s AND pid <> pg_backend_pid();
