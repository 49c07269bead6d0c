-- Snapshots of this database from the last one taken at or before %(since)s onwards (the
-- baseline), oldest first.
SELECT captured_at, role, queryid, stats_reset, query, calls, total_exec_ms, rows,
       shared_blks_hit, shared_blks_read, blk_read_ms, blk_write_ms
FROM ops.statement_snapshots
WHERE database = current_database()
  AND captured_at >= coalesce(
        (SELECT max(captured_at) FROM ops.statement_snapshots
         WHERE database = current_database() AND captured_at <= %(since)s),
        %(since)s)
ORDER BY captured_at;
