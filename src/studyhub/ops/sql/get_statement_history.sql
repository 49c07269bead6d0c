-- Stored snapshots of the statements of database %(database)s (this one) whose queryid is in
-- %(queryids)s, taken at or after %(start)s (the window's baseline snapshot), oldest first.
-- Served by ix_statement_snapshots_database_queryid_captured_at: the database is a value, not
-- current_database(), so the planner can match the index.
SELECT captured_at, role, queryid, stats_reset, query, calls, total_exec_ms, rows,
       shared_blks_hit, shared_blks_read, blk_read_ms, blk_write_ms
FROM ops.statement_snapshots
WHERE database = %(database)s
  AND queryid = ANY (%(queryids)s::bigint[])
  AND captured_at >= %(start)s
ORDER BY captured_at;
