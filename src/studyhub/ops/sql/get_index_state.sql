-- Whether an index exists and is valid and ready (after CREATE INDEX CONCURRENTLY), and what it
-- covers: its table and key columns (NULL for an expression), so a name alone is never trusted.
SELECT x.indisvalid AS is_valid, x.indisready AS is_ready,
       tn.nspname AS table_schema, t.relname AS table_name,
       array(SELECT a.attname::text
             FROM unnest(x.indkey[0:x.indnkeyatts - 1]) WITH ORDINALITY k(attnum, ord)
             LEFT JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
             ORDER BY k.ord) AS key_columns,
       x.indpred IS NOT NULL AS is_partial,
       x.indisunique AS is_unique
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
WHERE n.nspname = %(schema)s AND i.relname = %(index)s;
