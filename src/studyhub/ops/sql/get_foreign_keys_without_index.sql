-- Foreign keys whose columns are not the leading columns (in any order) of a valid index on the
-- referencing table: every delete or key update on the referenced table scans this table.
SELECT
    n.nspname                                   AS schema,
    c.relname                                   AS table,
    k.conname                                   AS constraint,
    ARRAY(SELECT a.attname::text FROM unnest(k.conkey) WITH ORDINALITY u(attnum, ord)
          JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum
          ORDER BY u.ord)                       AS columns,
    k.confrelid::regclass::text                 AS referenced_table,
    pg_relation_size(c.oid)                     AS table_bytes
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype = 'f'
  AND NOT EXISTS (
      SELECT 1
      FROM pg_index x
      WHERE x.indrelid = k.conrelid
        AND x.indisvalid
        AND x.indpred IS NULL
        AND (SELECT array_agg(v ORDER BY v) FROM unnest(k.conkey) v)
          = (SELECT array_agg(v ORDER BY v)
             FROM unnest((string_to_array(x.indkey::text, ' ')::int2[])[1:cardinality(k.conkey)]) v)
  )
ORDER BY 1, 2, 3;
