-- Size of every table in the app's schemas: heap, indexes, TOAST and the planner's row estimate.
SELECT
    n.nspname                                   AS schema,
    c.relname                                   AS table,
    greatest(c.reltuples, 0)::bigint            AS row_estimate,
    pg_total_relation_size(c.oid)               AS total_bytes,
    pg_relation_size(c.oid)                     AS heap_bytes,
    pg_indexes_size(c.oid)                      AS index_bytes,
    coalesce(pg_total_relation_size(c.reltoastrelid), 0) AS toast_bytes
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY pg_total_relation_size(c.oid) DESC;
