-- Tables read mostly by sequential scans: scans, rows they read, index scans, live rows.
SELECT
    schemaname                                   AS schema,
    relname                                      AS table,
    seq_scan,
    seq_tup_read,
    coalesce(idx_scan, 0)                        AS idx_scan,
    n_live_tup                                   AS live_rows,
    pg_relation_size(relid)                      AS table_bytes
FROM pg_stat_user_tables
WHERE seq_scan > 0
ORDER BY seq_tup_read DESC;
