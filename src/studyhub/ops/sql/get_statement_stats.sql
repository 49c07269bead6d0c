-- pg_stat_statements counters for this database, one row per (role, normalized statement).
-- Text of other roles' statements needs pg_read_all_stats (pg_monitor has it).
SELECT
    s.queryid,
    coalesce(r.rolname, s.userid::text)           AS role,
    min(s.query)                                  AS query,
    sum(s.calls)::bigint                          AS calls,
    sum(s.total_exec_time)::float8                AS total_exec_ms,
    sum(s.rows)::bigint                           AS rows,
    sum(s.shared_blks_hit)::bigint                AS shared_blks_hit,
    sum(s.shared_blks_read)::bigint               AS shared_blks_read,
    sum(s.blk_read_time)::float8                  AS blk_read_ms,
    sum(s.blk_write_time)::float8                 AS blk_write_ms
FROM pg_stat_statements s
JOIN pg_database d ON d.oid = s.dbid
LEFT JOIN pg_roles r ON r.oid = s.userid
WHERE d.datname = current_database() AND s.queryid IS NOT NULL
GROUP BY s.queryid, 2
ORDER BY sum(s.total_exec_time) DESC;
