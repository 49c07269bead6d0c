-- Stored snapshots of this database's statements (all, or those whose queryid is in
-- %(queryids)s) from the last snapshot taken at or before %(since)s onwards, oldest first.
SELECT captured_at, role, queryid, stats_reset, query, calls, total_exec_ms, rows,
       shared_blks_hit, shared_blks_read, blk_read_ms, blk_write_ms
FROM ops.statement_snapshots
WHERE database = current_database()
  AND (%(queryids)s::bigint[] IS NULL OR queryid = ANY (%(queryids)s::bigint[]))
  AND captured_at >= coalesce(
        (SELECT max(captured_at) FROM ops.statement_snapshots
         WHERE database = current_database() AND captured_at <= %(since)s),
        %(since)s)
ORDER BY captured_at;
