-- For each b-tree index: its pages, the planner's tuple count and the width of its key
-- columns (attlen -1 = variable width), to estimate bloat without reading the index.
SELECT
    n.nspname                                    AS schema,
    t.relname                                    AS table,
    i.relname                                    AS index,
    i.relpages                                   AS pages,
    greatest(i.reltuples, 0)::bigint             AS tuples,
    current_setting('block_size')::int           AS block_size,
    coalesce((SELECT (regexp_match(array_to_string(i.reloptions, ','), 'fillfactor=(\d+)'))[1]::int), 90) AS fillfactor,
    ARRAY(SELECT a.attlen FROM pg_attribute a WHERE a.attrelid = i.oid AND a.attnum > 0
          ORDER BY a.attnum)                     AS key_lengths,
    ARRAY(SELECT a.attalign::text FROM pg_attribute a WHERE a.attrelid = i.oid AND a.attnum > 0
          ORDER BY a.attnum)                     AS key_aligns
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
JOIN pg_am am ON am.oid = i.relam
WHERE am.amname = 'btree' AND x.indisvalid
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
ORDER BY i.relpages DESC;
