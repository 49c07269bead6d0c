-- The columns a binary COPY of each backed-up table carries, in order: stored columns only
-- (dropped and generated columns are left out, as COPY does without a column list). A format
-- 2 backup set records this list and both its COPY TO and COPY FROM name it, so the binary
-- rows go into the columns they came from.
SELECT n.nspname AS schema, c.relname AS table,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid
WHERE c.relkind = 'r'
  AND a.attnum > 0
  AND NOT a.attisdropped
  AND a.attgenerated = ''
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
GROUP BY n.nspname, c.relname;
