-- When this database's pg_stat_statements counters were last stored.
SELECT max(captured_at) FROM ops.statement_snapshots WHERE database = current_database();
