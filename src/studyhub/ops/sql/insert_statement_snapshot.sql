-- Record the current pg_stat_statements counters of this database (the costliest statements,
-- normalized text only) in ops.statement_snapshots.
INSERT INTO ops.statement_snapshots (captured_at, database, role, queryid, stats_reset, query,
    calls, total_exec_ms, rows, shared_blks_hit, shared_blks_read, blk_read_ms, blk_write_ms)
VALUES (%(captured_at)s, %(database)s, %(role)s, %(queryid)s, %(stats_reset)s, %(query)s,
    %(calls)s, %(total_exec_ms)s, %(rows)s, %(shared_blks_hit)s, %(shared_blks_read)s,
    %(blk_read_ms)s, %(blk_write_ms)s)
ON CONFLICT DO NOTHING;
