-- For each foreign key, the valid indexes whose leading columns are the key's columns (in any
-- order): an index that is the only one for some key keeps that key's lookups fast.
SELECT
    k.conname                                   AS constraint,
    n.nspname                                   AS schema,
    ARRAY(SELECT i.relname::text
          FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
          WHERE x.indrelid = k.conrelid AND x.indisvalid AND x.indpred IS NULL
            AND (SELECT array_agg(v ORDER BY v) FROM unnest(k.conkey) v)
              = (SELECT array_agg(v ORDER BY v)
                 FROM unnest((string_to_array(x.indkey::text, ' ')::int2[])[1:cardinality(k.conkey)]) v)
    )                                           AS indexes
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE k.contype = 'f';
