-- Whether an index exists and is valid and ready (after CREATE INDEX CONCURRENTLY).
SELECT x.indisvalid AS is_valid, x.indisready AS is_ready
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = i.relnamespace
WHERE n.nspname = %(schema)s AND i.relname = %(index)s;
