-- Reset pg_stat_statements for this database only (all roles, all statements).
SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0);
