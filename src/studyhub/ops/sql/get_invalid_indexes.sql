-- Invalid indexes (a failed or cancelled CREATE INDEX CONCURRENTLY leaves one: never used by
-- queries, still maintained on every write), and whether some session is building it now.
SELECT
    n.nspname                       AS schema,
    c.relname                       AS index,
    t.relname                       AS table,
    EXISTS (SELECT 1 FROM pg_stat_progress_create_index p
             WHERE p.index_relid = c.oid) AS being_built
FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY 1, 2;
