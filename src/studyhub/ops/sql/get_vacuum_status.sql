-- Dead rows and changes since the last analyze for each table, with the last (auto)vacuum and
-- (auto)analyze times.
SELECT
    schemaname                                  AS schema,
    relname                                     AS table,
    n_live_tup                                  AS live_rows,
    n_dead_tup                                  AS dead_rows,
    n_mod_since_analyze                         AS modified_since_analyze,
    greatest(last_vacuum, last_autovacuum)      AS last_vacuum,
    greatest(last_analyze, last_autoanalyze)    AS last_analyze
FROM pg_stat_user_tables
ORDER BY n_dead_tup DESC;
